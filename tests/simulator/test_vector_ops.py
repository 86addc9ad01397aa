# SPDX-License-Identifier: Apache-2.0
"""The vector-unit kernels against float64 references and onnxruntime (the device
executing them: ``test_vector_device.py``)."""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from onnx import helper
from vector_cases import PARAMS, SELU_ALPHA, SELU_GAMMA, inputs, ort_run

from npusim.simulator import _fast, isa, kernels, vector
from npusim.simulator.config import load_device
from npusim.simulator.vector import unary_reference

F32 = np.float32
TINY = load_device("tiny")


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in fp32 units in the last place (finite values)."""
    def ordered(x):
        i = np.asarray(x, F32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return np.abs(ordered(a) - ordered(b))


# --- V_UNARY ------------------------------------------------------------------------------



def _pow(x: float, a: float) -> float:
    try:
        return math.pow(x, a)
    except ValueError:  # a negative base, a fractional exponent
        return math.nan
    except OverflowError:
        return math.inf


def _reference(fn: str, x: float, a: float, b: float) -> float:
    """Scalar float64 reference from the ``math`` module, written independently."""
    def sig(v):
        return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
    if math.isnan(x):
        return math.nan
    inf = math.isinf(x)
    table = {
        "sigmoid": lambda: sig(x),
        "tanh": lambda: math.tanh(x),
        "leaky_relu": lambda: x if x >= 0 else F32(a) * F32(x),
        "clip": lambda: min(max(x, F32(a)), F32(b)),
        "hard_sigmoid": lambda: max(0.0, min(1.0, a * x + b)),
        "hard_swish": lambda: x * max(0.0, min(1.0, x / 6.0 + 0.5)),
        "exp": lambda: math.exp(x) if x < 710 else math.inf,
        "log": lambda: (math.log(x) if x > 0 else -math.inf if x == 0 else math.nan),
        "sqrt": lambda: math.sqrt(x) if x >= 0 else math.nan,
        "reciprocal": lambda: (1.0 / x if x != 0 else math.copysign(math.inf, x)),
        "neg": lambda: -x,
        "abs": lambda: abs(x),
        "erf": lambda: math.erf(x),
        "gelu": lambda: (math.nan if x == -math.inf else
                         0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))),
        "pow": lambda: _pow(x, a),
        "elu": lambda: x if x > 0 else a * math.expm1(x),
        "softplus": lambda: max(x, 0.0) + math.log1p(math.exp(-abs(x))),
        "silu": lambda: math.nan if x == -math.inf else x * sig(x),
        "selu": lambda: b * (x if x > 0 else a * math.expm1(x)),
        "softsign": lambda: math.nan if inf else x / (1.0 + abs(x)),
        "floor": lambda: math.floor(x) if not inf else x,
        "ceil": lambda: math.ceil(x) if not inf else x,
        "round": lambda: round(x) if not inf else x,  # Python rounds half to even
        "sign": lambda: (x > 0) - (x < 0),
    }
    if fn == "hard_swish" and x == -math.inf:
        return math.nan
    return float(table[fn]())


def test_every_unary_function_has_a_kernel():
    assert sorted(f.name.lower() for f in isa.UnaryFn) == sorted(kernels.UNARY_FUNCTIONS)


@pytest.mark.parametrize("fn", [f.name.lower() for f in isa.UnaryFn])
def test_unary_matches_a_float64_reference(fn):
    x = inputs(1)
    a, b = PARAMS.get(fn, (0.0, 0.0))
    a32, b32 = float(F32(a)), float(F32(b))  # the instruction carries fp32 attributes
    y = kernels.unary(fn, x, a32, b32)
    assert y.dtype == F32 and y.shape == x.shape
    with np.errstate(all="ignore"):
        ref = np.array([_reference(fn, float(v), a32, b32) for v in x]).astype(F32)
    assert np.array_equal(np.isnan(y), np.isnan(ref)), fn
    fin = ~np.isnan(ref)
    # rounded once from float64: at most one ulp from an independent float64 formula
    assert ulps(y[fin], ref[fin]).max() <= 1, fn


@pytest.mark.parametrize("fn,a,b", [("hard_sigmoid", 0.25, 0.4), ("hard_sigmoid", 0.2, 0.5),
                                     ("hard_sigmoid", -1.5, -0.0), ("hard_swish", 0.0, 0.0),
                                     ("erf", 0.0, 0.0), ("gelu", 0.0, 0.0)])
@pytest.mark.parametrize("n", [1, 7, 16, 1000, 3001, 70001])
def test_one_pass_unary_is_the_numpy_formula_bit_for_bit(fn, a, b, n):
    """The numba kernels give the numpy formulas' fp32 bits, signed zeros and NaN included,
    on arrays of every length (numpy's vector loops and their tails)."""
    x = inputs(n, n, 8.0)
    x[::5] = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 3.0, -3.0, 1.6, 2.0, -2.0],
                      F32)[np.arange(len(x[::5])) % 10]
    a32, b32 = float(F32(a)), float(F32(b))
    got, ref = kernels.unary(fn, x, a32, b32), unary_reference(fn, x, a32, b32)
    assert got.dtype == ref.dtype == F32
    assert np.array_equal(got.view(np.int32), ref.view(np.int32)) or (
        np.array_equal(np.isnan(got), np.isnan(ref))
        and np.array_equal(got[~np.isnan(ref)].view(np.int32),
                           ref[~np.isnan(ref)].view(np.int32)))


