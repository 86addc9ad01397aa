# SPDX-License-Identifier: Apache-2.0
"""Each pass on a graph of two or three nodes; ``verify`` after every pass."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_helpers import conv_block, make_model, rand

from npusim.compiler import passes
from npusim.compiler.frontend import to_graph
from npusim.compiler.interpret import Numerics, evaluate
from npusim.compiler.ir import IRError, Node, Op, add_node, inputs_of, node, verify
from npusim.compiler.options import CompileOptions
from npusim.compiler.pipeline import PASS_NAMES, run_passes
from npusim.simulator.numerics import BfpTensor

FP32 = CompileOptions.make("tiny", "fp32")


def ops(g) -> list[str]:
    return sorted(node(g, n).op.value for n in g if node(g, n).op not in (Op.CONST, Op.INPUT))


def test_fold_constants_evaluates_constant_of_shape_and_reshape():
    shape = np.array([2, 3], np.int64)
    m = make_model([
        helper.make_node("ConstantOfShape", ["s"], ["c"],
                         value=helper.make_tensor("v", 1, [1], [0.5])),
        helper.make_node("Add", ["x", "c"], ["y"])], {"x": [2, 3]}, {"y": [2, 3]}, {"s": shape})
    g = passes.fold_constants(to_graph(m), FP32)
    verify(g)
    c = inputs_of(g, "y")[1]
    assert node(g, c).op == Op.CONST
    np.testing.assert_array_equal(node(g, c).value, np.full((2, 3), 0.5, np.float32))


def test_remove_identities_keeps_output_names():
    m = make_model([helper.make_node("Identity", ["x"], ["i"]),
                    helper.make_node("Relu", ["i"], ["r"]),
                    helper.make_node("Dropout", ["r"], ["y"])], {"x": [4]}, {"y": [4]})
    g = passes.remove_identities(to_graph(m), FP32)
    verify(g)
    assert "i" not in g and inputs_of(g, "r") == ["x"]
    assert g.graph["outputs"] == ["y"]  # an output-naming Dropout stays as an alias


def test_fold_batchnorm_matches_unfolded():
    m = conv_block(residual=False)
    g0 = to_graph(m)
    g = passes.fold_batchnorm(passes.fold_constants(g0, FP32), FP32)
    verify(g)
    assert Op.BATCHNORM.value not in ops(g)
    assert node(g, "bn").op == Op.CONV
    x = {"x": rand(np.random.default_rng(1), 1, 8, 8, 8)}
    np.testing.assert_allclose(evaluate(g, x)["y"], evaluate(g0, x)["y"], rtol=1e-5, atol=1e-7)


def test_canonicalize_and_fusion_give_one_matrix_op_per_layer():
    g = run_passes(to_graph(conv_block()), FP32, stop_after="fuse_relu")
    names = ops(g)
    assert names.count("NpuConv") == 1 and names.count("NpuDense") == 1
    assert "Add" not in names and "Relu" not in names
    conv = node(g, "r")  # the fused node keeps the name of the last op it covers
    assert conv.op == Op.NPU_CONV and conv.attr("relu") is True
    assert len(inputs_of(g, "r")) == 4  # x, weight, bias, residual
    assert {"conv", "bn", "add", "relu"} <= set(conv.origin)


def test_fusion_preserves_fp32_results():
    m = conv_block()
    x = {"x": rand(np.random.default_rng(2), 1, 8, 8, 8)}
    ref = evaluate(to_graph(m), x)["y"]
    for name in PASS_NAMES:
        g = run_passes(to_graph(m), FP32, stop_after=name)
        np.testing.assert_allclose(evaluate(g, x)["y"], ref, rtol=1e-5, atol=1e-7,
                                   err_msg=f"after {name}")


def test_relu_not_fused_when_producer_has_other_users():
    m = make_model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                    helper.make_node("Relu", ["h"], ["r"]),
                    helper.make_node("Add", ["r", "h"], ["y"])],
                   {"x": [1, 4]}, {"y": [1, 4]}, {"w": np.eye(4, dtype=np.float32)})
    g = run_passes(to_graph(m), FP32, stop_after="fuse_relu")
    assert node(g, "r").op == Op.RELU and node(g, "h").op == Op.NPU_DENSE


def test_quantize_weights_uses_golden_quantizer():
    opts = CompileOptions.make("tiny", "msfp16")
    g = run_passes(to_graph(conv_block()), opts)
    quantized = [node(g, n).value for n in g if isinstance(node(g, n).value, BfpTensor)]
    assert len(quantized) == 2 and all(q.fmt.name == "msfp16" for q in quantized)
    x = {"x": rand(np.random.default_rng(3), 1, 8, 8, 8)}
    y = evaluate(g, x, Numerics(opts.format))["y"]
    ref = evaluate(to_graph(conv_block()), x)["y"]
    assert 0 < np.abs(y - ref).max() < 0.05  # quantized, but close


def test_stop_after_unknown_pass_is_an_error():
    with pytest.raises(ValueError, match="unknown pass"):
        run_passes(to_graph(conv_block()), FP32, stop_after="nope")


def test_verify_catches_broken_invariants():
    m = conv_block()
    g = to_graph(m)
    g.graph["outputs"].append("missing")
    with pytest.raises(IRError, match="missing"):
        verify(g)
    g = to_graph(m)
    add_node(g, "loop", Node(Op.RELU, (1,)), ["y"])
    g.add_edge("loop", "y", index=9)
    with pytest.raises(IRError):
        verify(g)


def test_standalone_batchnorm_runs_as_channel_scale_and_shift():
    rng = np.random.default_rng(4)
    c = 4
    w = {"s": rng.uniform(0.5, 1.5, c).astype(np.float32), "b": rand(rng, c),
         "m": rand(rng, c), "v": rng.uniform(0.5, 1.5, c).astype(np.float32)}
    m = make_model([helper.make_node("Relu", ["x"], ["r"]),
                    helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"])],
                   {"x": [1, c, 5, 5]}, {"y": [1, c, 5, 5]}, w)
    g = run_passes(to_graph(m), FP32)
    assert node(g, "y").op == Op.ADD and node(g, inputs_of(g, "y")[0]).op == Op.MUL
    x = {"x": rand(rng, 1, c, 5, 5)}
    np.testing.assert_allclose(evaluate(g, x)["y"], evaluate(to_graph(m), x)["y"], rtol=1e-5,
                               atol=1e-6)


def _affine_model(rng, c: int, after_conv: bool, mul_shape=None):
    """Relu -> [Conv ->] BatchNormalization -> Mul(k) -> Add(a) -> Relu, as Caffe2 exports
    a BN with its scale layer; ``mul_shape`` gives the Mul's constant another shape."""
    w = {"s": rng.uniform(0.5, 1.5, c).astype(np.float32), "b": rand(rng, c),
         "m": rand(rng, c), "v": rng.uniform(0.5, 1.5, c).astype(np.float32),
         "k": rng.uniform(0.5, 2.0, mul_shape or (c, 1, 1)).astype(np.float32),
         "a": rand(rng, 1, c, 1, 1), "cw": rand(rng, c, c, 3, 3)}
    head = ([helper.make_node("Relu", ["x"], ["r0"]),
             helper.make_node("Conv", ["r0", "cw"], ["r"], pads=[1, 1, 1, 1])] if after_conv
            else [helper.make_node("Relu", ["x"], ["r"])])
    return make_model(head + [
        helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["bn"]),
        helper.make_node("Mul", ["bn", "k"], ["scaled"]),
        helper.make_node("Add", ["a", "scaled"], ["shifted"]),
        helper.make_node("Relu", ["shifted"], ["y"])],
        {"x": [1, c, 5, 5]}, {"y": [1, c, 5, 5]}, w)


