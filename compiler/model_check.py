# SPDX-License-Identifier: Apache-2.0
"""The model file as data: parse it and refuse, on one line naming the culprit, anything
malformed before the compiler reads a value from it.

A model is untrusted input. It must not make the compiler read other files (external
data is refused), allocate more than its own payload (every tensor's dims are checked
against the bytes it holds before it is decoded), or carry text that is not UTF-8 (it
would reach the program's JSON metadata). :func:`onnx.checker.check_model` covers the
rest of the structure (SSA form, topological order, op schemas, attribute types); its
messages are mapped to one line naming the node.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from google.protobuf.descriptor import FieldDescriptor
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler.errors import CompileError, one_line, shorten
from npusim.simulator.program_schema import MAX_NAME

MAX_ELEMENTS = 1 << 30
"""Largest tensor the compiler takes (elements): 4 GiB of float32, half the largest
preset's DRAM. A model must not make the compiler allocate what it merely declares."""
NUMPY_TYPES = frozenset({
    TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT8, TensorProto.UINT16,
    TensorProto.INT16, TensorProto.INT32, TensorProto.INT64, TensorProto.STRING,
    TensorProto.BOOL, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.UINT32,
    TensorProto.UINT64, TensorProto.COMPLEX64, TensorProto.COMPLEX128})
"""The ONNX element types numpy has natively (bfloat16, float8, int4, ... it has not)."""
DEFAULT_DOMAINS = ("", "ai.onnx")
MAX_IO = 256
"""Model inputs or outputs a program can have: ``V_RD`` / ``V_WR`` name a slot in 8 bits."""
NAME_FIELDS = frozenset({"name", "input", "output"})
"""Text fields that become tensor, layer or op names in a program (at most ``MAX_NAME``)."""


def type_name(elem: int) -> str:
    return TensorProto.DataType.Name(elem) if elem in TensorProto.DataType.values() \
        else str(elem)


def np_dtype(elem: int) -> np.dtype:
    """The numpy dtype of an ONNX element type; :class:`CompileError` if numpy has none."""
    if elem not in NUMPY_TYPES:
        raise CompileError(f"unsupported data type {type_name(elem)}: npusim handles the "
                           "types numpy has")
    return helper.tensor_dtype_to_np_dtype(elem)


def parse(model: str | Path | onnx.ModelProto | bytes) -> onnx.ModelProto:
    """The model as a proto; a file that is not one raises :class:`CompileError`.

    External data is never loaded (see :func:`check_tensor`).
    """
    if isinstance(model, onnx.ModelProto):
        return model
    what = f"{len(model)} bytes" if isinstance(model, (bytes, bytearray)) else str(model)
    try:
        if isinstance(model, (bytes, bytearray)):
            return onnx.load_model_from_string(bytes(model))
        return onnx.load(str(model), load_external_data=False)
    except FileNotFoundError:
        raise CompileError(f"model file not found: {model}") from None
    except Exception as exc:  # protobuf raises several unrelated types
        raise CompileError(f"malformed ONNX file ({what}): {one_line(exc)}") from None


def attr_value(attr: onnx.AttributeProto, label: str) -> Any:
    """An attribute as Python: ints, floats, str, tuples of them, or an ndarray."""
    try:
        value = helper.get_attribute_value(attr)
        if isinstance(value, TensorProto):
            return numpy_helper.to_array(value)
        if isinstance(value, bytes):
            return value.decode()
        if isinstance(value, list):
            return tuple(v.decode() if isinstance(v, bytes) else v for v in value)
    except Exception as exc:  # text that is not UTF-8, a tensor numpy cannot hold, ...
        raise CompileError(f"node '{label}': attribute {attr.name} cannot be read: "
                           f"{one_line(exc)}") from None
    return value


def check_tensor(t: TensorProto, where: str) -> None:
    """Refuse a tensor whose payload does not hold what its dims and type say, before
    anything decodes it (so a tensor declaring terabytes allocates nothing)."""
    if t.data_location == TensorProto.EXTERNAL or len(t.external_data):
        raise CompileError(f"{where} keeps its data in an external file: npusim reads "
                           "only the model file (save it with the weights inside)")
    if t.HasField("segment"):
        raise CompileError(f"{where} is a segment of a tensor: npusim takes whole tensors")
    dtype = np_dtype(t.data_type) if t.data_type else None
    if dtype is None:
        raise CompileError(f"{where} has no data type")
    if any(d < 0 for d in t.dims):
        raise CompileError(f"{where} has a negative dimension: {list(t.dims)}")
    count = math.prod(t.dims)
    if count > MAX_ELEMENTS:
        raise CompileError(f"{where} has dims {list(t.dims)}: {count} elements, more than "
                           f"npusim takes ({MAX_ELEMENTS})")
    if t.HasField("raw_data"):
        if t.data_type == TensorProto.STRING:
            raise CompileError(f"{where} is a string tensor with raw data")
        have, want = len(t.raw_data), count * dtype.itemsize
        unit = "bytes"
    else:
        field = helper.tensor_dtype_to_field(t.data_type)
        have = len(getattr(t, field))
        want = count * (2 if dtype.kind == "c" else 1)
        unit = f"values in {field}"
    if have != want:
        raise CompileError(f"{where} holds {have} {unit}; its dims {list(t.dims)} of "
                           f"{type_name(t.data_type)} need {want}")
    for k, text in enumerate(t.string_data):  # numpy_helper decodes them as UTF-8
        try:
            text.decode()
        except UnicodeDecodeError:
            raise CompileError(f"{where}: string {k} is not valid UTF-8 ({text[:40]!r})") \
                from None