@numba.njit
def _sixths(x, out):  # pragma: no cover - compiled
    for k in range(x.size):
        out[k] = _fast._sixth(np.float64(x[k]))


def test_the_swish_divides_by_six_exactly_without_a_division():
    """``_fast._sixth`` (a product by 1/6 corrected by its exact remainder) is ``x / 6.0``
    in float64 on every 257th float32 of [-6, 6] (checked once on all of them); the
    product alone differs on about a third of these."""
    bits = np.arange(0, F32(6.0).view(np.int32) + 1, 257, dtype=np.int32)
    x = np.concatenate([bits.view(F32), -bits.view(F32)])
    got = np.empty(x.size, np.float64)
    _sixths(x, got)
    assert np.array_equal(got, x.astype(np.float64) / 6.0)
    assert (x.astype(np.float64) * (1.0 / 6.0) != x.astype(np.float64) / 6.0).mean() > 0.2


def test_hard_swish_is_the_numpy_formula_on_a_dense_sample_of_float32():
    """The swish's ``x / 6`` is a product corrected by a fused multiply-add (equal to the
    division on every float32, checked over all of them once): here on every 4099th bit
    pattern (a million values, every exponent) and every float32 within 64 ulps of the
    points where the hard swish bends (+-3) or its product is exact (+-6, 0)."""
    bits = np.arange(0, 1 << 32, 4099, dtype=np.uint64).astype(np.uint32)
    near = [np.nextafter(F32(v), F32(np.inf if k > 0 else -np.inf))
            for v in (3.0, -3.0, 6.0, -6.0, 1.5, -1.5) for k in (1, -1)]
    x = np.concatenate([bits.view(F32), np.array(near, F32)])
    for v in (3.0, -3.0, 6.0, -6.0, 0.0):
        start = F32(v).view(np.int32)
        x = np.concatenate([x, np.arange(start - 64, start + 64, dtype=np.int32).view(F32)])
    with np.errstate(all="ignore"):
        ref = unary_reference("hard_swish", x, 0.0, 0.0)
    got = kernels.unary("hard_swish", x, 0.0, 0.0)
    fin = ~np.isnan(ref)
    assert np.array_equal(np.isnan(got), ~fin)
    assert np.array_equal(got[fin].view(np.int32), ref[fin].view(np.int32))


