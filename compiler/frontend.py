# SPDX-License-Identifier: Apache-2.0
"""ONNX model -> IR graph, with every static shape known (:mod:`npusim.compiler.shapes`)."""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from npusim.compiler import recurrent
from npusim.compiler.errors import CompileError, UnsupportedOpError, one_line
from npusim.compiler.ir import NON_TENSOR, ONNX_OPS, Node, Op, add_node, make_attrs, verify
from npusim.compiler.model_check import (
    MAX_ELEMENTS,
    attr_value,
    check_model,
    np_dtype,
    parse,
    with_unknown_dims,
)
from npusim.compiler.node_checks import check_node
from npusim.compiler.shapes import data_dependent, resolve_shapes
from npusim.simulator.program_schema import MAX_RANK


def load_onnx(model: str | Path | onnx.ModelProto | bytes) -> onnx.ModelProto:
    """Load and check a model; one that is not valid ONNX raises :class:`CompileError`."""
    proto = parse(model)
    if proto.HasField("graph"):
        proto = with_unknown_dims(proto)
    check_model(proto)
    return proto


def _constant_value(attrs: dict) -> np.ndarray | None:
    """The tensor of a Constant node, whichever ``value*`` attribute holds it."""
    for key, dtype in (("value", None), ("value_float", np.float32),
                       ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    return None


SLOTTED = (Op.RESIZE, Op.CLIP)
"""Ops whose optional inputs may be left out in the middle: their ``slots`` attribute
says which ONNX input each IR input is."""


def _value_type(tp: onnx.TypeProto | None) -> tuple[tuple[int, ...], str]:
    """``(shape, dtype)`` of a value; unknown dimensions are ``-1``, a value that is not a
    tensor (a sequence or map) has dtype ``object``."""
    if tp is None or tp.WhichOneof("value") != "tensor_type":
        return (-1,), NON_TENSOR
    t = tp.tensor_type
    dtype = np_dtype(t.elem_type).name if t.elem_type else NON_TENSOR
    if not t.HasField("shape"):
        return (-1,), dtype
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else -1
                 for d in t.shape.dim), dtype


