# SPDX-License-Identifier: Apache-2.0
"""The compiler's entry point: ONNX model -> passes -> lowering -> :class:`Program`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import onnx

from compiler.frontend import to_graph
from compiler.lower import lower
from compiler.options import CompileOptions
from compiler.pipeline import run_passes
from simulator.config import DeviceConfig
from simulator.numerics import Rounding
from simulator.program import Program


@dataclass(frozen=True, eq=False)
class Compiled:
    """A program with the optimized graph it was lowered from (for golden evaluation)."""

    program: Program
    graph: nx.DiGraph
    options: CompileOptions


def _model_name(model) -> str:
    if isinstance(model, (str, Path)):
        return Path(model).stem
    if isinstance(model, onnx.ModelProto):
        return model.graph.name or "model"
    return "model"


def compile_full(model: str | Path | onnx.ModelProto | bytes,
                 device: str | Path | DeviceConfig | None = None, numerics: str | None = None,
                 rounding: Rounding | str = Rounding.NEAREST_EVEN, seed: int = 0) -> Compiled:
    """Like :func:`compile_model`, also returning the optimized graph."""
    opts = CompileOptions.make(device, numerics, rounding, seed)
    graph = run_passes(to_graph(model), opts)
    return Compiled(lower(graph, opts, _model_name(model)), graph, opts)


def compile_model(model: str | Path | onnx.ModelProto | bytes,
                  device: str | Path | DeviceConfig | None = None, numerics: str | None = None,
                  rounding: Rounding | str = Rounding.NEAREST_EVEN, seed: int = 0) -> Program:
    """Compile an ONNX model (path, bytes or ``ModelProto``) for a device.

    ``device`` is a preset name, a config file or a :class:`DeviceConfig` (default
    ``brainwave-s10``); ``numerics`` overrides the device's number format.

    Example:
        >>> from runtime.zoo import build_resnet50
        >>> prog = compile_model(build_resnet50(seed=0), numerics="msfp16")  # doctest: +SKIP
        >>> prog.save("resnet50.npub")                                        # doctest: +SKIP
    """
    return compile_full(model, device, numerics, rounding, seed).program
