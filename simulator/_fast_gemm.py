# SPDX-License-Identifier: Apache-2.0
"""numba kernels of the matrix unit's products, with the golden model's result.

They work on "columns": the reduction axis K runs down, one column per output pixel
(or activation row), so a convolution's result comes out ``[O, pixels]``, already
NCHW. Activations are quantized while they are gathered (im2col): float32 mantissas
``q[J, B, N]`` (small integers) and float32 block scales ``sa[J, N]`` (powers of two,
exact in fp32 for every format of the device; NaN for a block that held a NaN or an
infinity). The integer block dot products are then a batched fp32 GEMM, exact since
every one is below 2**24 (done by BLAS, see :mod:`npusim.simulator.gemm`), and
:func:`accumulate_cols` sums the block products in the device's order.

The product of two block scales is a power of two; when it is a normal fp32 number,
``fp32(p * s)`` is the same single rounding in fp32 as in float64, so the common case
runs in fp32 and only blocks whose scales leave that range take the float64 path.
Every kernel is compared bit for bit with the numpy reference in
``tests/simulator/test_fast_gemm.py``. Kernels compile on first call, never at import.
The grouped and depthwise convolutions, which gather their own windows instead of
making a GEMM, are in :mod:`npusim.simulator._fast_direct` and use this module's
quantizer and accumulation.
"""

from __future__ import annotations

import numba
import numpy as np

_MIN_NORMAL = 2.0**-126
_MAX_SCALE = 2.0**(127 - 24)  # so p * scale (p below 2**24) is finite and exact


@numba.njit(cache=True, inline="always")
def _gather(xp, c, dy, dx, oy0, oy1, ow, sy, sx, out):  # pragma: no cover - compiled
    """``out[(oy - oy0) * ow + ox] = xp[c, oy * sy + dy, ox * sx + dx]`` (``xp`` padded).

    Each row is sliced on its own, an integer index then a step-free slice, so numba
    keeps it C-contiguous (a slice with a step makes the inner stride a run-time
    value), and the loops index with counters that numba knows are not negative: no
    wraparound check, and the copy vectorizes.
    """
    for r in range(oy1 - oy0):
        y = (oy0 + r) * sy + dy
        dst = out[r * ow:(r + 1) * ow]
        if sx == 1:
            src = xp[c, y, dx:dx + ow]
            for ox in range(ow):
                dst[ox] = src[ox]
        else:
            src = xp[c, y, dx:dx + (ow - 1) * sx + 1]
            for ox in range(ow):
                dst[ox] = src[ox * sx]


@numba.njit(cache=True, inline="always")
def _gather_block(xp, kc, ky, kx, k0, block, oy0, oy1, ow, sy, sx,
                  v):  # pragma: no cover - compiled
    """Rows ``k0...k0 + block`` of K (as many as there are) of output rows ``oy0...oy1``
    into the rows of ``v`` (:func:`_gather`); returns how many."""
    nb = min(block, kc.shape[0] - k0)
    for b in range(nb):
        k = k0 + b
        _gather(xp, kc[k], ky[k], kx[k], oy0, oy1, ow, sy, sx, v[b])
    return nb