def _label(item, field: str, k: int, parent: str) -> str:
    """How a message is named in errors: ``node 'conv' (Conv)``, ``initializer 'w'``..."""
    name = getattr(item, "name", "")
    named = f"'{shorten(name)}'" if isinstance(name, str) and name else f"{k}"
    if isinstance(item, onnx.NodeProto):
        op = item.op_type if isinstance(item.op_type, str) else "?"
        label = f"node {named} ({op})"
    elif isinstance(item, onnx.GraphProto):
        label = "graph" if parent == "model" else f"graph {named}"
    elif isinstance(item, TensorProto):
        label = {"initializer": "initializer", "t": "tensor attribute"}.get(field, "tensor")
        label = f"{label} {named}"
    elif isinstance(item, onnx.AttributeProto):
        label = f"attribute {named}"
    elif isinstance(item, onnx.ValueInfoProto):
        label = {"input": "graph input", "output": "graph output"}.get(field, "value")
        label = f"{label} {named}"
    else:  # a type, a shape, a dimension...: errors name what holds it
        return parent
    return label if parent in ("model", "graph") else f"{label} of {parent}"


def _walk(msg, where: str) -> None:
    """Every text field valid UTF-8, every tensor's payload sound, recursively."""
    for field, value in msg.ListFields():
        items = value if field.label == FieldDescriptor.LABEL_REPEATED else [value]
        if field.type == FieldDescriptor.TYPE_STRING:
            for v in items:
                if not isinstance(v, str):  # upb hands invalid UTF-8 over as bytes
                    raise CompileError(f"invalid ONNX model: {where}: its {field.name} is "
                                       f"not valid UTF-8 text ({bytes(v)[:40]!r})")
                if field.name in NAME_FIELDS and len(v) > MAX_NAME:
                    raise CompileError(f"{where}: its {field.name} is {len(v)} characters "
                                       f"long; a program takes names of at most {MAX_NAME}")
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            for k, item in enumerate(items):
                if isinstance(item, onnx.SparseTensorProto):
                    raise CompileError(f"{where} has a sparse tensor: npusim takes dense "
                                       "tensors only")
                _walk(item, _label(item, field.name, k, where))
    if isinstance(msg, onnx.NodeProto):
        _check_int_attributes(msg, where)
    if isinstance(msg, TensorProto):
        check_tensor(msg, where)
    if isinstance(msg, onnx.TensorShapeProto.Dimension) and msg.dim_value < 0:
        raise CompileError(f"invalid ONNX model: {where} has a negative size {msg.dim_value}")


MAX_ATTRIBUTE = 1 << 31
"""Integer attributes of standard ops stay below this in magnitude. onnxruntime's kernels do
size arithmetic on them unchecked: a stride near 2**62 kills the process with SIGFPE."""
HUGE_ATTRIBUTES = {"Slice": {"starts", "ends"}, "Shape": {"start", "end"}}
"""Attributes that legitimately hold INT64_MAX ("to the end")."""


def _check_int_attributes(n: onnx.NodeProto, where: str) -> None:
    if n.domain not in DEFAULT_DOMAINS:
        return  # ai.onnx.ml label encoders map arbitrary int64 keys
    exempt = HUGE_ATTRIBUTES.get(n.op_type, set())
    for a in n.attribute:
        if a.name in exempt:
            continue
        values = [a.i] if a.type == onnx.AttributeProto.INT else list(a.ints)
        if any(abs(v) >= MAX_ATTRIBUTE for v in values):
            raise CompileError(f"{where}: attribute {a.name} holds "
                               f"{max(values, key=abs)}, outside the 32-bit range")


_CONTEXT = re.compile(r"==> Context: Bad node spec for node\. Name: (.*?) OpType: (\S+)")
_ORDER = re.compile(r"input '(.*)' of node: name: (.*?) OpType: (\S+) is not output of any "
                    r"previous nodes")


