# SPDX-License-Identifier: Apache-2.0
"""Hostile ONNX models: mutants of three tiny real models (a conv net, a dense net with a
host op, an attention block) must compile and run, or be refused with the project's own
one-line errors; never a raw exception.

The mutants change one thing at a time, at the protobuf level (an attribute to 0, -1 or
huge, a dim, a data type, a payload's length, a small constant operand, a name, the
node list, the opset) or at the byte level (flips, truncations, insertions, names of
invalid UTF-8). ``NPUSIM_FUZZ_EXAMPLES=20000`` runs a long campaign.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import onnx
import pytest
from fuzzing import fuzz_settings
from hypothesis import assume, given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from onnx_helpers import rand

from npusim.compiler import CompileError, compile_model
from npusim.runtime import Session
from npusim.simulator.device import ExecutionError, InputError
from npusim.simulator.host import HostOpError
from npusim.simulator.program import Program, ProgramError

SAFE = (CompileError, HostOpError, ProgramError, ExecutionError, InputError)
"""What a hostile model may raise, at compile or at run time: nothing raw."""


def _model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "fuzz", [helper.make_tensor_value_info(k, TensorProto.FLOAT, v)
                        for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _i64(*v: int) -> np.ndarray:
    return np.array(v, np.int64)


def conv_net() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    n = helper.make_node
    nodes = [n("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             n("Relu", ["c1"], ["r1"], name="relu1"),
             n("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
             n("Conv", ["p1", "w2"], ["c2"], group=2, name="conv2"),
             n("Pad", ["c2", "pads"], ["pd"], name="pad1"),
             n("AveragePool", ["pd"], ["ap"], kernel_shape=[3, 3], name="avg1"),
             n("Resize", ["ap", "", "scales"], ["rs"], mode="nearest", name="resize1"),
             n("Slice", ["rs", "starts", "ends", "axes"], ["sl"], name="slice1"),
             n("GlobalAveragePool", ["sl"], ["gp"], name="gap"),
             n("Flatten", ["gp"], ["fl"], name="flat"),
             n("Gemm", ["fl", "wf", "bf"], ["lo"], transB=1, name="fc"),
             n("Softmax", ["lo"], ["y"], axis=1, name="softmax")]
    inits = {"w1": rand(rng, 4, 4, 3, 3, scale=0.3), "b1": rand(rng, 4),
             "w2": rand(rng, 4, 2, 1, 1, scale=0.5), "pads": _i64(0, 0, 1, 1, 0, 0, 1, 1),
             "scales": np.array([1, 1, 2, 2], np.float32), "starts": _i64(0),
             "ends": _i64(4), "axes": _i64(2), "wf": rand(rng, 3, 4), "bf": rand(rng, 3)}
    return _model(nodes, {"x": [1, 4, 8, 8]}, {"y": [1, 3]}, inits)


def dense_net() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    n = helper.make_node
    nodes = [n("MatMul", ["x", "w1"], ["m1"], name="mm1"),
             n("Add", ["m1", "b1"], ["a1"], name="add1"),
             n("Relu", ["a1"], ["r1"], name="relu1"),
             n("LayerNormalization", ["r1", "g", "be"], ["ln"], axis=-1, name="ln"),
             n("Gemm", ["ln", "w2", "b2"], ["f2"], name="fc2"),
             n("Concat", ["f2", "extra"], ["cat"], axis=1, name="cat"),
             n("ReduceMean", ["cat"], ["rm"], axes=[1], keepdims=1, name="mean"),
             n("Sub", ["cat", "rm"], ["sb"], name="sub"),
             n("Cos", ["sb"], ["cs"], name="cos"),
             n("TopK", ["cs", "k"], ["y", "idx"], axis=-1, name="topk")]
    inits = {"w1": rand(rng, 8, 6), "b1": rand(rng, 6), "g": rand(rng, 6), "be": rand(rng, 6),
             "w2": rand(rng, 6, 5), "b2": rand(rng, 5), "extra": rand(rng, 2, 3),
             "k": _i64(3)}
    return _model(nodes, {"x": [2, 8]}, {"y": [2, 3]}, inits)


def attention() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    n = helper.make_node
    nodes = []
    for p, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        nodes += [n("MatMul", ["x", f"w{p}"], [f"{p}0"], name=f"mm_{p}"),
                  n("Reshape", [f"{p}0", "heads"], [f"{p}1"], name=f"view_{p}"),
                  n("Transpose", [f"{p}1"], [f"{p}2"], perm=perm, name=f"perm_{p}")]
    nodes += [n("MatMul", ["q2", "k2"], ["s"], name="qk"),
              n("Div", ["s", "scale"], ["sd"], name="scale"),
              n("Softmax", ["sd"], ["pr"], axis=-1, name="softmax"),
              n("MatMul", ["pr", "v2"], ["o"], name="pv"),
              n("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3], name="unperm"),
              n("Reshape", ["ot", "flat"], ["of"], name="merge"),
              n("Gather", ["of", "idx"], ["gt"], axis=1, name="pick"),
              n("Split", ["gt", "halves"], ["h1", "h2"], axis=2, name="split"),
              n("Mul", ["h1", "h2"], ["y"], name="gate")]
    inits = {"wq": rand(rng, 8, 8), "wk": rand(rng, 8, 8), "wv": rand(rng, 8, 8),
             "heads": _i64(1, 4, 2, 4), "scale": np.array(2.0, np.float32),
             "flat": _i64(1, 4, 8), "idx": _i64(0, 3), "halves": _i64(4, 4)}
    return _model(nodes, {"x": [1, 4, 8]}, {"y": [1, 2, 4]}, inits)


MODELS = {"conv": conv_net, "dense": dense_net, "attention": attention}


@functools.cache
def base(name: str) -> bytes:
    return MODELS[name]().SerializeToString()


def _try(data: bytes, numerics: str) -> str:
    """Compile ``data`` and run what compiles; return what happened, or fail on anything
    not allowed (a raw exception, an error of more than one line or with control
    characters)."""
    try:
        prog = compile_model(data, "tiny", numerics)
        prog = Program.from_bytes(prog.to_bytes())  # it must save and load
        rng = np.random.default_rng(0)
        feeds = {t.name: rng.standard_normal(t.shape).astype(t.dtype) for t in prog.inputs}
        Session(prog).run(None, feeds)
    except SAFE as exc:
        msg = str(exc)
        assert msg and msg.isprintable() and "Traceback" not in msg, repr(msg)
        return type(exc).__name__
    return "ran"


def test_base_models_compile_and_run():
    for name in MODELS:
        for numerics in ("fp32", "msfp16"):
            assert _try(base(name), numerics) == "ran", name


# --- protobuf-level mutants --------------------------------------------------------------

INTS = st.sampled_from([0, -1, 1, 2, 3, 5, 2**31, 2**62, -(2**62)])
FLOATS = st.floats(allow_nan=True, width=32)
STRINGS = st.sampled_from(["", "SAME_UPPER", "VALID", "reflect", "edge", "linear", "cubic",
                           "align_corners", "CRD", "bogus", "\x00"])
BY_TYPE = {onnx.AttributeProto.INT: INTS, onnx.AttributeProto.INTS: st.lists(INTS, max_size=6),
           onnx.AttributeProto.FLOAT: FLOATS, onnx.AttributeProto.FLOATS: st.lists(FLOATS),
           onnx.AttributeProto.STRING: STRINGS}


def _pick(draw, seq):
    assume(len(seq) > 0)  # an earlier mutation emptied it
    return seq[draw(st.integers(0, len(seq) - 1))]


def _schema_attrs(node: onnx.NodeProto) -> dict[str, int]:
    try:
        schema = onnx.defs.get_schema(node.op_type, 17, node.domain)
    except Exception:  # a mutant op
        return {}
    return {k: a.type for k, a in schema.attributes.items() if a.type in BY_TYPE}


def _attribute(draw, m: onnx.ModelProto) -> None:
    """An attribute of the node's schema (or, sometimes, a stray one) gets a value of its
    type (or, sometimes, of another)."""
    nodes = [(n, _schema_attrs(n)) for n in m.graph.node]
    node, known = _pick(draw, [(n, k) for n, k in nodes if k] or nodes)
    known = known or {"axis": onnx.AttributeProto.INT}
    name = _pick(draw, sorted(known))
    kind = known[name] if draw(st.integers(0, 4)) else _pick(draw, sorted(BY_TYPE))
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    value = draw(BY_TYPE[kind])
    node.attribute.append(helper.make_attribute(name, value, attr_type=kind))


def _dims(draw, m: onnx.ModelProto) -> None:
    g = m.graph
    where = draw(st.sampled_from(["input", "output", "initializer"]))
    if where == "initializer":
        dims = _pick(draw, g.initializer).dims
    else:
        vi = _pick(draw, g.input if where == "input" else g.output)
        dims = vi.type.tensor_type.shape.dim
    how = draw(st.sampled_from(["set", "set", "add", "drop"]))
    value = draw(st.sampled_from([0, -1, -5, 1, 3, 7, 2**20, 2**40]))
    if how == "drop" and len(dims):
        del dims[draw(st.integers(0, len(dims) - 1))]
    elif how == "add" or not len(dims):
        if where == "initializer":
            dims.append(value)
        else:
            dims.add().dim_value = value
    elif where == "initializer":
        dims[draw(st.integers(0, len(dims) - 1))] = value
    else:
        dims[draw(st.integers(0, len(dims) - 1))].dim_value = value


def _dtype(draw, m: onnx.ModelProto) -> None:
    elem = draw(st.one_of(st.integers(0, 27), st.just(999)))
    if draw(st.booleans()):
        _pick(draw, m.graph.initializer).data_type = elem
    else:
        _pick(draw, m.graph.input).type.tensor_type.elem_type = elem


def _array(t: TensorProto) -> np.ndarray | None:
    try:
        return numpy_helper.to_array(t)
    except Exception:  # another mutation broke it already
        return None


def _payload(draw, m: onnx.ModelProto) -> None:
    t = _pick(draw, m.graph.initializer)
    how = draw(st.sampled_from(["short", "long", "typed", "external", "strings"]))
    if how == "short":
        t.raw_data = t.raw_data[:-draw(st.integers(1, 3))]
    elif how == "long":
        t.raw_data = t.raw_data + b"\0" * draw(st.integers(1, 9))
    elif how == "typed" and _array(t) is not None:  # the typed field, one too many or few
        arr = _array(t).reshape(-1)
        t.ClearField("raw_data")
        field = helper.tensor_dtype_to_field(t.data_type)
        getattr(t, field).extend(arr[:-1].tolist() if draw(st.booleans())
                                 else arr.tolist() + arr[:1].tolist())
    elif how == "external":
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        t.external_data.add(key="location", value=draw(st.sampled_from(
            ["/etc/passwd", "../../etc/passwd", "weights.bin"])))
    else:
        t.ClearField("raw_data")
        t.data_type = TensorProto.STRING
        t.string_data.extend([b"a\xff"] * min(math.prod(t.dims), 64))


def _operand(draw, m: onnx.ModelProto) -> None:
    """A small constant operand (pads, starts, a Reshape target, indices, scales, k) gets
    other values, of another length."""
    small = [t for t in m.graph.initializer if np.prod(t.dims) <= 8]
    t = _pick(draw, small)
    arr = _array(t)
    if arr is None:
        return
    vals = draw(st.lists(st.sampled_from([0, -1, -2, 1, 2, 3, 4, 9, 2**31, -(2**62)]),
                         min_size=0, max_size=9))
    new = np.array(vals, arr.dtype if arr.dtype.kind in "iu" else np.float32)
    if draw(st.booleans()) and new.size == arr.size:
        new = new.reshape(arr.shape)
    t.CopyFrom(numpy_helper.from_array(new, t.name))


def _graph(draw, m: onnx.ModelProto) -> None:
    g = m.graph
    nodes = list(g.node)
    k = nodes.index(_pick(draw, nodes))
    how = draw(st.sampled_from(["drop", "dup", "swap", "dangling", "out_is_in", "no_outputs",
                                "dup_output", "reverse", "two_writers", "inputs"]))
    if how == "drop":
        del nodes[k]
    elif how == "dup":
        nodes.insert(k, nodes[k])
    elif how == "swap":
        j = draw(st.integers(0, len(nodes) - 1))
        nodes[k], nodes[j] = nodes[j], nodes[k]
    elif how == "dangling" and nodes[k].input:
        nodes[k].input[draw(st.integers(0, len(nodes[k].input) - 1))] = "nowhere"
    elif how == "out_is_in" and g.output and g.input:
        g.output[0].name = g.input[0].name
    elif how == "no_outputs":
        del g.output[:]
    elif how == "dup_output" and g.output:
        g.output.append(g.output[0])
    elif how == "reverse":
        nodes.reverse()
    elif how == "two_writers":
        nodes[k].output[0] = nodes[draw(st.integers(0, len(nodes) - 1))].output[0]
    elif how == "inputs" and nodes[k].input and g.input:  # swap two, or read the model input
        ins = nodes[k].input
        if len(ins) > 1 and draw(st.booleans()):
            ins[0], ins[1] = ins[1], ins[0]
        else:
            ins[draw(st.integers(0, len(ins) - 1))] = g.input[0].name
    del g.node[:]
    g.node.extend(nodes)


def _ops(draw, m: onnx.ModelProto) -> None:
    node = _pick(draw, m.graph.node)
    how = draw(st.sampled_from(["op", "op", "domain", "name", "opset", "ir"]))
    if how == "op":
        node.op_type = draw(st.sampled_from(["Relu", "Conv", "MatMul", "Softmax", "Reshape",
                                             "Concat", "Gather", "Slice", "Pad", "Bogus"]))
    elif how == "domain":
        node.domain = draw(st.sampled_from(["com.microsoft", "bogus.domain", "ai.onnx.ml"]))
    elif how == "name":
        node.name = draw(st.sampled_from(["", "a\nb", "\x00", "\u2202x", "n" * 5000,
                                          m.graph.node[0].name]))
    elif how == "opset":
        version = draw(st.sampled_from([0, 1, 7, 9, 10, 11, 12, 13, 18, 21, 99, 2**40]))
        m.opset_import[0].version = version
    else:
        m.ir_version = draw(st.sampled_from([0, 1, 3, 99]))


def _subgraph(draw, m: onnx.ModelProto) -> None:
    """An If node around the last node's input, with a branch that may be malformed."""
    g = m.graph
    assume(len(g.node) > 0 and len(g.node[-1].input) > 0)
    last = g.node[-1]
    src = last.input[0]
    out = helper.make_tensor_value_info("b_out", TensorProto.FLOAT, None)
    how = draw(st.sampled_from(["ok", "no_outputs", "dangling", "count", "empty"]))
    body = [helper.make_node("Identity", ["nowhere" if how == "dangling" else src],
                             ["b_out"], name="b_id")]
    then = helper.make_graph(body if how != "empty" else [], "then", [],
                             [] if how == "no_outputs" else [out])
    other = helper.make_graph(body, "else", [], [out, out] if how == "count" else [out])
    g.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    g.node.insert(len(g.node) - 1, helper.make_node(
        "If", ["cond"], ["branch"], then_branch=then, else_branch=other, name="if"))
    last.input[0] = "branch"