@numba.njit(cache=True, inline="always")
def _quantize_block(v, nb, mbits, emin, emax, q, sa, scratch):  # pragma: no cover - compiled
    """Quantize one block for each of ``ow`` columns: ``v[:nb, ow]`` fp32 values (rows past
    ``nb`` are the zero padding) into ``q[:, ow]`` mantissas and ``sa[ow]`` scales
    (``scratch``: float64 ``[3, >= ow]``, reused between calls).

    In fp32 (twice the lanes of float64) when that gives the same numbers: the format's
    smallest exponent is at least fp32's (-127), so the exponent read from the fp32 bits
    of the block maximum clamps as the float64 one does, and every nonzero block maximum
    is at least ``2**(mbits - 126)``, so its scale and the multiplier ``2**(mbits-1-e)``
    are normal fp32 numbers and ``|x| * multiplier`` is exact (or below 1/2 either way).
    Otherwise the float64 version, :func:`_quantize_block64`.
    """
    ow = v.shape[1]
    if emin < -127:
        _quantize_block64(v, nb, mbits, emin, emax, q, sa, scratch)
        return
    # max |v| by the bits of |v| (ordered as the values; a NaN's above an infinity's),
    # branch-free so that the loop vectorizes
    bits = scratch[0, :ow].view(np.int32)[:ow]
    bits[:] = 0
    vbits = v.view(np.int32)
    mask = np.int32(0x7FFFFFFF)
    for b in range(nb):  # in int32 lanes (numba's int arithmetic is int64 unless cast back)
        for ox in range(ow):
            a = np.int32(vbits[b, ox] & mask)
            m = bits[ox]
            bits[ox] = a if a > m else m
    amax = bits.view(np.float32)
    bad = scratch[0, :ow].view(np.float32)[ow:]  # NaN for a block with a NaN or an infinity
    for ox in range(ow):
        bad[ox] = np.float32(0.0) if bits[ox] < 0x7F800000 else np.float32(np.nan)
    mult = scratch[1, :ow].view(np.int32)[:ow]
    scale = scratch[1, :ow].view(np.int32)[ow:]
    lowest = mbits - 126
    tiny = 0
    for ox in range(ow):
        e = min(max(((bits[ox] >> 23) & 255) - 127, emin), emax)
        live = amax[ox] > 0.0 and bad[ox] == 0.0
        tiny += 1 if live and e < lowest else 0
        e = max(e, lowest)  # (a column it changes is live and tiny: float64 takes over)
        mult[ox] = (mbits - 1 - e + 127) << 23 if live else 0
        scale[ox] = (e - mbits + 1 + 127) << 23
    if tiny:
        _quantize_block64(v, nb, mbits, emin, emax, q, sa, scratch)
        return
    mf = mult.view(np.float32)
    sf = scale.view(np.float32)
    one = np.float32(1.0)
    for ox in range(ow):
        s = sf[ox] if np.rint(amax[ox] * mf[ox]) != 0.0 else one  # all mantissas zero
        sa[ox] = s if bad[ox] == 0.0 else np.float32(np.nan)
    max_m = np.float32((1 << mbits) - 1)
    zero = np.float32(0.0)
    for b in range(nb):
        for ox in range(ow):
            x = v[b, ox]
            m = abs(x) * mf[ox]
            m = min(np.rint(m), max_m) if m == m else zero  # inf * 0 in a non-finite block
            q[b, ox] = -m if x < 0 else m
    for b in range(nb, q.shape[0]):
        q[b, :] = 0.0


@numba.njit(cache=True)
def quantize_block_call(v, nb, mbits, emin, emax, q, sa, scratch):  # pragma: no cover
    """:func:`_quantize_block` as a call, for the rare paths of the kernels (a tiny
    scale): compiled once, not inlined into each caller (each copy cost seconds of the
    first run's compile)."""
    _quantize_block(v, nb, mbits, emin, emax, q, sa, scratch)


@numba.njit(cache=True)  # a call, not inlined: the rare path, compiled once, not per caller
def _quantize_block64(v, nb, mbits, emin, emax, q, sa, scratch):  # pragma: no cover - compiled
    """:func:`_quantize_block` in float64, for every format and scale.

    The shared exponent ``clamp(floor(log2(max |v|)), emin, emax)`` is read from the
    float64 bits of the block maximum (an all-zero block's reads -1023 and clamps to
    ``emin``), and the powers of two are built from bits, so the loops vectorize. A block
    whose mantissas are all zero (a ReLU's zeros, say) adds nothing whatever its scale, so
    its scale is given as 1: a tiny one would send every product of its block down the
    float64 path for nothing.
    """
    ow = v.shape[1]
    max_m = np.float64((1 << mbits) - 1)
    amax = scratch[0, :ow]  # max |v|, then -1 if a NaN or an infinity was seen
    bad = scratch[1, :ow]  # NaN once a NaN or an infinity is seen (a - a), else 0
    amax[:] = 0.0
    bad[:] = 0.0
    for b in range(nb):  # branch-free, so the loops vectorize
        for ox in range(ow):
            a = abs(np.float64(v[b, ox]))
            amax[ox] = a if a > amax[ox] else amax[ox]
            bad[ox] += a - a
    for ox in range(ow):
        amax[ox] = amax[ox] if bad[ox] == 0.0 else -1.0
    bits = amax.view(np.int64)
    mult = scratch[1, :ow].view(np.int64)
    scale = scratch[2, :ow].view(np.int64)
    for ox in range(ow):
        e = min(max((bits[ox] >> 52) - 1023, emin), emax)
        mult[ox] = (mbits - 1 - e + 1023) << 52   # 2**(M-1-e): exact scaling to a mantissa
        scale[ox] = (e - mbits + 1 + 1023) << 52  # 2**(e-M+1): the block's scale
    mf = mult.view(np.float64)
    sf = scale.view(np.float64)
    for ox in range(ow):
        mf[ox] = mf[ox] if amax[ox] >= 0.0 else 0.0  # a non-finite block: zero mantissas
        sa[ox] = np.float32(sf[ox]) if amax[ox] >= 0.0 else np.float32(np.nan)
        if amax[ox] >= 0.0 and np.rint(amax[ox] * mf[ox]) == 0.0:
            sa[ox] = 1.0  # all mantissas zero: any scale gives the same (zero) products
    for b in range(nb):
        for ox in range(ow):
            x = np.float64(v[b, ox])
            m = abs(x) * mf[ox]
            m = min(np.rint(m), max_m) if m == m else 0.0  # inf * 0 in a non-finite block
            q[b, ox] = np.float32(-m if x < 0 else m)
    for b in range(nb, q.shape[0]):
        q[b, :] = 0.0


