# SPDX-License-Identifier: Apache-2.0
"""The vector-unit kernels against float64 references and onnxruntime, and the device
executing each new instruction bit for bit as the kernels do."""

from __future__ import annotations

import itertools
import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import helper
from onnx_helpers import make_model

from npusim.simulator import isa, kernels
from npusim.simulator.config import load_device
from npusim.simulator.device import Device, ExecutionError
from npusim.simulator.kernels import ConvGeometry
from npusim.simulator.numerics import pack, quantize
from npusim.simulator.program import Program, ProgramError, TensorDesc
from npusim.simulator.vector import unary_reference

F32 = np.float32
TINY = load_device("tiny")
ort.set_default_logger_severity(3)  # tf_half_pixel_for_nn is deprecated: ORT warns per model


def ort_run(nodes, feeds: dict[str, np.ndarray], out_rank: int,
            consts: dict[str, np.ndarray] | None = None, opset: int = 19) -> np.ndarray:
    """Run a one-node (or few-node) model with output ``y`` of unknown extents."""
    model = make_model(nodes, {k: list(v.shape) for k, v in feeds.items()},
                       {"y": [None] * out_rank}, consts, opset=opset)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def ulps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance in fp32 units in the last place (finite values)."""
    def ordered(x):
        i = np.asarray(x, F32).view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)
    return np.abs(ordered(a) - ordered(b))


def inputs(seed: int = 0, n: int = 3000, scale: float = 4.0) -> np.ndarray:
    """Random values plus the special ones: signed zeros, infinities, NaN, tiny, huge, halves."""
    rng = np.random.default_rng(seed)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 1e-45, 100.0, -100.0, 0.5,
               -0.5, 1.5, 2.5, -2.5, 88.8, -104.0, 3e38, -3e38, 1.0, -1.0]
    return np.concatenate([(rng.standard_normal(n) * scale).astype(F32), np.array(special, F32)])


# --- V_UNARY ------------------------------------------------------------------------------

SELU_ALPHA, SELU_GAMMA = 1.6732632423543772, 1.0507009873554805
PARAMS = {"leaky_relu": (0.1, 0.0), "clip": (-0.7, 1.3), "hard_sigmoid": (0.25, 0.4),
          "pow": (2.5, 0.0), "elu": (0.7, 0.0), "selu": (SELU_ALPHA, SELU_GAMMA),
          "gelu": (0.0, 0.0)}


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
                                     ("hard_sigmoid", -1.5, -0.0), ("hard_swish", 0.0, 0.0)])
@pytest.mark.parametrize("n", [1, 7, 16, 1000, 3001])
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

class Bench:
    """Lays tensors out in an activation arena, wraps instructions in ``V_RD``/``V_WR`` and
    runs them on a :class:`Device`, without the compiler."""

    def __init__(self, cfg=TINY, weights: bytes = b"", weight_tensors=()) -> None:
        self.cfg, self.weights, self.weight_tensors = cfg, weights, tuple(weight_tensors)
        self.abase = -(-len(weights) // 64) * 64
        self.top = 0
        self.ins: list[tuple[TensorDesc, np.ndarray]] = []
        self.outs: list[TensorDesc] = []

    def _take(self, nbytes: int) -> int:
        addr = self.abase + self.top
        self.top += -(-max(nbytes, 1) // 64) * 64
        return addr

    def put(self, a: np.ndarray) -> int:
        addr = self._take(a.nbytes)
        self.ins.append((TensorDesc(f"in{len(self.ins)}", a.shape, a.dtype.name, addr, a.nbytes),
                         a))
        return addr

    def out(self, shape: tuple[int, ...]) -> int:
        n = 4 * math.prod(shape)
        addr = self._take(n)
        self.outs.append(TensorDesc(f"out{len(self.outs)}", tuple(shape), "float32", addr, n))
        return addr

    def run(self, *instrs: isa.Instruction) -> list[np.ndarray]:
        code = ([isa.VRd(k, t.addr, t.nbytes) for k, (t, _) in enumerate(self.ins)] + list(instrs)
                + [isa.VWr(k, t.addr, t.nbytes) for k, t in enumerate(self.outs)]
                + [isa.EndChain()])
        prog = Program(self.cfg, tuple(code), self.weights, b"", tuple(t for t, _ in self.ins),
                       tuple(self.outs), self.weight_tensors,
                       tuple({"name": f"#{k}", "op": type(i).__name__} for k, i in enumerate(code)),
                       {"weights": (0, len(self.weights)), "constants": (self.abase, 0),
                        "activations": (self.abase, self.top)})
        dev = Device(self.cfg)
        dev.load(Program.from_bytes(prog.to_bytes()))  # and through the encoding
        outs, _ = dev.run({t.name: a for t, a in self.ins})
        return [outs[t.name] for t in self.outs]


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
