# SPDX-License-Identifier: Apache-2.0
"""Malformed ONNX models, each a defect an outside fuzzer found: every one ends in a
one-line :class:`CompileError` (or, at run time, :class:`HostOpError`) naming the node,
initializer or attribute, and ``npusim compile`` prints that line and exits 2."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_helpers import conv_block, make_model, rand

from npusim.compiler import CompileError, compile_model
from npusim.compiler.ir import IRError
from npusim.runtime import Session
from npusim.runtime.cli import main
from npusim.simulator.host import HostKernel, HostOpError


def compile_error(model, *words: str, **kw) -> str:
    """Compile ``model``; it must fail with a one-line CompileError holding ``words``."""
    with pytest.raises(CompileError) as info:
        compile_model(model, "tiny", "fp32", **kw)
    msg = str(info.value)
    assert msg and msg.isprintable(), repr(msg)  # one line, no control characters
    for w in words:
        assert w in msg, msg
    return msg


def block() -> onnx.ModelProto:
    return conv_block(residual=False)


def init(m: onnx.ModelProto, name: str) -> TensorProto:
    return next(t for t in m.graph.initializer if t.name == name)


def with_attr(node: str, attr: str, value) -> onnx.ModelProto:
    """The conv block with one attribute of node ``node`` set to ``value``."""
    m = block()
    n = next(n for n in m.graph.node if n.name == node)
    for a in list(n.attribute):
        if a.name == attr:
            n.attribute.remove(a)
    n.attribute.append(helper.make_attribute(attr, value))
    return m


def replace_init(m: onnx.ModelProto, name: str, value: np.ndarray) -> onnx.ModelProto:
    init(m, name).CopyFrom(numpy_helper.from_array(value, name))
    return m


def bad_utf8(m: onnx.ModelProto, old: bytes, new: bytes) -> bytes:
    """The serialized model with the field ``old`` (tag, length, text) replaced by ``new``,
    of the same length but not UTF-8: the protobuf itself stays well formed."""
    data = m.SerializeToString()
    assert data.count(old) == 1 and len(old) == len(new)
    return data.replace(old, new)


def single(op: str, x: list[int], inits: dict, out: list[int] | None = None, opset: int = 17,
           **attrs) -> onnx.ModelProto:
    """One ``op`` node named 'n' on input x [and initializers, in order]."""
    node = helper.make_node(op, ["x", *inits], ["y"], name="n", **attrs)
    out = out or [f"d{i}" for i in range(len(x))]  # the checker wants a rank
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


# --- the file and the graph ----------------------------------------------------------------

def no_graph() -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.ir_version = 8
    m.opset_import.add().version = 17
    return m


def edit(fn):
    """A conv block changed in place by ``fn``."""
    def build() -> onnx.ModelProto:
        m = block()
        fn(m)
        return m
    return build


STRUCTURE = {
    "not a protobuf": (lambda: b"\x08\x07garbage \xff\xff", ["malformed ONNX"]),
    "empty bytes": (lambda: b"", ["no graph"]),
    "no graph": (no_graph, ["no graph"]),
    "no opset": (edit(lambda m: m.ClearField("opset_import")), ["opset_import"]),
    "huge opset": (edit(lambda m: setattr(m.opset_import[0], "version", 10**6)),
                   ["opset 1000000", "does not exist"]),
    "two writers": (edit(lambda m: m.graph.node[1].output.__setitem__(0, "c")),
                    ["'c'", "single static assignment"]),
    "dangling input": (edit(lambda m: m.graph.node[1].input.__setitem__(0, "nowhere")),
                       ["node 'bn'", "'nowhere'"]),
    "cycle": (edit(lambda m: m.graph.node[0].input.__setitem__(0, "r")),
              ["node 'conv'", "reads 'r'"]),
    "no outputs": (edit(lambda m: m.graph.ClearField("output")), ["no outputs"]),
    "output is an input": (edit(lambda m: m.graph.output.append(m.graph.input[0])),
                           ["graph output 'x'", "model input"]),
    "ir_version too new": (edit(lambda m: setattr(m, "ir_version", 99)), ["ir_version 99"]),
}


@pytest.mark.parametrize("case", list(STRUCTURE))
def test_malformed_file_or_graph(case):
    build, words = STRUCTURE[case]
    compile_error(build(), *words)


def with_subgraph(op: str, inputs: list[str], consts: dict, **graphs) -> onnx.ModelProto:
    """x [4] -> one ``op`` node with subgraph attributes ``graphs`` -> y [4]."""
    m = single(op, [4], {}, [4])
    m.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    m.graph.node[0].CopyFrom(helper.make_node(op, inputs, ["y"], name="sub", **graphs))
    return m


def test_if_branches_that_disagree_name_the_if_node():
    out = helper.make_tensor_value_info("o", TensorProto.FLOAT, [4])
    relu = [helper.make_node("Relu", ["x"], ["o"], name="r")]
    m = with_subgraph("If", ["c"], {"c": np.array(True)},
                      then_branch=helper.make_graph(relu, "then", [], [out]),
                      else_branch=helper.make_graph(relu, "else", [], [out, out]))
    compile_error(m, "If node 'sub'", "number of outputs")


def test_loop_body_reading_nothing_names_both_nodes():
    ins = [helper.make_tensor_value_info("i", TensorProto.INT64, []),
           helper.make_tensor_value_info("c", TensorProto.BOOL, [])]  # the carried v: missing
    outs = [helper.make_tensor_value_info("c2", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v2", TensorProto.FLOAT, [4])]
    body = helper.make_graph([helper.make_node("Identity", ["c"], ["c2"], name="keep"),
                              helper.make_node("Relu", ["v"], ["v2"], name="step")],
                             "body", ins, outs)
    m = with_subgraph("Loop", ["n", "t", "x"], {"n": np.array(3, np.int64),
                                                "t": np.array(True)}, body=body)
    compile_error(m, "node 'sub' (Loop): node 'step' (Relu) reads 'v'")


# --- tensors --------------------------------------------------------------------------------

def short_raw(m):
    init(m, "w").raw_data = init(m, "w").raw_data[:-1]


def external(m):
    t = init(m, "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="weights.bin")


def huge_dims(m):
    del init(m, "w").dims[:]
    init(m, "w").dims.extend([1 << 20, 1 << 20, 8, 8])


def strings(m):
    t = init(m, "b")
    t.ClearField("raw_data")
    t.data_type = TensorProto.STRING
    t.string_data.extend([b"a"] * 8)


def typed_short(m):
    t = init(m, "b")
    arr = numpy_helper.to_array(t)
    t.ClearField("raw_data")
    t.float_data.extend(arr[:-1].tolist())


TENSORS = {
    "raw_data one byte short": (short_raw, ["initializer 'w'", "2303 bytes", "need 2304"]),
    "data type 999": (lambda m: setattr(init(m, "b"), "data_type", 999), ["999"]),
    "data type bfloat16": (lambda m: setattr(init(m, "b"), "data_type", 16), ["BFLOAT16"]),
    "external data": (external, ["initializer 'w'", "external file"]),
    "terabytes declared": (huge_dims, ["initializer 'w'", "elements"]),
    "strings as a bias": (strings, ["Conv node 'conv'", "string"]),
    "typed field too short": (typed_short, ["initializer 'b'", "float_data"]),
    "negative dim": (lambda m: init(m, "b").dims.__setitem__(0, -8),
                     ["initializer 'b'", "negative"]),
    "negative input dim": (
        lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[2], "dim_value", -3),
        ["graph input 'x'", "negative size -3"]),
}


@pytest.mark.parametrize("case", list(TENSORS))
def test_undecodable_tensors(case):
    fn, words = TENSORS[case]
    m = block()
    fn(m)
    compile_error(m, *words)


def test_minus_one_declares_an_unknown_dimension():
    """paddle2onnx declares a dimension it does not know as -1 (PP-OCR's classifier):
    it is a symbolic dimension, which input_shapes fixes; the caller's model is left as
    it was."""
    m = block()
    shape = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -1
    compile_error(m, "input 'x'", "symbolic dimension", "--input-shape")
    prog = compile_model(m, "tiny", input_shapes={"x": tuple(shape)})
    assert prog.inputs[0].shape == tuple(shape)
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_value == -1


def test_external_data_is_refused_without_reading_the_file(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"\0" * 2304)
    m = block()
    external(m)
    onnx.save(m, tmp_path / "m.onnx")
    compile_error(tmp_path / "m.onnx", "initializer 'w'", "external file")


def test_ir_errors_are_compile_errors():
    assert issubclass(IRError, CompileError)
    assert str(CompileError("two\nlines")) == "two lines"


def test_what_a_program_cannot_hold_is_refused():
    m = block()
    m.graph.node[0].name = "n" * 5000
    compile_error(m, "its name is 5000 characters long")
    rank = [1] * 17
    compile_error(make_model([helper.make_node("Relu", ["x"], ["y"], name="r")], {"x": rank},
                             {"y": rank}), "rank 17")
    nodes = [helper.make_node("Relu", ["x"], [f"y{k}"], name=f"r{k}") for k in range(257)]
    compile_error(make_model(nodes, {"x": [2]}, {f"y{k}": [2] for k in range(257)}),
                  "257 outputs")
    big = make_model([helper.make_node("Expand", ["x", "s"], ["y"], name="wide")], {"x": [1]},
                     {"y": [1 << 25]}, {"s": np.array([1 << 25], np.int64)})
    compile_error(big, "node 'wide'", "64 MiB of DRAM of tiny")  # the host must not either


def test_names_cannot_drive_the_terminal():
    m = with_attr("conv", "group", 0)
    m.graph.node[0].name = "c\x1b[31mv\x00"
    compile_error(m, "Conv node 'c\\x1b[31mv\\x00'", "group")


# --- attributes and weights of the ops the device lowers ------------------------------------

RNG = np.random.default_rng(0)
I64 = np.int64
ATTRIBUTES = {
    "group 0": (lambda: with_attr("conv", "group", 0), ["Conv node 'conv'", "group is 0"]),
    "group not dividing": (lambda: with_attr("conv", "group", 3), ["'conv'", "group 3"]),
    "strides 0": (lambda: with_attr("conv", "strides", [0, 0]), ["'conv'", "strides"]),
    "dilations 0": (lambda: with_attr("conv", "dilations", [0, 1]), ["'conv'", "dilations"]),
    "negative pads": (lambda: with_attr("conv", "pads", [-1] * 4), ["'conv'", "pads"]),
    "kernel 0": (lambda: with_attr("conv", "kernel_shape", [0, 0]), ["'conv'", "kernel_shape"]),
    "pool kernel larger than input": (lambda: with_attr("pool", "kernel_shape", [20, 20]),
                                      ["MaxPool node 'pool'", "kernel_shape", "padded input"]),
    "pool pads reach the kernel": (lambda: with_attr("pool", "pads", [2, 2, 2, 2]),
                                   ["'pool'", "pads"]),
    "pool ceil_mode 2": (lambda: with_attr("pool", "ceil_mode", 2), ["'pool'", "ceil_mode"]),
    "softmax axis": (lambda: with_attr("softmax", "axis", 5), ["Softmax node 'softmax'", "axis"]),
    "flatten axis": (lambda: with_attr("flat", "axis", 9), ["Flatten node 'flat'", "axis"]),
    "gemm shapes": (lambda: with_attr("fc", "transB", 1), ["Gemm node 'fc'"]),
    "conv W channels per group": (
        lambda: replace_init(block(), "w", rand(RNG, 8, 4, 3, 3)),
        ["Conv node 'conv'", "weight W", "[8, 4, 3, 3]"]),
    "conv bias length": (lambda: replace_init(block(), "b", rand(RNG, 5)),
                         ["Conv node 'conv'", "bias B is [5]"]),
    "batchnorm scale length": (lambda: replace_init(block(), "s", rand(RNG, 3)),
                               ["BatchNormalization node 'bn'", "scale"]),
    "conv transpose bias": (
        lambda: single("ConvTranspose", [1, 4, 4, 4], {"w": rand(RNG, 4, 2, 3, 3),
                                                        "b": rand(RNG, 3)}),
        ["ConvTranspose node 'n'", "bias B"]),
    "resize negative scale": (
        lambda: single("Resize", [1, 2, 4, 4], {"roi": np.zeros(0, np.float32),
                                                "s": np.array([1, 1, -2, 2], np.float32)}),
        ["Resize node 'n'", "scales"]),
    "resize nearest_mode": (
        lambda: single("Resize", [1, 2, 4, 4], {"roi": np.zeros(0, np.float32),
                                                "s": np.array([1, 1, 2, 2], np.float32)},
                       nearest_mode="bogus"), ["Resize node 'n'", "nearest_mode"]),
    "pad amounts": (lambda: single("Pad", [1, 2, 4, 4], {"p": np.array([1, 1], I64)}),
                    ["Pad node 'n'", "pads"]),
    "slice step 0": (
        lambda: single("Slice", [4, 6], {"s": np.array([0], I64), "e": np.array([4], I64),
                                         "a": np.array([1], I64), "k": np.array([0], I64)}),
        ["Slice node 'n'", "step"]),
    "gather index": (lambda: single("Gather", [4, 6], {"i": np.array([0, 9], I64)}, axis=1),
                     ["Gather node 'n'", "index 9"]),
    "split outputs": (lambda: single("Split", [4, 6], {}, num_outputs=0, opset=18),
                      ["Split node 'n'"]),
    "transpose perm": (lambda: single("Transpose", [4, 6], {}, perm=[0, 0]),
                       ["Transpose node 'n'", "perm"]),
    "reduce axes": (lambda: single("ReduceMean", [4, 6], {"a": np.array([1, -1], I64)}, opset=18),
                    ["ReduceMean node 'n'", "axes"]),
    "layernorm axis": (lambda: single("LayerNormalization", [4, 6], {"g": rand(RNG, 6)},
                                      axis=4), ["LayerNormalization node 'n'", "axis"]),
    "concat shapes": (lambda: single("Concat", [4, 6], {"c": rand(RNG, 3, 5)}, axis=1),
                      ["Concat node 'n'"]),
    "reshape size": (lambda: single("Reshape", [4, 6], {"s": np.array([5, 5], I64)}),
                     ["Reshape node 'n'"]),
    "depth to space block 0": (lambda: single("DepthToSpace", [1, 4, 2, 2], {}, blocksize=0),
                               ["DepthToSpace node 'n'", "blocksize"]),
    # onnxruntime's Einsum divides by zero on an index of size 0 against 1 (SIGFPE) and
    # broadcasts 1 against 7 where ONNX's inference takes the first size
    "einsum empty index": (lambda: single("Einsum", [1, 3], {"k": np.zeros((0, 3), np.float32)},
                                         [3, 3], equation="bi,bj->ij"),
                           ["Einsum node 'n'", "index b has sizes [0, 1]"]),
    "einsum broadcast index": (lambda: single("Einsum", [1, 3], {"k": rand(RNG, 7, 3)}, [3, 3],
                                              equation="bi,bj->ij"),
                               ["Einsum node 'n'", "index b has sizes [1, 7]"]),
}


@pytest.mark.parametrize("case", list(ATTRIBUTES))
def test_degenerate_attributes_and_weights(case):
    build, words = ATTRIBUTES[case]
    compile_error(build(), *words)


def test_negative_inferred_size_is_refused_before_onnx_aborts():
    """ONNX infers a negative size for a Conv window larger than its input; its Slice
    inference then fails a C++ assertion that kills the process (onnx 1.22)."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="big"),
             helper.make_node("Slice", ["c", "s", "e", "a"], ["y"], name="cut")]
    weights = {"w": rand(RNG, 1, 1, 6, 6), "s": np.array([0], I64), "e": np.array([1], I64),
               "a": np.array([2], I64)}
    compile_error(make_model(nodes, {"x": [1, 1, 4, 4]}, {"y": [1, 1, "h", "w"]}, weights),
                  "Conv node 'big'", "larger than the padded input")


