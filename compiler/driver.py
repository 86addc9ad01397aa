# SPDX-License-Identifier: Apache-2.0
"""The compiler's entry point: ONNX model -> passes -> lowering -> :class:`Program`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import onnx

from compiler.frontend import to_graph
from compiler.ir import Op, node, topo_order
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
                 rounding: Rounding | str = Rounding.NEAREST_EVEN, seed: int = 0,
                 strict: bool = False) -> Compiled:
    """Like :func:`compile_model`, also returning the optimized graph."""
    opts = CompileOptions.make(device, numerics, rounding, seed, strict)
    source = to_graph(model)
    graph = run_passes(source, opts)
    program = lower(graph, opts, _model_name(model))
    program.metadata["placement"] = node_report(source, program.metadata["placement"])
    return Compiled(program, graph, opts)


def node_report(source: nx.DiGraph, values: list[dict]) -> list[dict]:
    """Where every ONNX node of the model ended up: one row per node, in model order.

    ``values`` is the lowering's per-value placement; a node that no value covers
    was removed (an Identity, an inference Dropout, or dead code).
    """
    by_node = {}
    for row in values:
        for i, name in enumerate(row["nodes"]):
            fused = f"fused into {row['nodes'][0]} ({row['op']}); " if i else ""
            by_node.setdefault(name, {**row, "why": fused + row["why"]})
    rows = []
    for v in topo_order(source):
        n = node(source, v)
        if n.op == Op.INPUT or (n.op == Op.CONST and not n.origin):
            continue
        label = n.origin[0] if n.origin else v
        op = n.attr("onnx_op") or n.op.value
        hit = by_node.get(label)
        if hit is None:
            rows.append({"node": label, "op": op, "where": "removed",
                         "why": "no effect at inference, or feeds nothing"})
        else:
            rows.append({"node": label, "op": op, "where": hit["where"], "why": hit["why"]})
    return rows


def compile_model(model: str | Path | onnx.ModelProto | bytes,
                  device: str | Path | DeviceConfig | None = None, numerics: str | None = None,
                  rounding: Rounding | str = Rounding.NEAREST_EVEN, seed: int = 0,
                  strict: bool = False) -> Program:
    """Compile an ONNX model (path, bytes or ``ModelProto``) for a device.

    ``device`` is a preset name, a config file or a :class:`DeviceConfig` (default
    ``brainwave-s10``); ``numerics`` overrides the device's number format. Ops the
    device cannot run are placed on the host, unless ``strict`` refuses them by name.

    Example:
        >>> from runtime.zoo import build_resnet50
        >>> prog = compile_model(build_resnet50(seed=0), numerics="msfp16")  # doctest: +SKIP
        >>> prog.save("resnet50.npub")                                        # doctest: +SKIP
    """
    return compile_full(model, device, numerics, rounding, seed, strict).program
