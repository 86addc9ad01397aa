# SPDX-License-Identifier: Apache-2.0
"""ONNX backend conformance: the onnx package's node tests, run through npusim.

The cases are the node tests (``onnx.backend.test.data.node``) of the ops in
``OPS``: a case belongs to the op of its single node, and an ``_expanded`` case
(the op's function body) to the op of its base case. They run through
:class:`npusim.runtime.backend.NpusimBackend` in fp32 on the default device, with the
test runner's own tolerances. Every case that cannot pass is excluded with its
reason in ``SKIPS``; ``benchmarks/conformance_report.py`` prints the per-op table.

In these cases the weights of Conv, Gemm, MatMul and BatchNormalization are graph
inputs, so the compiler keeps those ops on the host. ``test_matrix_unit`` runs the
same cases with the weights frozen as initializers, which puts them on the
matrix unit, and checks that they did run on the device.
"""

from __future__ import annotations

import re
import unittest
import warnings
from functools import cache, cached_property
from pathlib import Path

import numpy as np
import onnx
import onnx.backend.test
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.backend.test.loader import load_model_tests
from onnx.backend.test.runner import Runner

from npusim.runtime import backend
from npusim.runtime.backend import NpusimBackend
from npusim.simulator.device import InputError

OPS = ("Conv", "ConvTranspose", "BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid",
       "Tanh", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Add", "Sum",
       "Mul", "Sub", "Div", "Concat", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
       "Pad", "Gemm", "MatMul", "Softmax", "LRN", "Dropout", "Identity", "Constant",
       "ConstantOfShape",
       # the vector unit's element-wise functions, reductions, norms, resampling, movement
       "HardSigmoid", "HardSwish", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Erf",
       "Gelu", "Elu", "Softplus", "Selu", "Softsign", "Floor", "Ceil", "Round", "Sign", "Pow",
       "Max", "Min", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceSumSquare",
       "ReduceL2", "LayerNormalization", "InstanceNormalization", "Resize", "Upsample", "Slice",
       "Split", "Gather", "Expand", "DepthToSpace", "SpaceToDepth", "Cast", "TopK", "Shape",
       "Size", "Range", "Where", "Equal",
       # recurrent layers (unrolled on the device when their weights are constants)
       "LSTM", "GRU", "RNN")
"""The ops whose node tests run here."""

SKIPS: dict[str, str] = {
    r"test_training_dropout(_default|_mask|_default_mask)?":
        "training-mode Dropout with ratio > 0 is random: the expected output was drawn with "
        "numpy's RNG, which no backend reproduces (npusim runs it on the host)",
    r"test_cast_\w*(BFLOAT16|FLOAT8\w*|FLOAT4E2M1|U?INT[24]|e8m0)\w*"
    r"|test_range_bfloat16\w*":
        "a data type numpy has no type for (bfloat16, float8, float4, int4, int2, e8m0): "
        "npusim's tensors are numpy arrays, so these are not supported",
    r"test_equal_string(_broadcast)?":
        "string tensors as model inputs: the device moves numbers only",
    r"test_(max|min)_u?int16|test_pow_types_float32_uint(32|64)|test_top_k_uint64":
        "onnxruntime, which runs npusim's host ops, has no kernel for these types",
    r"test_resize_downsample_scales_(cubic|linear)_align_corners":
        "onnxruntime, whose arithmetic npusim's resize follows, differs from the ONNX "
        "reference output for align_corners downsampling by scales",
    r"test_identity_sequence":
        "sequence-typed input and output: npusim compiles graphs of tensors only (CompileError)",
    r"test_identity_opt":
        "optional-typed input and output: npusim compiles graphs of tensors only (CompileError)",
}
"""Case-name pattern (a regular expression matched against the whole name) -> reason."""

MATRIX_OPS = ("Conv", "BatchNormalization", "Gemm", "MatMul", "LSTM", "GRU", "RNN")
"""Ops whose weights ``test_matrix_unit`` freezes, so that they run on the matrix unit."""

UNROLLED = ("LSTM", "GRU", "RNN")
"""Ops the compiler unrolls into matrix-unit products and vector ops (npusim.compiler.recurrent)."""

MATRIX_SKIPS: dict[str, str] = {
    r"test_batchnorm_(epsilon|example)_training_mode":
        "training mode: the graph uses the running_mean and running_var outputs, so the "
        "host runs the op whole; covered by the host cases above",
    r"test_gemm_(transposeA|all_attributes)":
        "transA = 1: the Gemm stays on the host (the matrix unit streams A untransposed); "
        "covered by the host cases above",
    r"test_gemm_default_matrix_bias":
        "a full [M, N] C is not a per-column bias: the Gemm stays on the host; covered above",
    r"test_matmul_(bcast|1d_3d|4d_1d|1d_1d)":
        "1-D operands, or an A that broadcasts against B: the MatMul stays on the host; "
        "covered above",
}
"""Like ``SKIPS``, for ``test_matrix_unit``."""