def test_zero_sized_input_reaching_a_conv_is_refused():
    m = block()
    m.graph.input[0].type.tensor_type.shape.dim[2].dim_value = 0
    compile_error(m, "Conv node 'conv'", "padded input")


# --- text that is not UTF-8 ------------------------------------------------------------------

NAMES = {  # field (tag, length, text) -> the same bytes but one, and where the error points
    "node name": (b"\x1a\x04conv", b"\x1a\x04c\xffnv", "node 0 (Conv): its name"),
    "op type": (b"\x22\x04Relu", b"\x22\x04R\xfflu", "node 'relu' (?): its op_type"),
    "value name": (b"\x12\x02bn", b"\x12\x02b\xff", "node 'bn' (BatchNormalization): its output"),
    "initializer name": (b"\x42\x02fw", b"\x42\x02f\xff", "initializer 6: its name"),
    "doc string": (b"\x52\x03doc", b"\x52\x03d\xffc", "graph: its doc_string"),
    "domain": (b"\x3a\x07ai.onnx", b"\x3a\x07ai\xffonnx", "node 'relu' (Relu): its domain"),
}


@pytest.mark.parametrize("case", list(NAMES))
def test_text_that_is_not_utf8(case):
    old, new, words = NAMES[case]
    m = block()
    m.graph.doc_string = "doc"
    next(n for n in m.graph.node if n.name == "relu").domain = "ai.onnx"
    compile_error(bad_utf8(m, old, new), "not valid UTF-8", words)


