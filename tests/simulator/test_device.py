# SPDX-License-Identifier: Apache-2.0
"""The simulated device against the golden graph evaluation, op by op, every format."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper
from onnx_helpers import conv_block, make_model, rand

from npusim.compiler import UnsupportedOpError, compile_full
from npusim.compiler.interpret import Numerics, evaluate
from npusim.runtime import Session
from npusim.simulator.device import InputError
from npusim.simulator.numerics import FORMAT_NAMES, get_format, packed_size
from npusim.simulator.program import Program


def _models():
    rng = np.random.default_rng(7)
    c = 4
    bn = {"s": rng.uniform(0.5, 1.5, c).astype(np.float32), "b": rand(rng, c),
          "m": rand(rng, c), "v": rng.uniform(0.5, 1.5, c).astype(np.float32)}
    yield "conv_block", conv_block()
    yield "strided_grouped_dilated_conv", make_model(
        [helper.make_node("Conv", ["x", "w"], ["y"], strides=[2, 1], pads=[1, 0, 2, 1],
                          dilations=[1, 2], group=2)],
        {"x": [1, 4, 9, 9]}, {"y": [1, 6, 5, 6]}, {"w": rand(rng, 6, 2, 3, 3)})
    yield "standalone_batchnorm", make_model(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("BatchNormalization", ["r", "s", "b", "m", "v"], ["y"])],
        {"x": [1, c, 5, 5]}, {"y": [1, c, 5, 5]}, bn)
    yield "pools", make_model(
        [helper.make_node("AveragePool", ["x"], ["a"], kernel_shape=[3, 3], strides=[2, 2],
                          pads=[1, 1, 1, 1], count_include_pad=1),
         helper.make_node("MaxPool", ["a"], ["m"], kernel_shape=[2, 2], strides=[2, 2],
                          ceil_mode=1),
         helper.make_node("AveragePool", ["m"], ["y"], kernel_shape=[2, 2], pads=[0, 0, 1, 1])],
        {"x": [1, 3, 11, 11]}, {"y": [1, 3, 3, 3]})
    yield "matmul_add_sum_relu", make_model(
        [helper.make_node("MatMul", ["x", "w"], ["h"]),
         helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("Sum", ["h", "r", "x"], ["s"]),
         helper.make_node("Relu", ["s"], ["q"]),
         helper.make_node("Reshape", ["q", "shape"], ["t"]),
         helper.make_node("Softmax", ["t"], ["y"], axis=-1)],
        {"x": [2, 3, 40]}, {"y": [6, 40]},
        {"w": rand(rng, 40, 40, scale=0.2), "shape": np.array([6, 40], np.int64)})


    yield "no_kernel_on_host", make_model(
        [helper.make_node("Cos", ["x"], ["a"], name="cosine"),
         helper.make_node("Relu", ["a"], ["y"])],
        {"x": [1, 3, 4, 4]}, {"y": [1, 3, 4, 4]})
    yield "activation_matmul_on_host", make_model(
        [helper.make_node("Gemm", ["x", "z"], ["m"], name="act_matmul"),
         helper.make_node("Gemm", ["m", "w"], ["y"])],
        {"x": [2, 3], "z": [3, 5]}, {"y": [2, 4]}, {"w": rand(rng, 5, 4)})
    yield "vector_unit_ops", make_model(
        [helper.make_node("Mul", ["x", "scale"], ["m"]),
         helper.make_node("Sub", ["m", "half"], ["s"]),
         helper.make_node("Div", ["s", "x"], ["d"]),
         helper.make_node("Sigmoid", ["d"], ["sg"]),
         helper.make_node("Tanh", ["x"], ["th"]),
         helper.make_node("LeakyRelu", ["x"], ["lr"], alpha=0.2),
         helper.make_node("Clip", ["x", "lo", "hi"], ["cl"]),
         helper.make_node("Concat", ["sg", "th", "lr", "cl"], ["cat"], axis=1),
         helper.make_node("Concat", ["cat", "cat"], ["cat2"], axis=2),
         helper.make_node("GlobalMaxPool", ["cat2"], ["gm"]),
         helper.make_node("Softmax", ["gm"], ["y"], axis=1)],
        {"x": [1, 3, 4, 5]}, {"y": [1, 12, 1, 1]},
        {"scale": rand(rng, 3, 1, 1), "half": np.array([0.5], np.float32),
         "lo": np.array(-0.5, np.float32), "hi": np.array(0.7, np.float32)})
    yield "host_ops_with_int_shapes", make_model(
        [helper.make_node("Shape", ["x"], ["s"]),
         helper.make_node("Tanh", ["x"], ["t"]),
         helper.make_node("Reshape", ["t", "s"], ["r"]),
         helper.make_node("Transpose", ["r"], ["tr"], perm=[0, 2, 3, 1]),
         helper.make_node("Sigmoid", ["tr"], ["y"])],
        {"x": [1, 2, 3, 4]}, {"y": [1, 3, 4, 2]})


MODELS = dict(_models())


@pytest.mark.parametrize("fmt", FORMAT_NAMES)
@pytest.mark.parametrize("name", list(MODELS))
def test_program_matches_golden_and_onnxruntime(name, fmt):
    model = MODELS[name]
    rng = np.random.default_rng(11)
    feeds = {i.name: rand(rng, *[d.dim_value for d in i.type.tensor_type.shape.dim])
             for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}}
    device = "tiny" if fmt != "msfp8" else "brainwave-s10"
    compiled = compile_full(model, device=device, numerics=fmt)
    sess = Session(Program.from_bytes(compiled.program.to_bytes()))
    outs = sess.run(None, feeds)
    gold = evaluate(compiled.graph, feeds, Numerics(compiled.options.format))
    for out, ref in zip(outs, gold.values()):
        assert np.array_equal(out, ref), f"{name}/{fmt}: simulator != golden"
    if fmt == "fp32":
        want = ort.InferenceSession(model.SerializeToString(),
                                    providers=["CPUExecutionProvider"]).run(None, feeds)
        for out, ref in zip(outs, want):
            np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("fmt", ["fp32", "msfp16", "mxint8"])
@pytest.mark.parametrize("name", ["conv_block", "strided_grouped_dilated_conv",
                                  "standalone_batchnorm", "pools", "vector_unit_ops"])
def test_work_cut_between_threads_gives_the_same_bits(name, fmt, monkeypatch):
    """Every instruction cut between the threads, however small (and every pool in the
    numba kernel), gives the bits of the same program run with each instruction whole."""
    from npusim.simulator import conv_shares, kernels
    from npusim.simulator import device as device_mod

    model = MODELS[name]
    rng = np.random.default_rng(12)
    feeds = {i.name: rand(rng, *[d.dim_value for d in i.type.tensor_type.shape.dim])
             for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}}
    sess = Session(compile_full(model, device="tiny", numerics=fmt).program)
    whole = sess.run(None, feeds)
    monkeypatch.setattr(conv_shares, "SHARE_MACS", dict.fromkeys(conv_shares.SHARE_MACS, 1))
    monkeypatch.setattr(device_mod, "ELEMENTWISE_GRAIN", 1)
    monkeypatch.setattr(kernels, "POOL_COLUMNS", 1)
    monkeypatch.setattr(kernels, "POOL_OUTPUTS", 0)
    for a, b in zip(sess.run(None, feeds), whole, strict=True):
        assert np.array_equal(a.view(np.int32), b.view(np.int32)), (name, fmt)


def test_mx_programs_carry_their_codes_and_differ_by_format():
    """Each MX minifloat program packs its weights at its element's bits (the bytes the
    timing model streams) and computes in its own format."""
    feeds = {"x": rand(np.random.default_rng(4), 1, 8, 8, 8)}
    outs, sizes = {}, {}
    for fmt in [n for n in FORMAT_NAMES if get_format(n).is_minifloat]:
        prog = compile_full(conv_block(), device="tiny", numerics=fmt).program
        assert prog.weight_tensors
        for t in prog.weight_tensors:
            assert t.dtype == fmt and t.nbytes == packed_size(t.shape, get_format(fmt))
        sizes[fmt] = sum(t.nbytes for t in prog.weight_tensors)
        (outs[fmt],) = Session(prog).run(None, feeds)
    assert sizes["mxfp4_e2m1"] < sizes["mxfp6_e3m2"] == sizes["mxfp6_e2m3"] \
        < sizes["mxfp8_e4m3"] == sizes["mxfp8_e5m2"]
    (ref,) = Session(compile_full(conv_block(), device="tiny", numerics="fp32").program).run(
        None, feeds)
    assert all(not np.array_equal(o, ref) for o in outs.values())
    # E5M2 and E3M2 keep the same 3 significant bits: on a small model they may agree
    assert len({o.tobytes() for o in outs.values()}) >= 4


def test_stochastic_rounding_program_matches_golden():
    model = conv_block()
    feeds = {"x": rand(np.random.default_rng(3), 1, 8, 8, 8)}
    compiled = compile_full(model, device="tiny", numerics="msfp12", rounding="stochastic",
                            seed=5)
    (out,) = Session(compiled.program).run(None, feeds)
    ctx = Numerics(compiled.options.format, compiled.options.rounding, 5)
    assert np.array_equal(out, evaluate(compiled.graph, feeds, ctx)["y"])
    (rne,) = Session(compile_full(model, device="tiny", numerics="msfp12").program).run(
        None, feeds)
    assert not np.array_equal(out, rne)


@pytest.mark.parametrize("fmt", ["mxfp4_e2m1", "mxint8"])
def test_nearest_away_program_matches_golden(fmt):
    """Ties away from zero (microxcaling's default) through the program file's rounding."""
    model = conv_block()
    feeds = {"x": np.round(rand(np.random.default_rng(3), 1, 8, 8, 8) * 8) / 8}  # ties
    compiled = compile_full(model, device="tiny", numerics=fmt, rounding="nearest_away")
    prog = Program.from_bytes(compiled.program.to_bytes())
    assert prog.metadata["rounding"] == "nearest_away"
    (out,) = Session(prog).run(None, feeds)
    ctx = Numerics(compiled.options.format, compiled.options.rounding, 0)
    assert np.array_equal(out, evaluate(compiled.graph, feeds, ctx)["y"])
    if fmt == "mxfp4_e2m1":  # eighths are ties on E2M1's grid, not on INT8's
        (rne,) = Session(compile_full(model, device="tiny", numerics=fmt).program).run(
            None, feeds)
        assert not np.array_equal(out, rne)


def test_every_layer_has_cycles_and_the_total_adds_up():
    prog = compile_full(conv_block(), device="tiny").program
    sess = Session(prog)
    sess.run(None, {"x": np.ones((1, 8, 8, 8), np.float32)})
    st = sess.last_stats
    assert st.cycles == sum(layer.cycles for layer in st.layers)
    busy = {s.layer for s in st.timeline}
    assert all(k in busy for k, layer in enumerate(st.layers) if layer.unit != "control")
    assert st.cycles == max(s.end for s in st.timeline)
    assert st.latency_us == pytest.approx(st.cycles / 100.0)


def test_requests_do_not_share_data():
    sess = Session(compile_full(conv_block(), device="tiny").program)
    rng = np.random.default_rng(0)
    a, b = rand(rng, 1, 8, 8, 8), rand(rng, 1, 8, 8, 8)
    (ya,) = sess.run(None, {"x": a})
    kept = ya.copy()
    sess.run(None, {"x": b})  # in the arena the run before left (it is zeroed again)
    sess.run(None, {"x": np.stack([b, a])[:, 0]})  # another batch size: a new arena
    (ya2,) = sess.run(None, {"x": a})
    assert np.array_equal(ya, ya2)
    assert np.array_equal(ya, kept)  # an output is the caller's, not a view of the arena


def test_bad_inputs_are_named():
    sess = Session(compile_full(conv_block(), device="tiny").program)
    with pytest.raises(InputError, match="missing input 'x'"):
        sess.run(None, {})
    with pytest.raises(InputError, match=r"shape \[1, 8, 8\]"):
        sess.run(None, {"x": np.zeros((1, 8, 8), np.float32)})
    with pytest.raises(InputError, match="dtype"):
        sess.run(None, {"x": np.full((1, 8, 8, 8), "a")})
    with pytest.raises(InputError, match="unknown output"):
        sess.run(["nope"], {"x": np.zeros((1, 8, 8, 8), np.float32)})


def test_vector_unit_ops_all_run_on_device():
    prog = compile_full(MODELS["vector_unit_ops"], device="tiny").program
    assert not prog.host_ops
    assert {r["where"] for r in prog.metadata["placement"]} == {"device"}


def test_host_forms_are_refused_by_name_with_strict():
    for model, name in ((MODELS["no_kernel_on_host"], "cosine"),
                        (MODELS["activation_matmul_on_host"], "act_matmul")):
        with pytest.raises(UnsupportedOpError, match=name):
            compile_full(model, device="tiny", strict=True)
        prog = compile_full(model, device="tiny").program
        assert [h.op for h in prog.host_ops] and any(
            r["where"] == "host" and r["node"] == name for r in prog.metadata["placement"])


@pytest.mark.parametrize("fmt", ["fp32", "msfp16", "msfp8"])
@pytest.mark.parametrize("name", list(MODELS))
def test_batch_equals_one_image_at_a_time(name, fmt):
    """A batch runs each instruction once over all images; every output is bit for bit
    the one-by-one result, in both batch layouts, and the stats are one image's."""
    model = MODELS[name]
    device = "tiny" if fmt != "msfp8" else "brainwave-s10"
    sess = Session(compile_full(model, device=device, numerics=fmt).program)
    rng = np.random.default_rng(5)
    images = [{t.name: rand(rng, *t.shape) for t in sess.get_inputs()} for _ in range(3)]
    one_by_one = [sess.run(None, f) for f in images]
    single_stats = sess.last_stats
    stacked = {k: np.stack([f[k] for f in images]) for k in images[0]}
    batch = sess.run(None, stacked)
    assert sess.last_stats.cycles == single_stats.cycles
    for k, out in enumerate(batch):
        assert out.shape == (3, *one_by_one[0][k].shape)
        assert np.array_equal(out, np.stack([o[k] for o in one_by_one]), equal_nan=True)
    if all(t.shape[0] == 1 for t in sess.get_inputs()):  # onnxruntime's layout: N for 1
        lead = sess.run(None, {k: v.reshape(3, *v.shape[2:]) for k, v in stacked.items()})
        for k, out in enumerate(lead):
            want = np.stack([o[k] for o in one_by_one])
            if want.shape[1] == 1:
                want = want.reshape(3, *want.shape[2:])
            assert np.array_equal(out, want, equal_nan=True)


def test_batch_inputs_must_agree():
    sess = Session(compile_full(MODELS["activation_matmul_on_host"], device="tiny").program)
    x, z = np.ones((3, 2, 3), np.float32), np.ones((2, 3, 5), np.float32)
    with pytest.raises(InputError, match="batch"):
        sess.run(None, {"x": x, "z": z})
    with pytest.raises(InputError, match="same leading"):
        sess.device.run_batch({"x": x, "z": z})


@pytest.mark.parametrize("fmt", ["fp32", "msfp16", "msfp8"])
def test_clip_after_a_matrix_op_is_its_epilogue(fmt):
    """Conv -> Clip(0, 6) and Gemm -> Clip run as one MV_MUL each (no vector pass), with
    the golden result and onnxruntime's."""
    rng = np.random.default_rng(3)
    model = make_model(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Clip", ["c", "lo", "hi"], ["r6"]),
         helper.make_node("Flatten", ["r6"], ["f"]),
         helper.make_node("Gemm", ["f", "fc"], ["g"], transB=1),
         helper.make_node("Clip", ["g", "lo2", "hi2"], ["y"])],
        {"x": [1, 4, 6, 6]}, {"y": [1, 5]},
        {"w": rand(rng, 8, 4, 3, 3), "b": rand(rng, 8), "fc": rand(rng, 5, 8 * 36, scale=0.1),
         "lo": np.array(0.0, np.float32), "hi": np.array(6.0, np.float32),
         "lo2": np.array(-0.5, np.float32), "hi2": np.array(0.25, np.float32)})
    compiled = compile_full(model, device="tiny" if fmt != "msfp8" else "brainwave-s10",
                            numerics=fmt)
    ops = [type(i).__name__ for i in compiled.program.instructions]
    assert ops.count("MvMul") == 2 and "VUnary" not in ops
    x = {"x": rand(rng, 1, 4, 6, 6) * 4}
    (out,) = Session(Program.from_bytes(compiled.program.to_bytes())).run(None, x)
    gold = evaluate(compiled.graph, x, Numerics(compiled.options.format))
    assert np.array_equal(out, next(iter(gold.values())))
    assert out.min() >= -0.5 and out.max() <= 0.25
    if fmt == "fp32":
        ref = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"]).run(None, x)[0]
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