_EXPANDED = re.compile(r"_expanded(_ver\d+)?$")


class NodeCase:
    """One of the onnx package's node test cases: its model and its data sets.

    Newer onnx releases load both into the ``TestCase``; older ones (1.22) leave them to
    be read from ``model_dir``, which this does on first use, as onnx's runner does.
    """

    def __init__(self, case) -> None:
        self.case, self.name, self.rtol, self.atol = case, case.name, case.rtol, case.atol

    @cached_property
    def model(self) -> onnx.ModelProto:
        return self.case.model or onnx.load(Path(self.case.model_dir) / "model.onnx")

    @cached_property
    def data_sets(self) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
        if self.case.data_sets is not None:
            return self.case.data_sets
        graph = self.model.graph
        return [([_read_proto(d / f"input_{i}.pb", graph.input[i].type)
                  for i in range(len(list(d.glob("input_*.pb"))))],
                 [_read_proto(d / f"output_{i}.pb", graph.output[i].type)
                  for i in range(len(list(d.glob("output_*.pb"))))])
                for d in sorted(Path(self.case.model_dir).glob("test_data_set*"))]


def _read_proto(path: Path, type_proto: onnx.TypeProto):
    if type_proto.HasField("sequence_type"):
        seq = onnx.SequenceProto()
        seq.ParseFromString(path.read_bytes())
        return numpy_helper.to_list(seq)
    if type_proto.HasField("optional_type"):
        opt = onnx.OptionalProto()
        opt.ParseFromString(path.read_bytes())
        return numpy_helper.to_optional(opt)
    return numpy_helper.to_array(onnx.load_tensor(str(path)))


@cache
def node_cases() -> dict[str, NodeCase]:
    """The onnx package's node test cases by name (loaded once; onnx caches them too)."""
    with warnings.catch_warnings():  # some generators overflow on purpose (Cast, Reduce*)
        warnings.simplefilter("ignore", RuntimeWarning)
        return {t.name: NodeCase(t) for t in load_model_tests(kind="node")}


@cache
def case_ops() -> dict[str, str]:
    """Selected case name -> its op, for every node test case of an op in ``OPS``."""
    single = {}
    for name, t in node_cases().items():
        nodes = t.model.graph.node
        if len(nodes) == 1 and nodes[0].domain in ("", "ai.onnx"):
            single[name] = nodes[0].op_type
    selected = {}
    for name in node_cases():
        op = single.get(_EXPANDED.sub("", name))
        if op in OPS:
            selected[name] = op
    return dict(sorted(selected.items()))


def skip_reason(case: str, skips: dict[str, str] = SKIPS) -> str | None:
    """The reason ``case`` is skipped, or ``None``."""
    for pattern, reason in skips.items():
        if re.fullmatch(pattern, case):
            return reason
    return None


def matrix_cases() -> list[str]:
    """Cases of ``MATRIX_OPS`` with weights to freeze (not already skipped)."""
    return [c for c, op in case_ops().items() if op in MATRIX_OPS and not _EXPANDED.search(c)
            and len(node_cases()[c].model.graph.input) > 1 and skip_reason(c) is None]


def frozen_weights(model: onnx.ModelProto, inputs: list[np.ndarray]) -> onnx.ModelProto:
    """``model`` with every graph input but the first made an initializer of its value."""
    frozen = onnx.ModelProto()
    frozen.CopyFrom(model)
    graph = frozen.graph
    for vi, value in list(zip(graph.input, inputs))[1:]:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), vi.name))
    del graph.input[1:]
    return frozen


def run_matrix_case(case: str) -> list[dict]:
    """Run ``case`` with frozen weights; check the outputs; return the placement rows."""
    t = node_cases()[case]
    rows: list[dict] = []
    for inputs, refs in t.data_sets:
        inputs = [np.asarray(i) for i in inputs]
        rep = NpusimBackend.prepare(frozen_weights(t.model, inputs))
        outputs = rep.run(inputs[:1])
        Runner.assert_similar_outputs([np.asarray(r) for r in refs], outputs, t.rtol, t.atol)
        rows += rep.programs[0].metadata["placement"]
    return rows


# --- the backend test cases ---
_selected = case_ops()  # loads the node cases first, with their warnings silenced
backend_test = onnx.backend.test.BackendTest(NpusimBackend, __name__)
for _op in OPS:
    _names = [c for c, op in _selected.items() if op == _op]
    backend_test.include(rf"^(?:{'|'.join(map(re.escape, _names))})_cpu$")