# --- host ops -----------------------------------------------------------------------------

def dynamic_reshape() -> onnx.ModelProto:
    """y = x reshaped to the shape in s: a host op whose shape comes from data."""
    nodes = [helper.make_node("Cast", ["s"], ["si"], to=TensorProto.INT64, name="cast"),
             helper.make_node("Reshape", ["x", "si"], ["y"], name="rs")]
    return make_model(nodes, {"x": [6], "s": [2]}, {"y": ["a", "b"]})


def test_host_op_failing_at_run_time_names_the_op():
    sess = Session(compile_model(dynamic_reshape(), "tiny", "fp32"))
    x = np.arange(6, dtype=np.float32)
    (y,) = sess.run(None, {"x": x, "s": np.array([2, 3], np.float32)})
    assert y.shape == (2, 3)
    with pytest.raises(HostOpError) as info:
        sess.run(None, {"x": x, "s": np.array([4, 4], np.float32)})
    msg = str(info.value)
    assert "Reshape 'rs'" in msg and "failed" in msg and "\n" not in msg
    assert "[ONNXRuntimeError]" not in msg and "/onnxruntime_src/" not in msg


def test_host_model_onnxruntime_refuses():
    with pytest.raises(HostOpError, match="cannot load host op"):
        HostKernel(b"not a model")
    # int16 Max: ONNX allows it, onnxruntime has no kernel: refused at compile time
    graph = helper.make_graph(
        [helper.make_node("Max", ["a", "b"], ["y"], name="mx")], "g",
        [helper.make_tensor_value_info(k, TensorProto.INT16, [4]) for k in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.INT16, [4])])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compile_error(m, "Max 'mx'", "onnxruntime cannot load")


