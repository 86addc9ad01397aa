# SPDX-License-Identifier: Apache-2.0
"""The vector-unit kernels against float64 references and onnxruntime (the device
executing them: ``test_vector_device.py``; the compiled float64 formulas bit for bit:
``test_vector_formulas.py``)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from onnx import helper
from vector_cases import PARAMS, SELU_ALPHA, SELU_GAMMA, inputs, ort_run, same_bits

from npusim.simulator import isa, kernels, vector
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
        assert same_bits(got, ref), fn
    assert same_bits(into, ref) and same_bits(inplace, ref)


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