@pytest.mark.parametrize("after_conv", [False, True], ids=["pre-activation", "after-conv"])
def test_per_channel_mul_and_add_fold_into_the_batchnorm(after_conv: bool):
    """BN then a per-channel Mul and Add (constant on either side): one BN, so one scale
    and shift on the vector unit, or nothing at all once the BN folds into its Conv."""
    rng = np.random.default_rng(5)
    m = _affine_model(rng, 4, after_conv)
    g = run_passes(to_graph(m), FP32)
    names = ops(g)
    if after_conv:
        assert "Mul" not in names and "Add" not in names and names.count("NpuConv") == 1
    else:
        assert names.count("Mul") == 1 and names.count("Add") == 1
    x = {"x": rand(rng, 1, 4, 5, 5)}
    np.testing.assert_allclose(evaluate(g, x)["y"], evaluate(to_graph(m), x)["y"], rtol=1e-5,
                               atol=1e-6)


def test_mul_that_is_not_per_channel_stays():
    """A constant over the whole plane is not a channel scale: the Mul stays."""
    rng = np.random.default_rng(6)
    m = _affine_model(rng, 4, False, mul_shape=(4, 5, 5))
    g = run_passes(to_graph(m), FP32, stop_after="fold_batchnorm")
    assert node(g, "scaled").op == Op.MUL and node(g, "bn").op == Op.BATCHNORM