@numba.njit(cache=True, inline="always")
def _scale_range(sa):  # pragma: no cover - compiled
    """Smallest and largest of the scales ``sa`` (NaN ignored) as float64."""
    lo, hi = np.inf, -np.inf
    for n in range(sa.shape[0]):
        s = np.float64(sa[n])
        lo = min(lo, s) if s == s else lo
        hi = max(hi, s) if s == s else hi
    return lo, hi


@numba.njit(cache=True, inline="always")
def _accumulate_block(acc, p, sa, s, lo, hi):  # pragma: no cover - compiled
    """``acc = fp32(acc + fp32(p * sa * s))`` over a row: in fp32 when every scale product
    ``sa[n] * s`` (scales in ``[lo, hi]``) is a normal fp32 number, else in float64."""
    if lo * s >= _MIN_NORMAL and hi * s <= _MAX_SCALE:
        s32 = np.float32(s)
        for n in range(acc.shape[0]):
            acc[n] = acc[n] + p[n] * (sa[n] * s32)
    else:
        for n in range(acc.shape[0]):
            acc[n] = np.float32(acc[n] + np.float32(np.float64(p[n]) * (np.float64(sa[n]) * s)))


@numba.njit(cache=True, nogil=True)
def _im2col_quantize(xp, kc, ky, kx, oy0, oy1, ow, sy, sx, mbits, emin, emax, q,
                     sa):  # pragma: no cover - compiled
    # xp [C, Hp, Wp] f32, padded so every tap is inside; row k of the columns reads
    # xp[kc[k], oy*sy + ky[k], ox*sx + kx[k]] for output rows oy0 <= oy < oy1.
    # q [J, B, W] f32 mantissas out, sa [J, W] f32 scales out, for N = (oy1-oy0)*ow <= W
    # columns; columns past N are padding: zero mantissas, NaN scales.
    nblocks, block, _ = q.shape
    n = (oy1 - oy0) * ow
    q[:, :, n:] = 0.0
    sa[:, n:] = np.nan
    v = np.empty((min(block, kc.shape[0]), n), np.float32)  # the rows a block gathers
    scratch = np.empty((3, n), np.float64)
    for j in range(nblocks):
        nb = _gather_block(xp, kc, ky, kx, j * block, block, oy0, oy1, ow, sy, sx, v)
        _quantize_block(v, nb, mbits, emin, emax, q[j], sa[j], scratch)


@numba.njit(cache=True, nogil=True)
def _im2col(xp, kc, ky, kx, oy0, oy1, ow, sy, sx, cols):  # pragma: no cover - compiled
    # the fp32 gather of _im2col_quantize: cols [K, (oy1-oy0)*ow]
    for k in range(kc.shape[0]):
        _gather(xp, kc[k], ky[k], kx[k], oy0, oy1, ow, sy, sx, cols[k])


@numba.njit(cache=True, nogil=True)
def _accumulate_cols(partials, sw, sa, out, n0):  # pragma: no cover - compiled
    # partials [J, O, N] exact integers; sw [J, O], sa [J, N] f32 scales; the sums into
    # columns n0 <= n < n0 + N of out [O, >= n0 + N] (a C array, indexed here, so that
    # each row is contiguous to the compiler)
    nblocks, rows, n = partials.shape
    lo = np.empty(nblocks, np.float64)
    hi = np.empty(nblocks, np.float64)
    for j in range(nblocks):
        lo[j], hi[j] = _scale_range(sa[j])
    for o in range(rows):
        acc = out[o, n0:n0 + n]
        acc[:] = 0.0
        for j in range(nblocks):
            _accumulate_block(acc, partials[j, o], sa[j], np.float64(sw[j, o]), lo[j], hi[j])