# --- the command line ---------------------------------------------------------------------

CLI_CASES = {
    "garbage": lambda: b"\x08\x07garbage \xff\xff",
    "short raw_data": lambda: edit(short_raw)().SerializeToString(),
    "group 0": lambda: with_attr("conv", "group", 0).SerializeToString(),
    "non-UTF-8 name": lambda: bad_utf8(block(), *NAMES["node name"][:2]),
    "pool window": lambda: with_attr("pool", "kernel_shape", [20, 20]).SerializeToString(),
    "empty file": lambda: b"",
}


@pytest.mark.parametrize("case", list(CLI_CASES))
def test_cli_prints_one_line_and_exits_2(case, tmp_path, capfd):
    (tmp_path / "bad.onnx").write_bytes(CLI_CASES[case]())
    code = main(["compile", str(tmp_path / "bad.onnx"), "-o", str(tmp_path / "o.npub"),
                 "--device", "tiny"])
    err = capfd.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npusim: error: "), err
    assert "Traceback" not in err and not (tmp_path / "o.npub").exists()


def test_cli_run_of_a_failing_host_op_is_one_line(tmp_path, capfd):
    onnx.save(dynamic_reshape(), tmp_path / "m.onnx")
    assert main(["compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.npub"),
                 "--device", "tiny"]) == 0
    np.save(tmp_path / "x.npy", np.zeros(6, np.float32))
    np.save(tmp_path / "s.npy", np.array([4, 4], np.float32))
    capfd.readouterr()
    code = main(["run", str(tmp_path / "m.npub"), "--input", f"x={tmp_path / 'x.npy'}",
                 "--input", f"s={tmp_path / 's.npy'}", "--output-dir", str(tmp_path / "out")])
    err = capfd.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "Reshape 'rs'" in err and "Traceback" not in err


