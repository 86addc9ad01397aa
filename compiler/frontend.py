# SPDX-License-Identifier: Apache-2.0
"""ONNX model -> IR graph, with every shape known (ONNX shape inference)."""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper, shape_inference

from compiler.errors import CompileError, UnsupportedOpError
from compiler.ir import ONNX_OPS, Node, Op, add_node, make_attrs, verify


def load_onnx(model: str | Path | onnx.ModelProto | bytes) -> onnx.ModelProto:
    """Load and check a model; a file that is not valid ONNX raises :class:`CompileError`."""
    if isinstance(model, onnx.ModelProto):
        proto = model
    else:
        try:
            proto = onnx.load_model_from_string(model) if isinstance(model, bytes) \
                else onnx.load(str(model))
        except FileNotFoundError:
            raise CompileError(f"model file not found: {model}") from None
        except Exception as exc:  # protobuf raises several unrelated types
            raise CompileError(f"malformed ONNX file {model}: {_first_line(exc)}") from None
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise CompileError(f"invalid ONNX model: {_first_line(exc)}") from None
    if not proto.graph.node:
        raise CompileError("invalid ONNX model: the graph has no nodes")
    return proto


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


def _attr_value(attr: onnx.AttributeProto):
    value = onnx.helper.get_attribute_value(attr)
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, list):
        return tuple(v.decode() if isinstance(v, bytes) else v for v in value)
    return value


def _constant_value(attrs: dict) -> np.ndarray | None:
    """The tensor of a Constant node, whichever ``value*`` attribute holds it."""
    for key, dtype in (("value", None), ("value_float", np.float32),
                       ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None


def _static_shape(vi: onnx.ValueInfoProto, what: str) -> tuple[int, ...]:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        raise CompileError(f"{what} '{vi.name}' has no known shape")
    dims = []
    for d in t.shape.dim:
        if not d.HasField("dim_value"):
            raise CompileError(f"{what} '{vi.name}' has a dynamic dimension "
                               f"'{d.dim_param or '?'}'; give it a fixed size")
        dims.append(d.dim_value)
    return tuple(dims)


def to_graph(model: str | Path | onnx.ModelProto | bytes) -> nx.DiGraph:
    """Build the IR of an ONNX model: one :class:`Node` per value, shapes inferred.

    Ops the compiler has no kind for become ``Op.ONNX`` nodes, which run on the host.
    """
    proto = load_onnx(model)
    try:
        proto = shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise CompileError(f"shape inference failed: {_first_line(exc)}") from None
    gp = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    g = nx.MultiDiGraph(name=gp.name or "model", inputs=[], outputs=[o.name for o in gp.output],
                        opsets=[(o.domain, o.version) for o in proto.opset_import])
    inits = {t.name: t for t in gp.initializer}
    for name, t in inits.items():
        arr = numpy_helper.to_array(t)
        add_node(g, name, Node(Op.CONST, tuple(arr.shape), str(arr.dtype), value=arr))
    for vi in gp.input:
        if vi.name in inits:
            continue
        if vi.type.WhichOneof("value") != "tensor_type":
            raise CompileError(f"model input '{vi.name}' has type "
                               f"{vi.type.WhichOneof('value') or 'unknown'}, not tensor: npusim "
                               "compiles graphs of tensors only")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
        add_node(g, vi.name, Node(Op.INPUT, _static_shape(vi, "model input"), dtype))
        g.graph["inputs"].append(vi.name)
    infos = {vi.name: vi for vi in list(gp.value_info) + list(gp.output)}
    wanted = {i for n in gp.node for i in n.input} | set(g.graph["outputs"])
    for n in gp.node:
        label = n.name or n.output[0]
        for extra in n.output[1:]:
            if extra and extra in wanted:
                raise UnsupportedOpError(f"unsupported use of output '{extra}' of {n.op_type} "
                                         f"(node '{label}')")
        attrs = {a.name: _attr_value(a) for a in n.attribute}
        if n.op_type == "Softmax":  # its meaning changed in opset 13
            attrs.setdefault("axis", 1 if opset < 13 else -1)
            attrs["opset"] = opset
        out = n.output[0]
        kind = ONNX_OPS.get(n.op_type, Op.ONNX) if n.domain in ("", "ai.onnx") else Op.ONNX
        if n.op_type == "Constant":
            arr = _constant_value(attrs)
            if arr is None:
                raise UnsupportedOpError(f"unsupported Constant form (node '{label}')")
            add_node(g, out, Node(Op.CONST, arr.shape, str(arr.dtype), value=arr, origin=(label,)))
            continue
        if out not in infos:
            raise CompileError(f"shape inference left the output of node '{label}' unknown")
        inputs = [i for i in n.input]
        while inputs and inputs[-1] == "":
            inputs.pop()
        if "" in inputs:  # an optional input left out in the middle: only the host keeps slots
            kind = Op.ONNX
            inputs = [i for i in inputs if i]
        missing = [i for i in inputs if i not in g]
        if missing:
            raise CompileError(f"node '{label}' reads '{missing[0]}', which nothing produces")
        elem = infos[out].type.tensor_type.elem_type
        dtype = onnx.helper.tensor_dtype_to_np_dtype(elem).name
        if kind == Op.ONNX:
            attrs["onnx_op"] = n.op_type if n.domain in ("", "ai.onnx") \
                else f"{n.domain}.{n.op_type}"
        node = Node(kind, _static_shape(infos[out], "value"), dtype, make_attrs(**attrs),
                    origin=(label,), proto=n.SerializeToString())
        add_node(g, out, node, inputs)
    verify(g)
    return g