@numba.njit(cache=True, nogil=True)
def accumulate_batch(partials, sw, sa, out):  # pragma: no cover - compiled
    # _accumulate_cols for each product of a batch: partials [batch, J, O, N], sw [1 or
    # batch, J, O], sa [batch, J, N], out [batch, O, N]
    for i in range(partials.shape[0]):
        _accumulate_cols(partials[i], sw[i if sw.shape[0] > 1 else 0], sa[i], out[i], 0)


@numba.njit(cache=True, nogil=True)
def _gemv(xq, sa, wt, swt, o0, o1, out):  # pragma: no cover - compiled
    # xq [N, J*B] int8, sa [N, J] f32 activation scales; wt [J*B, O] int8 weights
    # transposed, swt [J, O] f32 scales (1 for a block of zero mantissas); out [N, O],
    # outputs o0 <= o < o1, vectorized along them: per block, the exact integer products
    # p[o] summed in fp32, then acc[o] = fp32(acc[o] + fp32(p[o] * sa * sw[o])) in block
    # order. A block of zero activations adds +0 to every output when its scale and the
    # weights' are finite, which changes nothing (acc is never -0: it starts at +0 and
    # an exact zero sum is +0), so it is skipped.
    rows, nblocks = sa.shape
    block = xq.shape[1] // nblocks
    m = o1 - o0
    acc = np.empty(m, np.float32)
    p = np.empty(m, np.float32)
    finite = np.empty(nblocks, np.bool_)
    for j in range(nblocks):
        bad = np.float32(0.0)
        for i in range(o0, o1):
            bad += swt[j, i] - swt[j, i]  # NaN once a scale is NaN or infinite
        finite[j] = bad == 0.0
    for n in range(rows):
        acc[:] = 0.0
        for j in range(nblocks):
            s = np.float64(sa[n, j])
            zero = True
            for b in range(j * block, (j + 1) * block):
                zero = zero and xq[n, b] == 0
            if zero and s - s == 0.0 and finite[j]:
                continue
            p[:] = 0.0
            b = j * block
            while b + 3 < (j + 1) * block:  # four rows of weights a pass (integers: exact)
                x0, x1 = np.float32(xq[n, b]), np.float32(xq[n, b + 1])
                x2, x3 = np.float32(xq[n, b + 2]), np.float32(xq[n, b + 3])
                if x0 != 0.0 or x1 != 0.0 or x2 != 0.0 or x3 != 0.0:
                    w0, w1 = wt[b, o0:o1], wt[b + 1, o0:o1]
                    w2, w3 = wt[b + 2, o0:o1], wt[b + 3, o0:o1]
                    for i in range(m):
                        p[i] += ((x0 * np.float32(w0[i]) + x1 * np.float32(w1[i]))
                                 + (x2 * np.float32(w2[i]) + x3 * np.float32(w3[i])))
                b += 4
            for b in range(b, (j + 1) * block):
                xv = np.float32(xq[n, b])
                if xv != 0.0:
                    w = wt[b, o0:o1]
                    for i in range(m):
                        p[i] += xv * np.float32(w[i])
            sw = swt[j, o0:o1]
            lo, hi = _scale_range(sw)
            _accumulate_block(acc, p, sw, s, lo, hi)
        out[n, o0:o1] = acc


@numba.njit(cache=True, nogil=True)
def _dense_rows(x, wt, swt, block, mbits, emin, emax, bias, res, relu, clip, lo, hi,
                out):  # pragma: no cover - compiled
    # A product of a few rows whole, in one call (a squeeze-excite layer's 32 -> 8 is
    # microseconds of arithmetic): each block of each row of x [N, K] quantized as
    # _quantize_block does, the products of _gemv into out [N, O], then _epilogue's steps
    # per element (+ bias [O], + res [N, O], ReLU, clip; bias and res empty for none)
    n, k = x.shape
    nblocks = swt.shape[0]
    cols = n * nblocks  # every block of every row a column of one quantizer call
    v = np.zeros((block, cols), np.float32)  # (a short last block: zero padding, as K's)
    for r in range(n):
        for j in range(nblocks):
            for b in range(min(block, k - j * block)):
                v[b, r * nblocks + j] = x[r, j * block + b]
    q = np.empty((block, cols), np.float32)
    s1 = np.empty(cols, np.float32)
    _quantize_block(v, block, mbits, emin, emax, q, s1, np.empty((3, cols), np.float64))
    xq = np.empty((n, nblocks * block), np.float32)
    sa = s1.reshape(n, nblocks)
    for r in range(n):
        for j in range(nblocks):
            for b in range(block):
                xq[r, j * block + b] = q[b, r * nblocks + j]
    _gemv(xq, sa, wt, swt, 0, wt.shape[1], out)
    zero = np.float32(0.0)
    for r in range(n):
        for o in range(out.shape[1]):
            y = out[r, o]
            if bias.size:
                y = y + bias[o]
            if res.size:
                y = y + res[r, o]
            if relu:
                y = y if (y > zero or y != y) else zero
            if clip:
                y = lo if y < lo else y
                y = hi if y > hi else y
            out[r, o] = y