@pytest.mark.parametrize("fn", [f.name.lower() for f in isa.UnaryFn])
def test_a_large_tensor_in_pieces_is_the_whole_formula_bit_for_bit(fn, monkeypatch):
    """A tensor past ``UNARY_CHUNK`` runs its formula a piece at a time (the last piece
    short): the same bits as the formula on the whole, into a new array, in place, or
    into another."""
    monkeypatch.setattr(vector, "UNARY_CHUNK", 1000)
    x = inputs(3, 2501 - 21, 8.0).reshape(41, 61)  # 21 special values follow
    x.reshape(-1)[::7] = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -88.0],
                                  F32)[np.arange(len(x.reshape(-1)[::7])) % 7]
    a, b = PARAMS.get(fn, (0.0, 0.0))
    a32, b32 = float(F32(a)), float(F32(b))
    ref = unary_reference(fn, x, a32, b32)
    into, inplace = np.empty_like(x), x.copy()
    for got in (kernels.unary(fn, x, a32, b32), kernels.unary(fn, x, a32, b32, into),
                kernels.unary(fn, inplace, a32, b32, inplace)):
        assert got.shape == ref.shape and got.dtype == F32
        assert _same_bits(got, ref), fn
    assert _same_bits(into, ref) and _same_bits(inplace, ref)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bits where ``b`` is a number, NaN where it is NaN."""
    nan = np.isnan(b)
    return np.array_equal(np.isnan(a), nan) and np.array_equal(a[~nan].view(np.int32),
                                                               b[~nan].view(np.int32))


@pytest.mark.parametrize("scale", [0.02, 1.0, 30.0, 1000.0])
@pytest.mark.parametrize("margin", [None, 0.25])
def test_sigmoid_kernel_is_the_formula_bit_for_bit(scale, margin, monkeypatch):
    """The sigmoid's own float64 exp gives numpy's formula's bits on 300,000 values of
    every magnitude (past the exp's range, not finite, subnormal); with a wide margin every
    element takes the formula's path, and still gives them."""
    from npusim.simulator import _sigmoid
    if margin is not None:
        monkeypatch.setattr(_sigmoid, "SIGMOID_MARGIN", margin)
    x = inputs(5, 300_000, scale)
    x[::997] = 1e-40
    ref = unary_reference("sigmoid", x)
    assert _same_bits(kernels.unary("sigmoid", x), ref)
    into, inplace = np.empty(3001, F32), x[:3001].copy()
    kernels.unary("sigmoid", x[:3001], 0.0, 0.0, into)
    kernels.unary("sigmoid", inplace, 0.0, 0.0, inplace)
    assert _same_bits(into, ref[:3001]) and _same_bits(inplace, ref[:3001])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 4099, 70_001])
@pytest.mark.parametrize("margin", [None, 0.25])
def test_sigmoid_with_its_product_is_the_two_fp32_steps(n, margin, monkeypatch):
    """The SiLU pass (the sigmoid and ``x * sigmoid(x)`` at once) gives the two fp32 steps'
    bits, the product written into a new array, into ``x`` or into the sigmoid's own
    output, at every length around the kernel's 8-element vectors, with every element
    through the formula too."""
    from npusim.simulator import _sigmoid
    if margin is not None:
        monkeypatch.setattr(_sigmoid, "SIGMOID_MARGIN", margin)
    x = np.roll(inputs(11, n, 8.0), 21)[:n]  # the special values first
    sig = unary_reference("sigmoid", x)
    prod = kernels.alu("mul", x, sig)

    def ref(v):
        return unary_reference("sigmoid", v)

    s, p = np.empty_like(x), np.empty_like(x)
    _sigmoid.sigmoid(x, s, ref, product=p)
    assert _same_bits(s, sig) and _same_bits(p, prod)
    xi, s = x.copy(), np.empty_like(x)  # the product over x
    _sigmoid.sigmoid(xi, s, ref, product=xi)
    assert _same_bits(s, sig) and _same_bits(xi, prod)
    s = np.empty_like(x)  # over the sigmoid
    _sigmoid.sigmoid(x, s, ref, product=s)
    assert _same_bits(s, prod)


def test_gelu_tanh_approximation():
    x = inputs(2)
    with np.errstate(all="ignore"):
        z = x.astype(np.float64)
        ref = 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))
    y = kernels.unary("gelu", x, 1.0)
    np.testing.assert_array_equal(y, ref.astype(F32))
    with pytest.raises(ValueError, match="alpha"):
        kernels.unary("gelu", x, 0.5)


