# SPDX-License-Identifier: Apache-2.0
"""An ONNX backend (``onnx.backend.base.Backend``) over the simulated npusim device.

``prepare`` compiles a model with :func:`npusim.compiler.compile_model` and runs it in a
:class:`npusim.runtime.Session`: the ops the datapath has kernels for run on the simulated
device, the others on the host through onnxruntime (see :mod:`npusim.compiler.placement`).
The device is "CPU" for the ONNX test runner, the only device this backend reports.

The compiler needs static shapes. A model whose inputs all have fixed sizes is
compiled once by ``prepare``; one with a dynamic or unknown input dimension is
compiled at ``run`` time, for the shapes of the given inputs, once per shape
signature.

Example:
    >>> import numpy as np
    >>> from onnx import helper
    >>> from npusim.runtime import backend
    >>> relu = helper.make_node("Relu", ["x"], ["y"])
    >>> (y,) = backend.run_node(relu, [np.array([-1.0, 2.0], np.float32)], opset_version=17)
    >>> y
    array([0., 2.], dtype=float32)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, shape_inference
from onnx.backend.base import Backend, BackendRep

from npusim.compiler import CompileError, compile_model
from npusim.compiler.frontend import load_onnx
from npusim.runtime.session import Session
from npusim.simulator.config import DeviceConfig
from npusim.simulator.device import InputError, RunStats
from npusim.simulator.program import Program

DEVICE = "CPU"
"""The one device name: the simulated npusim device, with host (onnxruntime) fallback."""
DEFAULT_NUMERICS = "fp32"
"""Conformance is checked in fp32; a narrow format (``numerics="msfp16"``) changes results."""
OPTIONS = ("numerics", "device_config")
"""Keyword options of :meth:`NpusimBackend.prepare`."""

Shapes = tuple[tuple[int, ...], ...]


def _is_static(vi: onnx.ValueInfoProto) -> bool:
    t = vi.type.tensor_type
    return vi.type.HasField("tensor_type") and t.HasField("shape") \
        and all(d.HasField("dim_value") for d in t.shape.dim)


def _check_tensors(values: Sequence[onnx.ValueInfoProto], what: str) -> None:
    for vi in values:
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type":
            kind = kind.removesuffix("_type").replace("_", " ") if kind else "untyped value"
            raise CompileError(f"model {what} '{vi.name}' has type {kind}, not tensor: npusim "
                               "compiles graphs of tensors only")


def _check_shape(vi: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    """Refuse a concrete shape that contradicts the declared one (rank or a fixed size)."""
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return
    declared = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    if len(declared) != len(shape) or any(d is not None and d != s
                                          for d, s in zip(declared, shape)):
        want = [d if d is not None else "?" for d in declared]
        raise InputError(f"input '{vi.name}' has shape {list(shape)}, expected {want}")


def _with_input_shapes(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]]
                       ) -> onnx.ModelProto:
    """A copy of ``model`` whose graph inputs have the given fixed shapes."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    for vi in fixed.graph.input:
        if vi.name not in shapes or not vi.type.HasField("tensor_type"):
            continue
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for size in shapes[vi.name]:
            shape.dim.add().dim_value = int(size)
    # value_info may carry the old symbolic sizes; shape inference recomputes it
    del fixed.graph.value_info[:]
    return fixed