MUTATIONS = [_attribute, _attribute, _attribute, _dims, _dtype, _payload, _operand, _operand,
             _graph, _ops, _subgraph]


@st.composite
def proto_mutants(draw, name: str) -> bytes:
    m = onnx.load_model_from_string(base(name))
    for _ in range(draw(st.integers(1, 2))):
        draw(st.sampled_from(MUTATIONS))(draw, m)
    return m.SerializeToString()


@pytest.mark.parametrize("name", list(MODELS))
@fuzz_settings(300)
@given(data=st.data())
def test_proto_mutants_compile_or_fail_cleanly(name, data):
    _try(data.draw(proto_mutants(name)), data.draw(st.sampled_from(["fp32", "msfp16"])))


# --- byte-level mutants ------------------------------------------------------------------

@st.composite
def byte_mutants(draw) -> bytes:
    data = bytearray(base(draw(st.sampled_from(list(MODELS)))))
    how = draw(st.sampled_from(["flip", "flip", "truncate", "insert", "name"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del data[draw(st.integers(0, len(data) - 1)):]
    elif how == "insert":
        k = draw(st.integers(0, len(data)))
        data[k:k] = draw(st.binary(min_size=1, max_size=8))
    else:  # a name's bytes, same length, no longer UTF-8: the protobuf stays well formed
        names = [b"relu1", b"softmax", b"conv1", b"fc2", b"pick", b"w1", b"x", b"y"]
        names = [s for s in names if s in data]
        old = draw(st.sampled_from(names))
        k = draw(st.integers(0, len(old) - 1))
        data = bytearray(bytes(data).replace(old, old[:k] + b"\xff" + old[k + 1:]))
    return bytes(data)


@fuzz_settings(200)
@given(data=byte_mutants())
def test_byte_mutants_compile_or_fail_cleanly(data):
    _try(data, "fp32")
