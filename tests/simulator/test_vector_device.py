# SPDX-License-Identifier: Apache-2.0
"""Transposed convolutions (input dilation) against onnxruntime, and the device
executing each vector-unit instruction bit for bit as its kernel does."""

from __future__ import annotations

import numpy as np
import pytest
from device_bench import TINY, Bench, same_bits_nan
from onnx import helper
from vector_cases import PARAMS, inputs, ort_run

from npusim.simulator import isa, kernels
from npusim.simulator.device import ExecutionError
from npusim.simulator.kernels import ConvGeometry
from npusim.simulator.numerics import pack, quantize
from npusim.simulator.program import ProgramError, TensorDesc

F32 = np.float32


# --- conv2d with input dilation: a transposed convolution --------------------------------------

def conv_transpose_as_conv(w: np.ndarray, groups: int, stride, pads, dilation, out_pad):
    """ConvTranspose ``W [Cin, Cout/g, kh, kw]`` as the matrix unit's convolution: the input
    dilated by the stride, pads ``d*(k-1) - pb`` before and ``d*(k-1) - pe + op`` after, the
    weight flipped in both spatial axes and transposed per group to ``[Cout, Cin/g, kh, kw]``,
    stride 1, the same dilation."""
    cin, cog, kh, kw = w.shape
    wc = w.reshape(groups, cin // groups, cog, kh, kw).transpose(0, 2, 1, 3, 4)
    wc = wc.reshape(groups * cog, cin // groups, kh, kw)[:, :, ::-1, ::-1]
    eh, ew = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
    geom = ConvGeometry((kh, kw), (1, 1),
                        (eh - pads[0], ew - pads[1], eh - pads[2] + out_pad[0],
                         ew - pads[3] + out_pad[1]), tuple(dilation), groups, tuple(stride))
    # K ordered (kh, kw, c) with the channel fastest
    return np.ascontiguousarray(wc.transpose(0, 2, 3, 1).reshape(groups * cog, -1)), geom


CONV_T = [  # (cin, cout, groups, kernel, stride, pads t,l,b,r, dilation, output_padding, h, w)
    (4, 6, 1, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), (1, 1), 5, 4),
    (4, 4, 2, (2, 3), (2, 1), (0, 1, 0, 0), (1, 2), (0, 0), 3, 6),
    (3, 5, 1, (4, 4), (3, 2), (2, 1, 1, 2), (1, 1), (2, 1), 4, 4),
    (6, 3, 3, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1), (1, 0), 3, 3),
]