ORT_UNARY = [  # (fn, ONNX op, attributes, constant second input, opset)
    ("sigmoid", "Sigmoid", {}, None, 19), ("tanh", "Tanh", {}, None, 19),
    ("leaky_relu", "LeakyRelu", {"alpha": 0.1}, None, 19),
    ("hard_sigmoid", "HardSigmoid", {"alpha": 0.25, "beta": 0.4}, None, 19),
    ("hard_swish", "HardSwish", {}, None, 19), ("exp", "Exp", {}, None, 19),
    ("log", "Log", {}, None, 19), ("sqrt", "Sqrt", {}, None, 19),
    ("reciprocal", "Reciprocal", {}, None, 19), ("neg", "Neg", {}, None, 19),
    ("abs", "Abs", {}, None, 19), ("erf", "Erf", {}, None, 19),
    ("gelu", "Gelu", {}, None, 20), ("pow", "Pow", {}, 2.5, 19), ("pow", "Pow", {}, 3.0, 19),
    ("elu", "Elu", {"alpha": 0.7}, None, 19), ("softplus", "Softplus", {}, None, 19),
    ("selu", "Selu", {"alpha": SELU_ALPHA, "gamma": SELU_GAMMA}, None, 19),
    ("softsign", "Softsign", {}, None, 19), ("floor", "Floor", {}, None, 19),
    ("ceil", "Ceil", {}, None, 19), ("round", "Round", {}, None, 19),
    ("sign", "Sign", {}, None, 19)]


@pytest.mark.parametrize("fn,op,attrs,exponent,opset", ORT_UNARY,
                         ids=[f"{c[1]}{c[3] or ''}" for c in ORT_UNARY])
def test_unary_matches_onnxruntime(fn, op, attrs, exponent, opset):
    x = inputs(3)
    consts = {"e": np.array(exponent, F32)} if exponent is not None else None
    node = helper.make_node(op, ["x", "e"] if consts else ["x"], ["y"], **attrs)
    want = ort_run([node], {"x": x}, 1, consts, opset)
    a = exponent if exponent is not None else attrs.get("alpha", 0.0)
    b = attrs.get("beta", attrs.get("gamma", 0.0))
    y = kernels.unary(fn, x, float(F32(a)), float(F32(b)))
    assert np.array_equal(np.isnan(y), np.isnan(want)), op  # NaN and inf behave alike
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-7, equal_nan=True)


def test_gelu_tanh_matches_onnxruntime_to_its_fp32_cancellation():
    # ORT forms 1 + tanh(...) in fp32: for x < -2 the sum cancels and ORT keeps ~1e-7
    # absolute accuracy only; the kernel is the float64 value rounded once (checked above)
    x = inputs(4)
    want = ort_run([helper.make_node("Gelu", ["x"], ["y"], approximate="tanh")], {"x": x}, 1,
                   opset=20)
    y = kernels.unary("gelu", x, 1.0)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6, equal_nan=True)


def test_clip_and_silu_against_composed_onnx():
    x = inputs(5)
    lo, hi = np.array(-0.7, F32), np.array(1.3, F32)
    want = ort_run([helper.make_node("Clip", ["x", "lo", "hi"], ["y"])], {"x": x}, 1,
                   {"lo": lo, "hi": hi})
    np.testing.assert_array_equal(kernels.unary("clip", x, float(lo), float(hi)), want)
    # SiLU has no ONNX op before opset 24: x * Sigmoid(x) rounds twice, and ORT's fp32
    # sigmoid keeps ~1e-7 absolute accuracy in its tail, so compare to 1e-6 absolute
    want = ort_run([helper.make_node("Sigmoid", ["x"], ["s"]),
                    helper.make_node("Mul", ["x", "s"], ["y"])], {"x": x}, 1)
    np.testing.assert_allclose(kernels.unary("silu", x), want, rtol=2e-6, atol=1e-6,
                               equal_nan=True)


# --- VV_ALU -------------------------------------------------------------------------------

def test_alu_max_min_propagate_nan_and_pow_rounds_once():
    a = inputs(6, 500)
    b = inputs(7, 500)
    np.testing.assert_array_equal(kernels.alu("max", a, b), np.maximum(a, b))
    np.testing.assert_array_equal(kernels.alu("min", a, b), np.minimum(a, b))
    assert np.isnan(kernels.alu("max", np.array([np.nan], F32), np.array([1.0], F32)))[0]
    base, ex = np.abs(a[:400]), (b[:400] / 4).astype(F32)
    with np.errstate(all="ignore"):
        ref = np.power(base.astype(np.float64), ex.astype(np.float64)).astype(F32)
    np.testing.assert_array_equal(kernels.alu("pow", base, ex), ref)
    want = ort_run([helper.make_node("Pow", ["x", "e"], ["y"])], {"x": base, "e": ex}, 1)
    np.testing.assert_allclose(kernels.alu("pow", base, ex), want, rtol=1e-6, atol=1e-30)
    for op, onnx_op in (("max", "Max"), ("min", "Min")):
        want = ort_run([helper.make_node(onnx_op, ["x", "e"], ["y"])], {"x": a, "e": b}, 1)
        np.testing.assert_array_equal(kernels.alu(op, a, b), want)