for _pattern in SKIPS:
    backend_test.exclude(rf"^(?:{_pattern})_cpu$")

with warnings.catch_warnings():  # the report's marker is onnx's, registered by no one here
    warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
    _test_cases = backend_test.enable_report().test_cases
for _cls in _test_cases.values():
    for _name in [n for n in vars(_cls) if n.startswith("test_")]:
        if _name.removesuffix("_cpu") not in _selected or not _name.endswith("_cpu"):
            delattr(_cls, _name)  # not ours: not collected (rather than thousands of skips)
            continue
        _reason = skip_reason(_name.removesuffix("_cpu"))  # say why, not which pattern
        if _reason is not None:
            setattr(_cls, _name, unittest.skip(_reason)(getattr(_cls, _name)))
globals().update(_test_cases)


# --- the same cases on the matrix unit ---
@pytest.mark.parametrize("case", [
    pytest.param(c, marks=pytest.mark.skip(reason=r) if (r := skip_reason(c, MATRIX_SKIPS))
                 else ()) for c in matrix_cases()])
def test_matrix_unit(case: str) -> None:
    op = case_ops()[case]
    rows = run_matrix_case(case)
    where = {r["where"] for r in rows if r["op"] == op}
    assert where == {"device"}, f"{case}: {op} ran on {where}: {rows}"
    if op in UNROLLED:  # its steps' products ran on the matrix unit
        assert all(re.search(r"\([1-9]\d* matrix-unit products\)", r["why"])
                   for r in rows if r["op"] == op), rows


# --- the selection itself ---
def test_every_op_has_cases() -> None:
    ops = set(case_ops().values())
    assert ops == set(OPS), f"ops without node test cases: {sorted(set(OPS) - ops)}"


@pytest.mark.parametrize("skips", [SKIPS, MATRIX_SKIPS], ids=["SKIPS", "MATRIX_SKIPS"])
def test_every_skip_names_a_case(skips: dict[str, str]) -> None:
    cases = case_ops() if skips is SKIPS else matrix_cases()
    stale = [p for p in skips if not any(re.fullmatch(p, c) for c in cases)]
    assert not stale, f"skip patterns that match no selected case: {stale}"


# --- the backend API beyond the node tests ---
def _dynamic_conv() -> onnx.ModelProto:
    """x[N, 3, H, 8] -> Conv 3x3 (constant weights) -> Relu, with symbolic N and H."""
    w = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"])]
    graph = helper.make_graph(
        nodes, "dynamic", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, "H", 8])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_dynamic_shapes_compile_per_signature() -> None:
    model = _dynamic_conv()
    rep = backend.prepare(model)
    assert not rep.static and rep.programs == ()
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for shape in [(1, 3, 8, 8), (2, 3, 5, 8), (1, 3, 8, 8)]:
        x = rng.standard_normal(shape).astype(np.float32)
        (y,) = rep.run({"x": x})
        np.testing.assert_allclose(y, ref.run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)
    assert len(rep.programs) == 2  # one per input shape signature
    assert all(r["where"] == "device" for p in rep.programs for r in p.metadata["placement"])
    with pytest.raises(InputError, match="expected"):
        rep.run([np.zeros((1, 4, 8, 8), np.float32)])  # a fixed dimension contradicted


def test_run_node_and_run_model() -> None:
    x = np.array([[-1.0, 2.0], [3.0, -4.0]], np.float32)
    (y,) = backend.run_node(helper.make_node("Relu", ["x"], ["y"]), [x], opset_version=17)
    np.testing.assert_array_equal(y, np.maximum(x, 0))
    (s,) = backend.run_node(helper.make_node("Add", ["a", "a"], ["s"]), {"a": x},
                            opset_version=17)
    np.testing.assert_array_equal(s, x + x)
    t = node_cases()["test_gemm_default_vector_bias"]
    (inputs, refs), = t.data_sets
    (out,) = backend.run_model(t.model, list(inputs))
    np.testing.assert_allclose(out, refs[0], rtol=t.rtol, atol=t.atol)


def test_clear_errors() -> None:
    x = np.ones((1, 1, 4, 4), np.float32)
    assert backend.supports_device("CPU") and not backend.supports_device("CUDA")
    model = node_cases()["test_relu"].model
    with pytest.raises(ValueError, match="unsupported device 'CUDA'"):
        backend.prepare(model, "CUDA")
    with pytest.raises(TypeError, match="unknown option"):
        backend.prepare(model, opset=3)
    rep = backend.prepare(model)
    with pytest.raises(InputError, match="takes 1 input"):
        rep.run([x, x])
    with pytest.raises(InputError, match="unknown input 'z'"):
        rep.run({"z": x})