@pytest.mark.parametrize("case", CONV_T, ids=[str(i) for i in range(len(CONV_T))])
def test_input_dilated_conv_is_onnxruntime_conv_transpose(case):
    cin, cout, g, k, s, pads, d, op, h, w_ = case
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, cin, h, w_)).astype(F32)
    w = rng.standard_normal((cin, cout // g, *k)).astype(F32)
    bias = rng.standard_normal(cout).astype(F32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], group=g, strides=list(s),
                            pads=[pads[0], pads[1], pads[2], pads[3]], dilations=list(d),
                            output_padding=list(op))
    want = ort_run([node], {"x": x}, 4, {"w": w, "b": bias}, opset=17)
    w2, geom = conv_transpose_as_conv(w, g, s, pads, d, op)
    assert geom.output_hw(h, w_) == want.shape[2:]
    y = kernels.conv2d(x, w2, bias, geom, TINY.format("fp32"))
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


# --- the device: each instruction bit-exact with its kernel -------------------------------------

def bits(v: float) -> int:
    return isa.f32_bits(v)


@pytest.mark.parametrize("op", list(isa.AluOp))
@pytest.mark.parametrize("rev", [0, 1])
def test_device_vv_alu_broadcasts_by_div_and_mod(op, rev):
    rng = np.random.default_rng(16)
    a = (rng.standard_normal((2, 3, 4, 5)) + 2).astype(F32)
    name = op.name.lower()
    for b, div, mod, bshape in [(np.array([1.5], F32), 1, 1, (1,)),
                                (rng.standard_normal(120).astype(F32) + 3, 1, 120, a.shape),
                                (rng.standard_normal(3).astype(F32) + 3, 20, 3, (1, 3, 1, 1)),
                                (rng.standard_normal(5).astype(F32) + 3, 1, 5, (5,))]:
        bench = Bench()
        sa, sb, dst = bench.put(a), bench.put(b), bench.out(a.shape)
        (y,) = bench.run(isa.VvAlu(sa, sb, dst, a.size, op, rev, div, mod))
        bb = b.reshape(bshape)
        want = kernels.alu(name, bb, a) if rev else kernels.alu(name, a, bb)
        np.testing.assert_array_equal(y, want)


def test_device_vv_alu_refuses_an_inconsistent_broadcast():
    bench = Bench()
    sa, dst = bench.put(np.ones(12, F32)), bench.out((12,))
    with pytest.raises(ProgramError, match="multiple"):
        bench.run(isa.VvAlu(sa, sa, dst, 12, isa.AluOp.ADD, 0, 5, 1))


def test_device_unary_every_function():
    x = inputs(17, 200)
    bench = Bench()
    src = bench.put(x)
    code, want = [], []
    for fn in isa.UnaryFn:
        a, b = PARAMS.get(fn.name.lower(), (0.0, 0.0))
        if fn == isa.UnaryFn.GELU:
            a = 1.0
        code.append(isa.VUnary(src, bench.out(x.shape), x.size, fn, bits(a), bits(b)))
        want.append(kernels.unary(fn.name.lower(), x, float(F32(a)), float(F32(b))))
    for y, w in zip(bench.run(*code), want):
        np.testing.assert_array_equal(y, w)


def test_device_runs_a_sigmoid_and_its_multiply_as_one_pass(monkeypatch):
    """A sigmoid followed by the product of its input and its result (a SiLU exported as
    two ops) runs as one pass, with the two instructions' bits, whether the product goes
    to memory of its own, over the sigmoid or over the input; pairs that are not that
    (a partial overlap, another operand, a broadcast) run apart."""
    from npusim.simulator import device as device_module
    from npusim.simulator import fused as fused_passes
    calls = []
    fused = kernels.sigmoid_and_product
    monkeypatch.setattr(device_module.kernels, "sigmoid_and_product",
                        lambda *a: calls.append(1) or fused(*a))
    x = inputs(21, 5000, 8.0)
    sig = kernels.unary("sigmoid", x)
    prod = kernels.alu("mul", x, sig)
    one = np.array([1.0], F32)
    mul, n = isa.AluOp.MUL, x.size

    def sigmoid(src, dst):
        return isa.VUnary(src, dst, n, isa.UnaryFn.SIGMOID, 0, 0)

    bench = Bench()  # the product in memory of its own
    sx, s, p = bench.put(x), bench.out(x.shape), bench.out(x.shape)
    assert same_bits_nan(bench.run(sigmoid(sx, s), isa.VvAlu(sx, s, p, n, mul, 0, 1, n)),
                         [sig, prod])
    bench = Bench()  # over the sigmoid, operands the other way round
    sx, s = bench.put(x), bench.out(x.shape)
    assert same_bits_nan(bench.run(sigmoid(sx, s), isa.VvAlu(s, sx, s, n, mul, 0, 1, n)), [prod])
    bench = Bench()  # over the input (a copy of x made first)
    sx, c, s = bench.put(x), bench.out(x.shape), bench.out(x.shape)
    so = bench.put(one)
    assert same_bits_nan(bench.run(isa.VvAlu(sx, so, c, n, mul, 0, 1, 1), sigmoid(c, s),
                           isa.VvAlu(c, s, c, n, mul, 0, 1, n)), [prod, sig])
    assert len(calls) == 3
    bench = Bench()  # a product that starts one element into the sigmoid: apart
    sx, s = bench.put(x), bench.out((2 * n,))
    code = (sigmoid(sx, s), isa.VvAlu(sx, s, s + 4, n, mul, 0, 1, n))
    assert fused_passes.silu_pairs(list(code)) == {}
    (y,) = bench.run(*code)
    assert same_bits_nan([y[:1], y[1:n + 1]], [sig[:1], prod])
    assert fused_passes.silu_pairs([sigmoid(sx, s), isa.VvAlu(sx, sx, s, n, mul, 0, 1, n)]) == {}
    assert fused_passes.silu_pairs([sigmoid(sx, s), isa.VvAlu(sx, s, s, n, mul, 0, 1, 1)]) == {}
    assert len(calls) == 3


def test_device_reduce_norm_resize_pad():
    rng = np.random.default_rng(18)
    x = (rng.standard_normal((3, 8, 6)) * 2).astype(F32)
    scale, bias = rng.standard_normal(6).astype(F32), rng.standard_normal(6).astype(F32)
    cscale, cbias = rng.standard_normal(4).astype(F32), rng.standard_normal(4).astype(F32)
    bench = Bench()
    src, s, b, cs, cb = (bench.put(v) for v in (x, scale, bias, cscale, cbias))
    code, want = [], []
    for mode in isa.ReduceMode:
        code.append(isa.VReduce(src, bench.out((3, 6)), 3, 8, 6, mode))
        want.append(kernels.reduce(x, mode.name.lower()))
    eps = bits(1e-5)
    code.append(isa.VNorm(src, bench.out(x.shape), s, b, 24, 6, 0, eps))
    want.append(kernels.norm(x.reshape(24, 6), scale, bias, isa.bits_f32(eps)))
    code.append(isa.VNorm(src, bench.out(x.shape), cs, cb, 24, 6, 4, eps))
    want.append(kernels.norm(x.reshape(24, 6), cscale, cbias, isa.bits_f32(eps), 4))
    for mode, coord, nearest in [(isa.ResizeMode.NEAREST, isa.CoordMode.ASYMMETRIC,
                                  isa.NearestMode.FLOOR),
                                 (isa.ResizeMode.LINEAR, isa.CoordMode.HALF_PIXEL,
                                  isa.NearestMode.ROUND_PREFER_FLOOR),
                                 (isa.ResizeMode.NEAREST, isa.CoordMode.ALIGN_CORNERS,
                                  isa.NearestMode.ROUND_PREFER_CEIL)]:
        code.append(isa.VResize(src, bench.out((3, 13, 4)), 3, 8, 6, 13, 4, mode, coord, nearest,
                                bits(1.7), bits(0.7)))
        want.append(kernels.resize(x, (13, 4), mode.name.lower(), coord.name.lower(),
                                   nearest.name.lower(), (float(F32(1.7)), float(F32(0.7)))))
    for mode in isa.PadMode:
        code.append(isa.VPad(src, bench.out((3, 11, 9)), 3, 8, 6, 1, 2, 2, 1, mode, bits(-2.5)))
        want.append(kernels.pad2d(x, (1, 2, 2, 1), mode.name.lower(), -2.5))
    for y, w in zip(bench.run(*code), want):
        np.testing.assert_array_equal(y, w.reshape(y.shape))


def test_device_gather_and_its_index_check():
    rng = np.random.default_rng(19)
    x = rng.standard_normal((2, 5, 3)).astype(F32)
    idx = np.array([4, 0, 2, 2, 1, 4], np.int32)
    bench = Bench()
    src, table, dst = bench.put(x), bench.put(idx), bench.out((2, 6, 3))
    (y,) = bench.run(isa.VGather(src, dst, table, 2, 6, 5, 3))
    np.testing.assert_array_equal(y, kernels.gather(x, idx))
    bench = Bench()
    src, table, dst = bench.put(x), bench.put(np.array([1, 5], np.int32)), bench.out((2, 2, 3))
    with pytest.raises(ExecutionError, match="V_GATHER index 5 .*outside"):
        bench.run(isa.VGather(src, dst, table, 2, 2, 5, 3))


def test_device_move_negative_strides_and_bounds():
    rng = np.random.default_rng(20)
    x = rng.standard_normal((3, 4, 5)).astype(F32)
    view = x[::-1, 1:, ::-2]  # starts at element [2, 1, 4]
    bench = Bench()
    src, dst = bench.put(x), bench.out(view.shape)
    start = 4 * (2 * 20 + 1 * 5 + 4)
    dims = [1, 1, 1, *view.shape]
    strides = [isa.to_u32(s) for s in (0, 0, 0, -20, 5, -2)]
    (y,) = bench.run(isa.VMove(src + start, dst, *dims, *strides))
    np.testing.assert_array_equal(y, view)
    bench = Bench()
    src, dst = bench.put(x), bench.out((8,))
    with pytest.raises(ProgramError, match="outside any memory region"):
        bench.run(isa.VMove(src, dst, 1, 1, 1, 1, 1, 8, 0, 0, 0, 0, 0, isa.to_u32(-4096)))


@pytest.mark.parametrize("fmt", ["fp32", "msfp16", "msfp8"])
@pytest.mark.parametrize("case", CONV_T, ids=[str(i) for i in range(len(CONV_T))])
def test_device_transposed_conv_is_bit_exact(case, fmt):
    cin, cout, g, k, s, pads, d, op, h, w_ = case
    rng = np.random.default_rng(21)
    x = rng.standard_normal((1, cin, h, w_)).astype(F32)
    w2, geom = conv_transpose_as_conv(rng.standard_normal((cin, cout // g, *k)).astype(F32), g,
                                      s, pads, d, op)
    bias = rng.standard_normal(cout).astype(F32)
    cfg = TINY.replace(numerics=fmt)
    f = cfg.format()
    weights = w2 if f.is_fp32 else quantize(w2, f)
    blob = w2.tobytes() if f.is_fp32 else pack(weights)
    desc = TensorDesc("w", w2.shape, "float32" if f.is_fp32 else f.name, 0, len(blob))
    oh, ow = geom.output_hw(h, w_)
    bench = Bench(cfg, blob, [desc])
    src, b, dst = bench.put(x), bench.put(bias), bench.out((1, cout, oh, ow))
    t, left, bt, r = geom.pads
    (y,) = bench.run(isa.MvMul(src, dst, 0, b, 0, 1, cin, h, w_, cout, g, *k, 1, 1, t, left, bt,
                               r, *d, *s, 0, 0, 1))
    np.testing.assert_array_equal(y, kernels.conv2d(x, weights, bias, geom, f))