def _split(g: nx.MultiDiGraph, n: onnx.NodeProto, label: str, attrs: dict,
           shape: tuple[int, ...], opset: int) -> bool:
    """A Split with static sizes becomes one Slice per used output (data movement the
    device can do); returns False if the sizes are not constants."""
    axis = attrs.get("axis", 0)
    axis = axis + len(shape) if axis < 0 else axis
    if not 0 <= axis < len(shape):
        raise CompileError(f"Split node '{label}': attribute axis is {attrs.get('axis', 0)}, "
                           f"out of range for rank {len(shape)}")
    if shape[axis] < 0:
        return False
    outs = list(n.output)
    if len(n.input) > 1 and n.input[1]:
        src = g.nodes.get(n.input[1])
        if src is None or src["node"].op != Op.CONST:
            return False
        sizes = [int(v) for v in np.asarray(src["node"].value).reshape(-1)]
    elif "split" in attrs:
        sizes = [int(v) for v in attrs["split"]]
    else:
        parts = attrs.get("num_outputs", len(outs))
        if parts < 1:
            raise CompileError(f"Split node '{label}': it splits into {parts} outputs")
        step = -(-shape[axis] // parts)
        sizes = [min(step, shape[axis] - k * step) for k in range(parts)]
    if len(sizes) != len(outs) or sum(sizes) != shape[axis] or min(sizes) < 0:
        raise CompileError(f"Split node '{label}' has sizes {sizes} for a dimension of "
                           f"{shape[axis]} and {len(outs)} outputs")
    start = 0
    for k, (out, size) in enumerate(zip(outs, sizes, strict=True)):
        if out:
            args = []
            for what, v in (("starts", start), ("ends", start + size), ("axes", axis)):
                cname = f"{out}.{what}"
                add_node(g, cname, Node(Op.CONST, (1,), "int64",
                                        value=np.array([v], np.int64)))
                args.append(cname)
            out_shape = tuple(size if i == axis else d for i, d in enumerate(shape))
            proto = onnx.helper.make_node("Slice", ["x", "s", "e", "a"], [out],
                                          name=f"{label}:{k}")
            add_node(g, out, Node(Op.SLICE, out_shape, g.nodes[n.input[0]]["node"].dtype,
                                  origin=(label,), proto=proto.SerializeToString()),
                     [n.input[0]] + args)
        start += size
    return True


def _outer_refs(graph: onnx.GraphProto) -> list[str]:
    """Values a subgraph (an If branch, a Loop body) reads from the scopes around it."""
    inner = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    refs: list[str] = []
    for n in graph.node:
        reads = list(n.input)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                reads += _outer_refs(sub)
        refs += [r for r in reads if r and r not in inner and r not in refs]
        inner.update(n.output)
    return refs


def to_graph(model: str | Path | onnx.ModelProto | bytes,
             input_shapes: dict[str, tuple[int, ...]] | None = None,
             per_step: bool = False) -> nx.DiGraph:
    """Build the IR of an ONNX model: one :class:`Node` per value, every static shape known.

    ``input_shapes`` fixes symbolic input dimensions (``{"images": (1, 3, 224, 224)}``).
    Shape arithmetic is folded first (:mod:`npusim.compiler.shapes`); values whose shape depends
    on data keep ``-1`` dimensions and run on the host. Ops the compiler has no kind for
    become ``Op.ONNX`` nodes, which run on the host. ``per_step``: recurrent layers take
    their input products step by step (:func:`npusim.compiler.recurrent.expand`).
    """
    proto, types, folded = resolve_shapes(load_onnx(model), input_shapes)
    unrolled = recurrent.expand(proto, types, per_step)
    if unrolled is not None:  # the unrolled steps' own shapes, and constants folded
        proto, types, more = resolve_shapes(unrolled[0], input_shapes)
        folded += more
    dynamic = data_dependent(proto, types)
    gp = proto.graph
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    g = nx.MultiDiGraph(name=gp.name or "model", inputs=[], outputs=[o.name for o in gp.output],
                        opsets=[(o.domain, o.version) for o in proto.opset_import],
                        folded=folded, unrolled=unrolled[1] if unrolled else {})
    inits = {t.name: t for t in gp.initializer}
    for name, t in inits.items():
        try:
            arr = numpy_helper.to_array(t)
        except Exception as exc:  # raw data of the wrong size, unknown data type, ...
            raise CompileError(f"bad initializer '{name}': {one_line(exc)}") from None
        add_node(g, name, Node(Op.CONST, tuple(arr.shape), str(arr.dtype), value=arr))
    for vi in gp.input:
        if vi.name in inits:
            continue
        if vi.type.WhichOneof("value") != "tensor_type":
            raise CompileError(f"model input '{vi.name}' has type "
                               f"{vi.type.WhichOneof('value') or 'unknown'}, not tensor: npusim "
                               "compiles graphs of tensors only")
        shape, dtype = _value_type(types.get(vi.name, vi.type))
        add_node(g, vi.name, Node(Op.INPUT, shape, dtype))
        g.graph["inputs"].append(vi.name)
    wanted = {i for n in gp.node for i in n.input} | set(g.graph["outputs"])
    for n in gp.node:
        label = n.name or n.output[0]
        attrs = {a.name: attr_value(a, label) for a in n.attribute}
        if n.op_type == "Softmax":  # its meaning changed in opset 13
            attrs.setdefault("axis", 1 if opset < 13 else -1)
            attrs["opset"] = opset
        kind = ONNX_OPS.get(n.op_type, Op.ONNX) if n.domain in ("", "ai.onnx") else Op.ONNX
        if n.op_type == "Constant":
            arr = _constant_value(attrs)
            if arr is None:
                raise UnsupportedOpError(f"unsupported Constant form (node '{label}')")
            add_node(g, n.output[0], Node(Op.CONST, arr.shape, str(arr.dtype), value=arr,
                                          origin=(label,)))
            continue
        inputs = [i for i in n.input]
        while inputs and inputs[-1] == "":
            inputs.pop()
        subgraphs = [a.g for a in n.attribute if a.type == onnx.AttributeProto.GRAPH] + [
            sub for a in n.attribute for sub in a.graphs]
        if subgraphs:  # the host needs the values the branches read, so they are inputs too
            implicit = [r for sub in subgraphs for r in _outer_refs(sub)
                        if r in g and r not in inputs]
            implicit = list(dict.fromkeys(implicit))
            if implicit:
                attrs["implicit"] = len(implicit)
                inputs = [i for i in inputs if i] + implicit
                kind = Op.ONNX
        missing = [i for i in inputs if i and i not in g]
        if missing:
            raise CompileError(f"node '{label}' reads '{missing[0]}', which nothing produces")
        if n.domain in ("", "ai.onnx"):
            check_node(n.op_type, label, attrs,
                       [g.nodes[i]["node"] if i in g else None for i in n.input], opset)
        used = [k for k, o in enumerate(n.output) if o and o in wanted]
        out = n.output[0] or f"{label}:0"
        shape, dtype = _value_type(types.get(out))
        if n.op_type == "Split" and not dynamic.get(n.output[0]) \
                and -1 not in g.nodes[n.input[0]]["node"].shape \
                and _split(g, n, label, attrs, g.nodes[n.input[0]]["node"].shape, opset):
            continue
        if "" in inputs:  # an optional input left out in the middle
            if kind in SLOTTED:
                attrs["slots"] = tuple(k for k, i in enumerate(inputs) if i)
            else:  # only the host keeps slots
                kind = Op.ONNX
            inputs = [i for i in inputs if i]
        if kind == Op.ONNX or any(k > 0 for k in used):
            attrs["onnx_op"] = n.op_type if n.domain in ("", "ai.onnx") \
                else f"{n.domain}.{n.op_type}"
        if any(k > 0 for k in used):  # a multi-output op: the host runs it whole
            kind = Op.ONNX
            attrs["outputs"] = tuple(o if o in wanted else "" for o in n.output)
        if out in dynamic:
            attrs["data_dependent"] = dynamic[out]
        node = Node(kind, shape, dtype, make_attrs(**attrs), origin=(label,),
                    proto=n.SerializeToString())
        add_node(g, out, node, inputs)
        for k in used:
            if k == 0:
                continue
            o = n.output[k]
            oshape, odtype = _value_type(types.get(o))
            extra = {"index": k}
            if o in dynamic:
                extra["data_dependent"] = dynamic[o]
            add_node(g, o, Node(Op.OUTPUT, oshape, odtype, make_attrs(**extra), origin=(label,)),
                     [out])
    for v, data in g.nodes(data=True):
        n = data["node"]
        where = f" (node '{n.origin[0]}')" if n.origin else ""
        if min(n.shape, default=0) >= 0 and math.prod(n.shape) > MAX_ELEMENTS:
            raise CompileError(f"value '{v}'{where} has shape {list(n.shape)}: more than the "
                               f"{MAX_ELEMENTS} elements npusim takes")
        if len(n.shape) > MAX_RANK:
            raise CompileError(f"value '{v}'{where} has rank {len(n.shape)}; a program takes "
                               f"tensors of rank at most {MAX_RANK}")
    verify(g)
    return g