# --- V_REDUCE and V_NORM ------------------------------------------------------------------

REDUCE_ONNX = {"sum": "ReduceSum", "mean": "ReduceMean", "max": "ReduceMax", "min": "ReduceMin",
               "sum_square": "ReduceSumSquare", "l2": "ReduceL2"}


def test_every_reduce_mode_has_an_onnx_op():
    assert {m.name.lower() for m in isa.ReduceMode} == set(REDUCE_ONNX)


@pytest.mark.parametrize("mode", list(REDUCE_ONNX))
def test_reduce_matches_float64_and_onnxruntime(mode):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((3, 37, 5)) * 3).astype(F32)
    y = kernels.reduce(x, mode)
    z = x.astype(np.float64)
    ref = {"sum": z.sum(1), "mean": z.mean(1), "max": z.max(1), "min": z.min(1),
           "sum_square": (z * z).sum(1), "l2": np.sqrt((z * z).sum(1))}[mode]
    assert y.shape == (3, 5) and y.dtype == F32
    assert ulps(y, ref.astype(F32)).max() <= 1
    want = ort_run([helper.make_node(REDUCE_ONNX[mode], ["x", "axes"], ["y"], keepdims=0)],
                   {"x": x}, 2, {"axes": np.array([1], np.int64)}, opset=18)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)
    # the summation order is a function of the shape, not of the caller's layout
    xt = np.ascontiguousarray(x.transpose(2, 1, 0)).transpose(2, 1, 0)
    np.testing.assert_array_equal(kernels.reduce(xt, mode), y)


def test_reduce_max_propagates_nan():
    x = np.zeros((1, 4, 2), F32)
    x[0, 2, 1] = np.nan
    assert np.isnan(kernels.reduce(x, "max")[0, 1]) and kernels.reduce(x, "max")[0, 0] == 0


def test_norm_matches_layer_normalization():
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((2, 3, 24)) * 2 + 1).astype(F32)
    scale, bias = rng.standard_normal(24).astype(F32), rng.standard_normal(24).astype(F32)
    want = ort_run([helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1,
                                     epsilon=1e-5)], {"x": x}, 3, {"s": scale, "b": bias})
    y = kernels.norm(x.reshape(-1, 24), scale, bias, float(F32(1e-5)))
    np.testing.assert_allclose(y.reshape(x.shape), want, rtol=1e-5, atol=1e-5)


def test_norm_matches_instance_normalization():
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((2, 3, 5, 7)) * 2 - 1).astype(F32)
    scale, bias = rng.standard_normal(3).astype(F32), rng.standard_normal(3).astype(F32)
    want = ort_run([helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"],
                                     epsilon=1e-3)], {"x": x}, 4, {"s": scale, "b": bias})
    y = kernels.norm(x.reshape(6, 35), scale, bias, float(F32(1e-3)), channels=3)
    np.testing.assert_allclose(y.reshape(x.shape), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows,cols,channels", [(300, 96, 0), (7, 768, 0), (10, 1, 0),
                                               (12, 300, 4), (6, 35, 3), (3, 129, 0)])
def test_norm_is_the_float64_formula_bit_for_bit(rows: int, cols: int, channels: int) -> None:
    """The compiled pass gives :func:`vector.norm_reference`'s bits: rows of every
    length around numpy's pairwise blocks (8, 128), per-column and per-row (instance)
    scales, NaN, infinities, huge and constant rows, eps 0."""
    rng = np.random.default_rng(rows * cols)
    x = rng.permutation(np.resize(inputs(rows, rows * cols, 3.0), rows * cols)).reshape(rows, cols)
    x[0] = 3.0  # a constant row: variance 0
    x[-1] = (rng.standard_normal(cols) * 1e19).astype(F32)
    n = channels or cols
    scale, bias = rng.standard_normal(n).astype(F32), rng.standard_normal(n).astype(F32)
    for eps in (1e-5, 0.0):
        with np.errstate(all="ignore"):
            want = vector.norm_reference(x, scale, bias, eps, channels)
        got = vector.norm(x, scale, bias, eps, channels)
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