def checker_message(exc: BaseException) -> str:
    """``onnx.checker``'s message on one line, naming the node first when it names one (the
    node holding the subgraph first, for a node inside one)."""
    text = one_line(exc, 2000)
    ctx = _CONTEXT.search(text)
    body = one_line(text[:ctx.start()] if ctx else text)
    order = _ORDER.search(body)
    if order:
        value, name, op = order.groups()
        body = (f"node '{name}' ({op}) reads '{value}', which no earlier node produces (a "
                "missing value, a cycle or nodes out of order)")
    return f"node '{ctx.group(1)}' ({ctx.group(2)}): {body}" if ctx else body


def _check_opsets(proto: onnx.ModelProto) -> None:
    seen: dict[str, int] = {}
    for o in proto.opset_import:
        domain = "" if o.domain == "ai.onnx" else o.domain
        if seen.get(domain, o.version) != o.version:  # the same twice is harmless (skl2onnx)
            raise CompileError(f"invalid ONNX model: it imports domain '{o.domain}' twice, "
                               f"as opsets {seen[domain]} and {o.version}")
        seen[domain] = o.version
        newest = {"": onnx.defs.onnx_opset_version(),
                  "ai.onnx.ml": onnx.defs.onnx_ml_opset_version()}.get(domain)
        if o.version < 1 or (newest is not None and o.version > newest):
            raise CompileError(f"invalid ONNX model: opset {o.version} of domain "
                               f"'{o.domain or 'ai.onnx'}' does not exist (this onnx knows "
                               f"1 to {newest})" if newest else
                               f"invalid ONNX model: opset {o.version} of domain "
                               f"'{o.domain}' must be at least 1")


def _check_boundary(graph: onnx.GraphProto) -> None:
    """The graph's inputs and outputs: some outputs, each computed by a node."""
    if not graph.output:
        raise CompileError("invalid ONNX model: the graph has no outputs")
    if not graph.node:
        raise CompileError("invalid ONNX model: the graph has no nodes")
    inits = {t.name for t in graph.initializer}
    inputs = [vi.name for vi in graph.input]
    for what, count in (("inputs", len(set(inputs) - inits)), ("outputs", len(graph.output))):
        if count > MAX_IO:
            raise CompileError(f"the model has {count} {what}; a program takes at most "
                               f"{MAX_IO}")
    for names, what in ((inputs, "input"), ([vo.name for vo in graph.output], "output")):
        dup = next((n for i, n in enumerate(names) if n in names[:i]), None)
        if dup is not None:
            raise CompileError(f"invalid ONNX model: graph {what} '{dup}' is declared twice")
    made = {o for n in graph.node for o in n.output if o}
    for vo in graph.output:
        if vo.name in inputs:
            raise CompileError(f"invalid ONNX model: graph output '{vo.name}' is a model "
                               "input: no node computes it")
        if vo.name not in made and vo.name not in inits:
            raise CompileError(f"invalid ONNX model: graph output '{vo.name}' is computed by "
                               "no node")
    clash = sorted(made & (set(inputs) | inits))
    if clash:
        what = "input" if clash[0] in inputs else "initializer"
        raise CompileError(f"invalid ONNX model: value '{clash[0]}' is both a graph {what} "
                           "and a node output")


def _graphs(graph: onnx.GraphProto):
    """``graph`` and every subgraph in its nodes' attributes."""
    yield graph
    for n in graph.node:
        for a in n.attribute:
            for sub in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _graphs(sub)


def _negative_dims(proto: onnx.ModelProto):
    """The declared dimensions below zero, of every value info of every graph."""
    for g in _graphs(proto.graph):
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                yield from (d for d in vi.type.tensor_type.shape.dim
                            if d.HasField("dim_value") and d.dim_value < 0)


def with_unknown_dims(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Exporters (paddle2onnx) declare a dimension they do not know as -1; ONNX spells
    that as a dimension with neither value nor name. Returns ``proto`` itself, or a copy
    with those dimensions made unknown (the caller's model is left as it is), which
    ``input_shapes`` can then fix like any symbolic one. Other negative sizes stay, for
    :func:`check_model` to refuse."""
    if not any(d.dim_value == -1 for d in _negative_dims(proto)):
        return proto
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    for d in _negative_dims(copy):
        if d.dim_value == -1:
            d.ClearField("dim_value")
    return copy


def check_model(proto: onnx.ModelProto) -> None:
    """Refuse a malformed model (see the module docstring) with a one-line CompileError."""
    if not proto.HasField("graph"):
        raise CompileError("not an ONNX model: it has no graph")
    _walk(proto, "model")
    _check_opsets(proto)
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:  # ValidationError, and whatever the C++ side raises
        raise CompileError(f"invalid ONNX model: {checker_message(exc)}") from None
    _check_boundary(proto.graph)