def test_huge_integer_attributes_are_refused_before_anything_runs_the_model():
    """A Conv stride of 2**62 made onnxruntime die with SIGFPE when the compiler ran the
    model to measure a shape; any 32-bit overflow of a standard op's attribute is refused."""
    compile_error(with_attr("conv", "strides", [2**62, 1]), "strides", "32-bit")
    compile_error(with_attr("conv", "strides", [2**24 + 1, 1]), "strides", "at most")


def test_constant_folding_checks_a_node_before_evaluating_it(monkeypatch):
    """onnx's reference evaluator trusted a Concat axis of 2**31 - 1 and built a shape of two
    billion ones (24 GB): the node's checks must run before it is evaluated."""
    from exporter_graphs import vit_patch_embed

    import npusim.compiler.shapes as shapes

    eg = vit_patch_embed()
    node = next(n for n in eg.model.graph.node if n.name == "cls_shape")
    next(a for a in node.attribute if a.name == "axis").i = 2**31 - 1
    evaluate = shapes._evaluate

    def guarded(n, args, opsets):
        assert n.name != "cls_shape", "evaluated before its checks"
        return evaluate(n, args, opsets)

    monkeypatch.setattr(shapes, "_evaluate", guarded)
    compile_error(eg.model, "Concat node 'cls_shape'", "axis", input_shapes=eg.input_shapes)