@pytest.mark.parametrize("shape", [(300, 49), (24, 197), (5, 1000), (2000, 3), (7, 6000),
                                   (4, 5)])
def test_softmax_is_the_float64_formula_bit_for_bit(shape: tuple[int, int]) -> None:
    """The compiled maximum, shift, pairwise sum and division around numpy's exp give the
    reference's bits: rows of every length around the pairwise blocks (8, 128), slices
    shared between the threads, NaN, infinities, huge and tiny values."""
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 5).astype(F32)
    flat = x.reshape(-1)
    flat[::97] = np.resize(inputs(2, 0), flat[::97].size)  # the special values
    x[1] = 3e38
    with np.errstate(all="ignore"):
        want = kernels.softmax_reference(x)
        got = kernels.softmax(x)
    assert np.array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


# --- V_RESIZE -----------------------------------------------------------------------------

COORDS = [c.name.lower() for c in isa.CoordMode]
NEAREST = [n.name.lower() for n in isa.NearestMode]
RESIZES = [(c, "nearest", n) for c in COORDS for n in NEAREST] + [
    (c, "linear", "round_prefer_floor") for c in COORDS if c != "tf_half_pixel_for_nn"]


def _resize_cases(ih: int, iw: int):
    """(kind, values): up and down, integer and not, by scales and by sizes."""
    yield from [("scales", (2.0, 3.0)), ("scales", (0.5, 1.5)), ("scales", (1.7, 0.6)),
                ("scales", (1.0, 2.5)), ("scales", (0.34, 3.3)), ("scales", (3.0, 0.25)),
                ("sizes", (2 * ih + 1, iw + 2)), ("sizes", (max(ih // 2, 1), 2 * iw)),
                ("sizes", (3, 7)), ("sizes", (ih, 1)), ("sizes", (1, iw + 1)),
                ("sizes", (ih + 1, iw))]


@pytest.mark.parametrize("coord,mode,nearest", RESIZES, ids=["-".join(r) for r in RESIZES])
def test_resize_matches_onnxruntime(coord, mode, nearest):
    rng = np.random.default_rng(11)
    checked = 0
    for (ih, iw), opset in itertools.product([(4, 5), (7, 3), (1, 6), (9, 9), (20, 1)],
                                             (13, 19)):
        x = rng.standard_normal((2, 3, ih, iw)).astype(F32)
        for kind, v in _resize_cases(ih, iw):
            attrs = {"mode": mode, "coordinate_transformation_mode": coord}
            if mode == "nearest":
                attrs["nearest_mode"] = nearest
            if kind == "scales":
                consts = {"sc": np.array([1, 1, *v], F32)}
                node = helper.make_node("Resize", ["x", "", "sc"], ["y"], **attrs)
            else:
                consts = {"sz": np.array([2, 3, *v], np.int64)}
                node = helper.make_node("Resize", ["x", "", "", "sz"], ["y"], **attrs)
            want = ort_run([node], {"x": x}, 4, consts, opset)
            oh, ow = want.shape[2:]
            if want.size == 0:
                continue
            # the compiler passes the model's scales, or out / in in fp32 for sizes
            scales = (v if kind == "scales"
                      else (F32(oh) / F32(ih), F32(ow) / F32(iw)))
            y = kernels.resize(x.reshape(6, ih, iw), (oh, ow), mode, coord, nearest, scales)
            y = y.reshape(want.shape)
            if mode == "nearest":
                assert np.array_equal(y, want), (ih, iw, kind, v, opset)
            else:
                np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6,
                                           err_msg=str((ih, iw, kind, v, opset)))
            checked += 1
    assert checked > 100


def test_resize_nearest_ties_follow_onnxruntime():
    # a source coordinate within 1e-6 of k + 0.5 is a tie (ORT absorbs the fp32 error so)
    x = np.arange(7, dtype=F32).reshape(1, 1, 7)
    s = F32(1) / F32(7)  # (0 + 0.5) / s = 3.4999998 in fp32
    assert kernels.resize(x, (1, 1), "nearest", "tf_half_pixel_for_nn", "round_prefer_ceil",
                          (1.0, s))[0, 0, 0] == 4
    assert kernels.resize(x, (1, 1), "nearest", "tf_half_pixel_for_nn", "round_prefer_floor",
                          (1.0, s))[0, 0, 0] == 3


# --- V_PAD, V_GATHER, V_MOVE -----------------------------------------------------------------

@pytest.mark.parametrize("mode", [m.name.lower() for m in isa.PadMode])
def test_pad_matches_onnxruntime(mode):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 5, 6)).astype(F32)
    for pads in [(1, 2, 3, 0), (0, 0, 0, 0), (2, 1, 1, 2), (4, 5, 4, 5)]:
        t, left, b, r = pads
        consts = {"p": np.array([0, 0, t, left, 0, 0, b, r], np.int64),
                  "v": np.array(1.25, F32)}
        node = helper.make_node("Pad", ["x", "p", "v"] if mode == "constant" else ["x", "p"],
                                ["y"], mode=mode)
        if mode != "constant":
            consts.pop("v")
        want = ort_run([node], {"x": x}, 4, consts, opset=19)
        y = kernels.pad2d(x.reshape(6, 5, 6), pads, mode, 1.25)
        np.testing.assert_array_equal(y.reshape(want.shape), want, err_msg=str(pads))


