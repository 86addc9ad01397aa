# SPDX-License-Identifier: Apache-2.0
"""The vector unit's element-wise, reduction and data-movement kernels.

Like :mod:`npusim.simulator.kernels` (which re-exports these names), each function is both the
golden model the compiler evaluates a graph with and what the simulated device runs for
one instruction, so the two agree bit for bit. The vector unit works in fp32; where a
function is transcendental or a sum, the hardware's wider internal datapath is modelled
as float64 rounded once to fp32, so the result does not depend on how the work is cut
into lanes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from npusim.simulator import _erf, _fast, _sigmoid

F32 = np.float32

# --- element-wise -------------------------------------------------------------------

ALU = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
       "max": np.maximum, "min": np.minimum}


def alu(op: str, a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """One fp32 operation per element, ``b`` broadcast (numpy rules), into ``out`` if given.

    ``max``/``min`` propagate a NaN; ``pow`` is computed in float64 and rounded once.
    """
    with np.errstate(all="ignore"):
        if op == "pow":
            y = np.power(np.asarray(a, np.float64), np.asarray(b, np.float64)).astype(F32)
            if out is None:
                return y
            out[...] = y
            return out
        return ALU[op](a, b, dtype=F32, out=out)


def _gelu(x: np.ndarray, alpha: float) -> np.ndarray:
    if alpha == 0.0:
        return 0.5 * x * (1.0 + _fast.erf(x / math.sqrt(2.0)))
    if alpha == 1.0:  # ONNX approximate="tanh"
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    raise ValueError(f"gelu: alpha {alpha} is neither 0 (exact) nor 1 (tanh)")


def _elu(x: np.ndarray, alpha: float) -> np.ndarray:
    return np.where(x > 0, x, alpha * np.expm1(x))


_WIDE: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "sigmoid": lambda x, a, b: 1.0 / (1.0 + np.exp(-x)),
    "tanh": lambda x, a, b: np.tanh(x),
    "hard_sigmoid": lambda x, a, b: np.maximum(0.0, np.minimum(1.0, a * x + b)),
    "hard_swish": lambda x, a, b: x * np.maximum(0.0, np.minimum(1.0, x / 6.0 + 0.5)),
    "exp": lambda x, a, b: np.exp(x),
    "log": lambda x, a, b: np.log(x),
    "sqrt": lambda x, a, b: np.sqrt(x),
    "reciprocal": lambda x, a, b: 1.0 / x,
    "erf": lambda x, a, b: _fast.erf(x),
    "gelu": lambda x, a, b: _gelu(x, a),
    "pow": lambda x, a, b: np.power(x, a),
    "elu": lambda x, a, b: _elu(x, a),
    "softplus": lambda x, a, b: np.logaddexp(0.0, x),
    "silu": lambda x, a, b: x / (1.0 + np.exp(-x)),
    "selu": lambda x, a, b: b * _elu(x, a),
    "softsign": lambda x, a, b: x / (1.0 + np.abs(x)),
}
"""Transcendental and compound functions: float64 inside, one rounding to fp32."""

_EXACT: dict[str, Callable[[np.ndarray, float, float], np.ndarray]] = {
    "leaky_relu": lambda x, a, b: np.where(x >= 0, x, F32(a) * x),
    "clip": lambda x, a, b: np.minimum(np.maximum(x, F32(a)), F32(b)),
    "neg": lambda x, a, b: np.negative(x),
    "abs": lambda x, a, b: np.abs(x),
    "floor": lambda x, a, b: np.floor(x),
    "ceil": lambda x, a, b: np.ceil(x),
    "round": lambda x, a, b: np.rint(x),  # half to even, as ONNX Round
    "sign": lambda x, a, b: np.sign(x),
}
"""Functions whose fp32 result is exact in fp32."""

UNARY_FUNCTIONS = tuple(_WIDE) + tuple(_EXACT)

_ONE_PASS: dict[str, Callable[[np.ndarray, float, float, np.ndarray | None], np.ndarray]] = {
    "hard_sigmoid": lambda x, a, b, out: _fast.hard_sigmoid(x, a, b, out),
    "hard_swish": lambda x, a, b, out: _fast.hard_swish(x, out),
    "sigmoid": lambda x, a, b, out: _sigmoid.sigmoid(x, out, _sigmoid_formula),
    "erf": lambda x, a, b, out: _erf.erf32(x, False, out),
    "gelu": lambda x, a, b, out: _erf.erf32(x, True, out),  # exact (alpha 0) only
}
"""Functions of ``_WIDE`` with a numba kernel that gives the formula's bits: the same
float64 operations (MobileNetV3 runs one after most of its layers), or for the sigmoid
(EfficientNet's SiLU, squeeze-excite gates, recurrent gates) a float64 exp of its own
whose result is within 2**-46 of the exact value, with the formula deciding the elements
whose float32 rounding that could change (:data:`npusim.simulator._sigmoid.SIGMOID_MARGIN`);
erf and the exact GELU (ViT's, Swin's, ConvNeXt's) by the same ``erf``, shared between
the threads (ConvNeXt-T's 1.2M-element erf took 10 ms as numpy pieces)."""


def sigmoid_and_product(x: np.ndarray, s: np.ndarray, p: np.ndarray) -> None:
    """``s = sigmoid(x)`` and ``p = fp32(x * s)``, the bits of :func:`unary` then
    :func:`alu`'s ``mul``, in one pass over ``x`` (EfficientNet's SiLUs, exported as a
    Sigmoid and a Mul). ``s`` and ``p`` are C-contiguous float32 arrays of ``x``'s shape,
    each ``x``, the other or memory of its own; ``p`` is written after ``s``."""
    _sigmoid.sigmoid(x, s, _sigmoid_formula, product=p)


def _sigmoid_formula(x: np.ndarray) -> np.ndarray:
    return unary_reference("sigmoid", x)


def unary(fn: str, x: np.ndarray, alpha: float = 0.0, beta: float = 0.0,
          out: np.ndarray | None = None) -> np.ndarray:
    """``fn(x; alpha, beta)`` per element; ``fn`` a lowercase
    :class:`~npusim.simulator.isa.UnaryFn`. The result may be written into ``out`` (a
    float32 array of ``x``'s shape that is ``x`` or shares no memory with it) and
    returned, or be a new array."""
    if fn in _ONE_PASS and not (fn == "gelu" and alpha != 0.0):
        return _ONE_PASS[fn](x, alpha, beta, out)  # _WIDE's float64 operations, one pass
    x = np.asarray(x, F32)
    if x.size <= UNARY_CHUNK:
        return unary_reference(fn, x, alpha, beta)
    # the formulas are element-wise: run them a cache-sized piece at a time (the float64
    # temporaries of a whole tensor were most of the time: sigmoid on 1.2M elements took
    # 10 ms, in pieces 4 ms, the same bits)
    flat = np.ascontiguousarray(x).reshape(-1)
    out = _fast.out_like(x, out)
    res = out.reshape(-1)
    for a in range(0, flat.size, UNARY_CHUNK):
        res[a:a + UNARY_CHUNK] = unary_reference(fn, flat[a:a + UNARY_CHUNK], alpha, beta)
    return out


UNARY_CHUNK = 1 << 15
"""Elements of a vector function's formula evaluated at once (their float64 temporaries
stay in the core's cache)."""


def unary_reference(fn: str, x: np.ndarray, alpha: float = 0.0, beta: float = 0.0
                    ) -> np.ndarray:
    """:func:`unary` by the numpy formulas alone."""
    with np.errstate(all="ignore"):
        if fn in _WIDE:
            return np.asarray(_WIDE[fn](np.asarray(x, np.float64), float(alpha), float(beta)),
                              np.float64).astype(F32)
        if fn in _EXACT:
            return np.asarray(_EXACT[fn](np.asarray(x, F32), alpha, beta), F32)
    raise ValueError(f"unknown vector function {fn!r}")


# --- reductions and normalization -----------------------------------------------------

def reduce(x3: np.ndarray, mode: str) -> np.ndarray:
    """Reduce ``[outer, mid, inner]`` over ``mid`` to ``[outer, inner]``.

    ``max``/``min`` are exact (a NaN wins); the sums accumulate in float64 and round once.
    The input is made contiguous first, so the summation order is a function of the shape
    alone, whatever layout the caller's array has.
    """
    x3 = np.ascontiguousarray(x3, F32)
    if mode == "max":
        return x3.max(axis=1)
    if mode == "min":
        return x3.min(axis=1)
    x = x3.astype(np.float64)
    with np.errstate(all="ignore"):
        if mode == "sum":
            y = x.sum(axis=1)
        elif mode == "mean":
            y = x.mean(axis=1)
        elif mode == "sum_square":
            y = (x * x).sum(axis=1)
        elif mode == "l2":
            y = np.sqrt((x * x).sum(axis=1))
        else:
            raise ValueError(f"unknown reduction {mode!r}")
    return y.astype(F32)


def norm(x2: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float,
         channels: int = 0) -> np.ndarray:
    """Normalize each row of ``[rows, cols]`` by its (population) mean and variance.

    ``channels == 0``: LayerNormalization, ``scale``/``bias`` per column; otherwise
    InstanceNormalization, row ``r`` takes ``scale[r % channels]``. float64 throughout,
    rounded once to fp32: :func:`norm_reference`'s bits, by a compiled pass per row
    (the reference's float64 temporaries made a ConvNeXt-T's LayerNorms 4 ns an element).
    """
    x = np.ascontiguousarray(x2, F32)
    s, b = np.ascontiguousarray(scale, F32).reshape(-1), np.ascontiguousarray(bias, F32).reshape(-1)
    if x.ndim != 2 or not x.size or s.size != b.size or s.size != (channels or x.shape[1]):
        return norm_reference(x2, scale, bias, eps, channels)
    return _fast.norm_rows(x, s, b, eps, channels)


def norm_reference(x2: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float,
                   channels: int = 0) -> np.ndarray:
    """:func:`norm` by numpy's float64 operations."""
    x = np.ascontiguousarray(x2, F32).astype(np.float64)
    rows = x.shape[0]
    with np.errstate(all="ignore"):
        mu = x.mean(axis=1, keepdims=True)
        d = x - mu
        y = d / np.sqrt((d * d).mean(axis=1, keepdims=True) + float(eps))
        s = np.asarray(scale, F32).astype(np.float64)
        b = np.asarray(bias, F32).astype(np.float64)
        if channels:
            k = np.arange(rows) % channels
            s, b = s[k][:, None], b[k][:, None]
        return (y * s + b).astype(F32)


# --- resampling -------------------------------------------------------------------------

def _source_coords(n_out: int, n_in: int, scale: float, coord: str) -> np.ndarray:
    """Source coordinate of each output index, in fp32 operation by operation (as ORT)."""
    y = np.arange(n_out, dtype=F32)
    s = F32(scale)
    half = F32(0.5)
    if s == 1:  # an unscaled axis maps one to one (onnxruntime skips the transform)
        return y
    with np.errstate(all="ignore"):
        if coord == "half_pixel":
            return (y + half) / s - half
        if coord == "asymmetric":
            return y / s
        if coord == "pytorch_half_pixel":
            return (y + half) / s - half if n_out > 1 else np.zeros(n_out, F32)
        if coord == "tf_half_pixel_for_nn":
            return (y + half) / s
        if coord == "align_corners":
            if n_out == 1:
                return np.zeros(1, F32)
            return y * F32(n_in - 1) / F32(n_out - 1)
    raise ValueError(f"unknown coordinate transformation {coord!r}")


def _round_half_away(x: np.ndarray) -> np.ndarray:
    t = np.trunc(x)
    return t + np.sign(x) * (np.abs(x - t) >= 0.5)


TIE_TOLERANCE = 1e-6
"""A source coordinate this close to ``k + 0.5`` is a tie for the ``round_prefer_*`` modes:
onnxruntime's CPU kernel decides ties so, to absorb the fp32 error of the coordinate."""


def _nearest_index(src: np.ndarray, n_in: int, mode: str) -> np.ndarray:
    x = src.astype(np.float64)  # exact: the tests below are those of ORT on the fp32 value
    base = np.floor(x)
    tie = np.abs(x - base - 0.5) <= TIE_TOLERANCE
    if mode == "round_prefer_floor":
        idx = np.where(tie, base, _round_half_away(x))
    elif mode == "round_prefer_ceil":
        idx = np.where(tie, base + 1, _round_half_away(x))
    elif mode == "floor":
        idx = base
    elif mode == "ceil":
        idx = np.ceil(x)
    else:
        raise ValueError(f"unknown nearest mode {mode!r}")
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def _linear_taps(src: np.ndarray, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       np.ndarray]:
    """Two source indices and their weights per output index (ORT's clamping, in fp32)."""
    c = np.maximum(F32(0), np.minimum(src, F32(n_in - 1)))
    i1 = np.minimum(c.astype(np.int64), n_in - 1)
    i2 = np.minimum(i1 + 1, n_in - 1)
    w1 = np.abs(c - i1.astype(F32))  # weight of i2
    w2 = np.abs(c - i2.astype(F32))  # weight of i1
    same = i1 == i2
    w1[same] = w2[same] = F32(0.5)
    return i1, i2, w2.astype(np.float64), w1.astype(np.float64)


def resize(x3: np.ndarray, out_hw: tuple[int, int], mode: str = "nearest",
           coord: str = "half_pixel", nearest: str = "round_prefer_floor",
           scales: tuple[float, float] | None = None) -> np.ndarray:
    """ONNX Resize (opset 11+) of the last two axes of ``[planes, in_h, in_w]``.

    The source coordinates follow onnxruntime's CPU kernel operation for operation in
    fp32, so nearest indices agree with it exactly; the bilinear blend is float64, rounded
    once. ``scales`` default to ``out / in``.
    """
    x3 = np.asarray(x3, F32)
    _, in_h, in_w = x3.shape
    out_h, out_w = out_hw
    if scales is None:
        scales = (F32(out_h) / F32(in_h), F32(out_w) / F32(in_w))
    if (out_h, out_w) == (in_h, in_w):  # ORT copies an unresized tensor whatever the mode
        return x3.copy()
    sy = _source_coords(out_h, in_h, scales[0], coord)
    sx = _source_coords(out_w, in_w, scales[1], coord)
    if mode == "nearest":
        iy, ix = _nearest_index(sy, in_h, nearest), _nearest_index(sx, in_w, nearest)
        return np.ascontiguousarray(x3[:, iy[:, None], ix[None, :]])
    if mode != "linear":
        raise ValueError(f"unknown resize mode {mode!r}")
    y1, y2, wy1, wy2 = _linear_taps(sy, in_h)
    x1, x2, wx1, wx2 = _linear_taps(sx, in_w)
    x = x3.astype(np.float64)
    wy1, wy2 = wy1[:, None], wy2[:, None]
    out = (x[:, y1[:, None], x1] * (wy1 * wx1) + x[:, y1[:, None], x2] * (wy1 * wx2)
           + x[:, y2[:, None], x1] * (wy2 * wx1) + x[:, y2[:, None], x2] * (wy2 * wx2))
    return out.astype(F32)


# --- data movement -----------------------------------------------------------------------

PAD_MODES = ("constant", "reflect", "edge", "wrap")


def pad2d(x3: np.ndarray, pads: tuple[int, int, int, int], mode: str = "constant",
          value: float = 0.0) -> np.ndarray:
    """ONNX Pad of the last two axes of ``[outer, h, w]``; ``pads`` (top, left, bottom, right)."""
    if mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}")
    top, left, bottom, right = pads
    width = ((0, 0), (top, bottom), (left, right))
    x3 = np.asarray(x3, F32)
    if mode == "constant":
        return np.pad(x3, width, constant_values=F32(value))
    return np.pad(x3, width, mode=mode)


def gather(x3: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``[outer, axis_len, inner]`` -> ``[outer, len(idx), inner]``: rows ``idx`` of axis 1."""
    return np.take(np.asarray(x3, F32), np.asarray(idx, np.int64), axis=1)


def move_span(dims: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """Lowest and highest element offset a strided copy reads (``(0, -1)`` when empty)."""
    if any(d == 0 for d in dims):
        return 0, -1
    lo = sum(min(0, (d - 1) * s) for d, s in zip(dims, strides))
    hi = sum(max(0, (d - 1) * s) for d, s in zip(dims, strides))
    return lo, hi


def move(buf: np.ndarray, offset: int, dims: Sequence[int],
         strides: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
    """The strided copy of ``V_MOVE``: element ``offset + sum(i_k * s_k)`` of the fp32
    vector ``buf`` for every index ``i`` of ``dims``, in row-major order; into ``out``
    (of shape ``dims``, sharing no memory with ``buf``) if given.

    Refuses (``ValueError``) a view that would reach outside ``buf``.
    """
    buf = np.asarray(buf)
    if buf.ndim != 1 or buf.dtype != F32:
        raise ValueError("move reads a one-dimensional fp32 buffer")
    dims, strides = tuple(int(d) for d in dims), tuple(int(s) for s in strides)
    lo, hi = move_span(dims, strides)
    if hi < lo:
        return np.empty(dims, F32)
    if offset + lo < 0 or offset + hi >= buf.size:
        raise ValueError(f"strided read of elements [{offset + lo}, {offset + hi}] is "
                         f"outside its buffer of {buf.size}")
    view = np.lib.stride_tricks.as_strided(buf[offset:], dims,
                                           tuple(s * buf.strides[0] for s in strides),
                                           writeable=False)
    if out is not None:
        np.copyto(out, view)
        return out
    return np.array(view, F32)