class NpusimBackendRep(BackendRep):
    """A prepared model: its program(s) and the sessions that run them.

    ``run(inputs)`` takes a list in graph-input order (initializers left out) or a
    dict by name, and returns the outputs as a tuple in graph-output order.
    ``last_stats`` holds the cycle counts of the latest run.
    """

    def __init__(self, model: onnx.ModelProto, numerics: str | None = DEFAULT_NUMERICS,
                 device_config: str | Path | DeviceConfig | None = None) -> None:
        self.model = model
        self.numerics = numerics
        self.device_config = device_config
        inits = {t.name for t in model.graph.initializer}
        self.inputs = [vi for vi in model.graph.input if vi.name not in inits]
        self.input_names = [vi.name for vi in self.inputs]
        self.output_names = [vi.name for vi in model.graph.output]
        _check_tensors(self.inputs, "input")
        _check_tensors(model.graph.output, "output")
        self.static = all(_is_static(vi) for vi in self.inputs)
        self.last_stats: RunStats | None = None
        self._sessions: dict[Shapes, Session] = {}
        if self.static:
            self._sessions[self._declared_shapes()] = self._compile(model)

    @property
    def programs(self) -> tuple[Program, ...]:
        """The programs compiled so far: one, or one per input shape seen (dynamic model)."""
        return tuple(s.program for s in self._sessions.values())

    def _declared_shapes(self) -> Shapes:
        return tuple(tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
                     for vi in self.inputs)

    def _compile(self, model: onnx.ModelProto) -> Session:
        return Session(compile_model(model, device=self.device_config, numerics=self.numerics))

    def session_for(self, shapes: Shapes) -> Session:
        """The session for inputs of ``shapes``; compiles it first for a dynamic model."""
        if self.static:
            return next(iter(self._sessions.values()))  # the device checks the shapes
        session = self._sessions.get(shapes)
        if session is None:
            for vi, shape in zip(self.inputs, shapes):
                _check_shape(vi, shape)
            fixed = _with_input_shapes(self.model, dict(zip(self.input_names, shapes)))
            session = self._sessions[shapes] = self._compile(fixed)
        return session

    def _feeds(self, inputs: Any) -> dict[str, np.ndarray]:
        if isinstance(inputs, Mapping):
            feeds = dict(inputs)
            unknown = sorted(set(feeds) - set(self.input_names))
            if unknown:
                raise InputError(f"unknown input '{unknown[0]}'; the model takes "
                                 f"{', '.join(self.input_names) or 'no inputs'}")
            missing = [n for n in self.input_names if n not in feeds]
            if missing:
                raise InputError(f"missing input '{missing[0]}'")
        else:
            values = [inputs] if isinstance(inputs, np.ndarray) else list(inputs or [])
            if len(values) != len(self.input_names):
                raise InputError(f"the model takes {len(self.input_names)} input(s) "
                                 f"({', '.join(self.input_names)}), got {len(values)}")
            feeds = dict(zip(self.input_names, values))
        for name, value in feeds.items():
            if not isinstance(value, np.ndarray):
                if isinstance(value, (list, tuple, dict)) or value is None:
                    raise InputError(f"input '{name}' is a {type(value).__name__}; the "
                                     "npusim backend takes tensors (numpy arrays) only")
                feeds[name] = np.asarray(value)
        return feeds

    def run(self, inputs: Any, **kwargs: Any) -> tuple[np.ndarray, ...]:
        feeds = self._feeds(inputs)
        session = self.session_for(tuple(tuple(feeds[n].shape) for n in self.input_names))
        outputs = session.run(self.output_names, feeds)
        self.last_stats = session.last_stats
        return tuple(outputs)