def test_gather_is_take():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((3, 7, 4)).astype(F32)
    idx = np.array([6, 0, 0, 3], np.int32)
    np.testing.assert_array_equal(kernels.gather(x, idx), np.take(x, idx, axis=1))


def _strides(a: np.ndarray) -> list[int]:
    return [s // a.itemsize for s in a.strides]


@pytest.mark.parametrize("case", ["transpose", "negative_slice", "expand", "gather_scalar",
                                  "depth_to_space"])
def test_move_reproduces_numpy_views(case):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 3, 4, 5)).astype(F32)
    if case == "transpose":
        view = x.transpose(0, 2, 3, 1)
    elif case == "negative_slice":
        view = x[:, ::-2, 3:0:-1, ::3]
    elif case == "expand":
        view = np.broadcast_to(x[:, :1, :, 2:3], (2, 6, 4, 7))
    elif case == "gather_scalar":
        view = x[:, 1]
    else:  # DepthToSpace DCR, blocksize 2, of [1, 4, 2, 3]
        d = x.reshape(-1)[:24].reshape(1, 4, 2, 3)
        view = d.reshape(1, 2, 2, 1, 2, 3).transpose(0, 3, 4, 1, 5, 2)
    base = x.reshape(-1)
    offset = (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // 4
    dims = [1] * (6 - view.ndim) + list(view.shape)
    strides = [0] * (6 - view.ndim) + _strides(view)
    y = kernels.move(base, offset, dims, strides)
    np.testing.assert_array_equal(y.reshape(view.shape), view)


def test_move_refuses_to_read_outside_its_buffer():
    buf = np.arange(10, dtype=F32)
    with pytest.raises(ValueError, match="outside"):
        kernels.move(buf, 2, [4], [-1])
    with pytest.raises(ValueError, match="outside"):
        kernels.move(buf, 5, [3, 2], [2, 1])
    assert kernels.move(buf, 0, [0, 3], [1, 1]).shape == (0, 3)


def test_erf_table_is_within_a_few_ulps_of_math_erf():
    """The Taylor table behind the one-pass erf and GELU agrees with ``math.erf`` to a few
    float64 ulps over its whole range (far inside ``ERF_MARGIN``), signed zero included."""
    from npusim.simulator import _erf

    xs = np.concatenate([np.linspace(-_erf.ERF_RANGE, _erf.ERF_RANGE, 20001),
                         np.random.default_rng(0).uniform(-_erf.ERF_RANGE, _erf.ERF_RANGE, 20000),
                         [1e-300, -1e-300, 1e-8, 0.25, 0.2500000001, 0.7499999999, 5.75]])
    got = np.array([_erf.erf_table(v) for v in xs])
    ref = np.array([math.erf(v) for v in xs])
    assert np.all(np.abs(got - ref) <= 4 * np.spacing(np.abs(ref)))
    assert math.copysign(1.0, _erf.erf_table(-0.0)) == -1.0


@pytest.mark.parametrize("fn", ["erf", "gelu"])
def test_erf_and_gelu_give_the_formulas_bits_on_dense_runs(fn: str) -> None:
    """Runs of consecutive float32 inputs around the table's centers and across its
    range, random ones, and the special values: every output has the float64 formula's
    bits (``math.erf``), in any tail length."""
    starts = [0.0, 0.25, 0.5, 1.0, 2.75, 5.9, 8.4, -0.75, -4.0, 1e-30]
    runs = [(np.float32(v).view(np.int32) + np.arange(1 << 16, dtype=np.int32)).view(F32)
            for v in starts]
    x = np.concatenate(runs + [inputs(11, 200_000, 3.0)])
    for size in (x.size, 12_345, 7):
        want = unary_reference(fn, x[:size])
        got = vector.unary(fn, x[:size])
        assert np.array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        assert np.array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))