@numba.njit(cache=True, nogil=True)
def _epilogue(out, o0, o1, n0, n1, bias, res, relu, clip, lo,
              hi):  # pragma: no cover - compiled
    # rows o0 <= o < o1, columns n0 <= n < n1 of out [O, N] in place (a C array, indexed
    # here, so that each row is contiguous to the compiler: a strided view's rows would
    # not vectorize): + bias[o] (if bias.size), + res[o, n] (res [O, N], if res.size), then
    # ReLU as np.maximum(y, 0) does it (a NaN stays, -0 becomes +0), then the clip
    # min(max(y, lo), hi) (a NaN stays); each step in fp32, all in one branch-free pass
    # (selects, not stores under a condition, so that the loop vectorizes)
    zero = np.float32(0.0)
    for o in range(o0, o1):
        y = out[o, n0:n1]
        b = bias[o] if bias.size else zero
        r = res[o, n0:n1] if res.size else y
        for i in range(n1 - n0):
            v = y[i]
            if bias.size:
                v = v + b
            if res.size:
                v = v + r[i]
            if relu:
                v = v if (v > zero or v != v) else zero
            if clip:
                v = lo if v < lo else v
                v = hi if v > hi else v  # after the lower bound: min(max(y, lo), hi)
            y[i] = v


# --- entry points: one worker's share of a product, around the compiled kernels ------
# Each runs in one thread and releases the GIL; npusim.simulator.gemm splits the work between
# the compute threads (npusim.simulator.threads).


def im2col_quantize(xp: np.ndarray, taps: tuple, rows: tuple[int, int], ow: int, strides,
                    block: int, mbits: int, emin: int, emax: int, width: int = 0,
                    short: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Gather and quantize output rows ``rows`` of the padded input ``xp``:
    ``(q [J, B, N] f32, sa [J, N] f32)``, or ``width`` columns, the last ones padding
    (zero mantissas, NaN scales). With ``short``, one block longer than K (ms-fp8/9's 128
    on a small layer) comes as its K rows, without the zero rows of its padding."""
    kc = taps[0]
    n = max(width, (rows[1] - rows[0]) * ow)
    nblocks = -(-kc.shape[0] // block)
    depth = kc.shape[0] if short and nblocks == 1 else block
    q = np.empty((nblocks, depth, n), np.float32)
    sa = np.empty((nblocks, n), np.float32)
    _im2col_quantize(xp, *taps, rows[0], rows[1], ow, strides[0], strides[1], mbits, emin,
                     emax, q, sa)
    return q, sa


def im2col(xp: np.ndarray, taps: tuple, rows: tuple[int, int], ow: int,
           strides) -> np.ndarray:
    """The fp32 columns ``[K, N]`` of output rows ``rows`` of the padded input ``xp``."""
    cols = np.empty((taps[0].shape[0], (rows[1] - rows[0]) * ow), np.float32)
    _im2col(xp, *taps, rows[0], rows[1], ow, strides[0], strides[1], cols)
    return cols


epilogue = _epilogue
"""``epilogue(out [O, N], o0, o1, n0, n1, bias [O] or empty, res [O, N] or empty, relu,
clip, lo, hi)``: rows ``[o0, o1)`` and columns ``[n0, n1)`` in place."""

accumulate_cols = _accumulate_cols
"""``accumulate_cols(partials [J, O, N], sw [J, O], sa [J, N], out [O, >= n0 + N], n0)``:
the block products summed in the device's order into columns ``n0...`` of ``out``."""

dense_rows = _dense_rows
"""``dense_rows(x [N, K], wt, swt, block, mbits, emin, emax, bias, res, relu, clip, lo, hi,
out [N, O])``: a small product of a few rows with its epilogue, in one call on one thread
(the weights as :data:`gemv` reads them)."""

gemv = _gemv
"""``gemv(xq, sa, wt, swt, o0, o1, out)``: outputs ``o0:o1`` of a product of a few rows,
from the weights transposed (``[K, O]`` int8, scales ``[J, O]``)."""