class NpusimBackend(Backend):
    """ONNX backend API over npusim: ``prepare`` compiles, ``BackendRep.run`` simulates.

    Options (keyword arguments of ``prepare``, ``run_model`` and ``run_node``):
    ``numerics`` (default ``"fp32"``) and ``device_config`` (a preset name, a
    device file or a :class:`DeviceConfig`; default the default preset).
    ``run_node`` also takes ``opset_version`` (default: onnx's current opset).
    """

    @classmethod
    def _options(cls, device: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        if not cls.supports_device(device):
            raise ValueError(f"npusim backend: unsupported device {device!r}; the only device "
                             f"is {DEVICE!r} (the simulated npusim device with host fallback)")
        unknown = sorted(set(kwargs) - set(OPTIONS))
        if unknown:
            raise TypeError(f"npusim backend: unknown option(s) {', '.join(unknown)}; "
                            f"options: {', '.join(OPTIONS)}")
        return {"numerics": kwargs.get("numerics", DEFAULT_NUMERICS),
                "device_config": kwargs.get("device_config")}

    @classmethod
    def prepare(cls, model: onnx.ModelProto | str | Path | bytes, device: str = DEVICE,
                **kwargs: Any) -> NpusimBackendRep:
        """Check and compile ``model`` (at ``run`` time if an input shape is dynamic)."""
        options = cls._options(device, kwargs)
        return NpusimBackendRep(load_onnx(model), **options)

    @classmethod
    def run_model(cls, model: onnx.ModelProto | str | Path | bytes, inputs: Any,
                  device: str = DEVICE, **kwargs: Any) -> tuple[np.ndarray, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = DEVICE,
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[np.ndarray, ...]:
        """Run one node on ``inputs`` (a list in the node's input order, or a dict).

        The model is built from the arrays' dtypes and shapes; the outputs' types
        come from ``outputs_info`` or from ONNX shape inference.
        """
        opset = int(kwargs.pop("opset_version", onnx.defs.onnx_opset_version()))
        options = cls._options(device, kwargs)
        model = node_model(node, inputs, opset, outputs_info)
        feeds = {vi.name: _array(inputs, i, vi.name, node)
                 for i, vi in enumerate(model.graph.input)}
        return NpusimBackendRep(load_onnx(model), **options).run(feeds)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return str(device).upper() == DEVICE


def _array(inputs: Any, position: int, name: str, node: onnx.NodeProto) -> np.ndarray:
    if isinstance(inputs, Mapping):
        if name not in inputs:
            raise InputError(f"missing input '{name}' of {node.op_type}")
        return np.asarray(inputs[name])
    slots = [i for i in node.input if i]
    return np.asarray(list(inputs)[slots.index(name)])


def node_model(node: onnx.NodeProto, inputs: Any, opset: int,
               outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None
               ) -> onnx.ModelProto:
    """A one-node model whose graph inputs have the dtypes and shapes of ``inputs``."""
    slots = [i for i in node.input if i]
    if isinstance(inputs, Mapping):
        arrays = [inputs[n] if n in inputs else None for n in slots]
    else:
        arrays = list(inputs)
        if len(arrays) != len(slots):
            raise InputError(f"{node.op_type} takes {len(slots)} input(s) "
                             f"({', '.join(slots)}), got {len(arrays)}")
    graph_inputs, seen = [], set()
    for name, value in zip(slots, arrays):
        if value is None:
            raise InputError(f"missing input '{name}' of {node.op_type}")
        if name in seen:
            continue
        seen.add(name)
        a = np.asarray(value)
        graph_inputs.append(helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape)))
    opsets = [helper.make_opsetid("", opset)]
    if node.domain not in ("", "ai.onnx"):
        opsets.append(helper.make_opsetid(node.domain, 1))
    outs = [o for o in node.output if o]
    if outputs_info is not None:
        graph_outputs = [helper.make_tensor_value_info(
            o, helper.np_dtype_to_tensor_dtype(np.dtype(dt)), list(shape))
            for o, (dt, shape) in zip(outs, outputs_info, strict=True)]
    else:
        probe = helper.make_model(helper.make_graph([node], "probe", graph_inputs, []),
                                  opset_imports=opsets)
        try:
            inferred = shape_inference.infer_shapes(probe, strict_mode=True)
        except Exception as exc:  # onnx raises several types for a bad node
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            raise CompileError(f"shape inference failed for {node.op_type}: {first}") from None
        infos = {vi.name: vi for vi in inferred.graph.value_info}
        missing = [o for o in outs if o not in infos]
        if missing:
            raise CompileError(f"shape inference left output '{missing[0]}' of "
                               f"{node.op_type} unknown; pass outputs_info")
        graph_outputs = [infos[o] for o in outs]
    graph = helper.make_graph([node], node.name or node.op_type, graph_inputs, graph_outputs)
    return helper.make_model(graph, opset_imports=opsets, producer_name="npusim-backend")


prepare = NpusimBackend.prepare
run_model = NpusimBackend.run_model
run_node = NpusimBackend.run_node
supports_device = NpusimBackend.supports_device
