# SPDX-License-Identifier: Apache-2.0
"""The host side of a program: ops the device cannot run, executed by onnxruntime."""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort

from npusim.simulator.text import one_line

_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ")
_SOURCE = re.compile(r"/onnxruntime_src/\S+:\d+ (?:[^()]*\([^()]*\)(?: const)? )?")


class HostOpError(ValueError):
    """A host op that onnxruntime refuses to load or fails to run; names the op."""


def ort_reason(exc: BaseException | str, limit: int = 300) -> str:
    """onnxruntime's reason on one line, without its error-code prefix and C++ locations."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return one_line(_SOURCE.sub("", _PREFIX.sub("", text)), limit)


def quiet_run() -> ort.RunOptions:
    """Run options that leave failures to the exception (onnxruntime would also log them
    to stderr, breaking the CLI's one-line errors)."""
    opts = ort.RunOptions()
    opts.log_severity_level = 4
    return opts


def describe(model: bytes) -> str:
    """The ops of a host model as errors name them: ``Cos 'c'``, ``NonZero 'nz' + ...``."""
    try:
        proto = onnx.load_model_from_string(model)
    except Exception:  # not a model at all: the caller's reason says so
        return "(unreadable model)"
    ops = [f"{n.op_type} '{n.name}'" if n.name else n.op_type for n in proto.graph.node]
    text = " + ".join(ops[:3]) + (f" + {len(ops) - 3} more" if len(ops) > 3 else "")
    return ort_reason(text or "(no nodes)")


def _tensors(graph: onnx.GraphProto):
    """Every tensor a graph holds: initializers and tensor attributes, subgraphs too."""
    stack = [graph]
    while stack:
        g = stack.pop()
        yield from g.initializer
        yield from (s.values for s in g.sparse_initializer)
        for n in g.node:
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t
                yield from a.tensors
                if a.HasField("g"):
                    stack.append(a.g)
                stack.extend(a.graphs)


def external_data(model: bytes) -> str | None:
    """The name of a tensor of ``model`` whose data lives in an external file, if any."""
    try:
        proto = onnx.load_model_from_string(model)
    except Exception:  # not a model at all: onnxruntime's refusal says so
        return None
    graphs = [proto.graph]
    for f in proto.functions:
        for n in f.node:
            graphs.extend(a.g for a in n.attribute if a.HasField("g"))
    for g in graphs:
        for t in _tensors(g):
            if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
                return t.name or "(unnamed)"
    return None


class HostKernel:
    """One host op: a single-node ONNX model run by onnxruntime on the CPU."""

    def __init__(self, model: bytes) -> None:
        self.model = model
        outside = external_data(model)
        if outside:  # onnxruntime would read it from a file relative to the working dir
            raise HostOpError(f"host op {describe(model)} reads tensor '{outside[:80]}' from "
                              "an external file: a host model must hold all its data")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # host ops are small; no thread pool to wake
        opts.log_severity_level = 4  # a failure is in the exception; no log on stderr
        try:
            self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise HostOpError(f"onnxruntime cannot load host op {describe(model)}: "
                              f"{ort_reason(exc)}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, args: list[np.ndarray]) -> np.ndarray:
        return self.run(args)[0]

    def run(self, args: list[np.ndarray]) -> list:
        """Every output of the model, in its order (arrays; a sequence or map as is)."""
        if len(args) != len(self.inputs):
            raise HostOpError(f"host op {describe(self.model)} takes {len(self.inputs)} "
                              f"inputs, not {len(args)}")
        try:
            return self.session.run(None, dict(zip(self.inputs, args, strict=True)),
                                    quiet_run())
        except Exception as exc:  # onnxruntime raises its own exception types
            raise HostOpError(f"host op {describe(self.model)} failed: "
                              f"{ort_reason(exc)}") from None


_CACHE: dict[bytes, HostKernel] = {}


def host_kernel(model: bytes) -> HostKernel:
    """A kernel for ``model``, shared by every user of the same bytes in this process."""
    kernel = _CACHE.get(model)
    if kernel is None:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        kernel = _CACHE[model] = HostKernel(model)
    return kernel