def test_sigmoid_sends_the_elements_near_a_rounding_boundary_to_the_formula():
    """Of 4M consecutive float32 inputs, those whose sigmoid (numpy's float64 formula) is
    within 2**-44 of a float32 rounding boundary are each listed by the kernel for the
    formula, and every output has the formula's bits."""
    from npusim.simulator import _sigmoid
    x = (np.float32(-3.7).view(np.int32) + np.arange(1 << 22, dtype=np.int32)).view(F32)
    with np.errstate(all="ignore"):
        s = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    d = (s.view(np.int64) & 0x1FFFFFFF) - 0x10000000
    close = np.flatnonzero(np.abs(d) <= 1 << 9)  # within 2**-44
    assert len(close) >= 5
    out, idx = np.empty_like(x), np.empty(x.size, np.int64)
    near = int(_sigmoid.SIGMOID_MARGIN * 2.0**53)
    n = _sigmoid._logistic(x, out, out, False, near, np.empty(x.size // 8 + 1, np.uint8), idx)
    assert set(close) <= set(idx[:n]) and n < x.size // 1000
    assert np.array_equal(out[idx[:n]], x[idx[:n]])  # they hold x for the formula
    assert _same_bits(kernels.unary("sigmoid", x), unary_reference("sigmoid", x))


def test_sigmoid_exp_polynomial_is_within_its_bound():
    """The sigmoid kernel's exp polynomial is within ``2**-49`` of exp, relative, over its
    whole reduced range (evaluated in extended precision on a fine grid)."""
    from npusim.simulator import _sigmoid
    r = np.linspace(-np.log(2) / 2 * (1 + 2**-20), np.log(2) / 2 * (1 + 2**-20), 400_001,
                    dtype=np.longdouble)
    p = np.zeros_like(r)
    for c in _sigmoid.EXP_POLY:
        p = p * r + np.longdouble(c)
    assert np.max(np.abs(p / np.exp(r) - 1)) < 2.0**-49


def test_sigmoid_and_erf_compile_for_a_cpu_without_avx512(tmp_path):
    """For a CPU without AVX-512 (numba told to compile for Haswell, in a process of its
    own), the sigmoid kernel clamps its inputs with portable operations and erf and the
    GELU run the table's steps one element at a time; all still give the formulas'
    bits."""
    code = ("import numpy as np\n"
            "from npusim.simulator import _erf, _sigmoid, kernels\n"
            "from npusim.simulator.vector import unary_reference\n"
            "assert not _sigmoid._DQ and not _erf.VECTORS\n"
            "x = (np.random.default_rng(0).standard_normal(50_000) * 8).astype(np.float32)\n"
            "x[::97], x[::89] = np.nan, 100.0\n"
            "for fn in ('sigmoid', 'erf', 'gelu'):\n"
            "    ref, got = unary_reference(fn, x), kernels.unary(fn, x)\n"
            "    n = np.isnan(ref)\n"
            "    assert np.array_equal(np.isnan(got), n)\n"
            "    assert np.array_equal(got[~n].view(np.int32), ref[~n].view(np.int32))\n")
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
