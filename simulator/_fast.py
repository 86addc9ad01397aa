# SPDX-License-Identifier: Apache-2.0
"""numba kernels with the same contract as their numpy references in ``numerics``.

A differential test (``tests/simulator/test_numerics.py``) runs each against its
reference over every format; the simulator uses these by default. Kernels are
compiled on first call (and cached on disk), never at import.
"""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from npusim.simulator import threads


@numba.njit(cache=True)
def _accumulate(partials, a_scale, w_scale, out):  # pragma: no cover - compiled
    nblocks, rows, cols = partials.shape
    for n in range(rows):
        for o in range(cols):
            acc = np.float32(0.0)
            for j in range(nblocks):
                d = np.float32(np.float64(partials[j, n, o]) * a_scale[n, j] * w_scale[o, j])
                acc = np.float32(acc + d)
            out[n, o] = acc


def accumulate_blocks(partials: np.ndarray, a_scale: np.ndarray,
                      w_scale: np.ndarray) -> np.ndarray:
    """numba version of :func:`npusim.simulator.numerics.accumulate_blocks_reference`:
    float32 or float64 partials as they come, Python-integer ones as ``hi * 2**32 + lo``."""
    out = np.empty(partials.shape[1:], dtype=np.float32)
    a_scale = np.ascontiguousarray(a_scale, dtype=np.float64)
    w_scale = np.ascontiguousarray(w_scale, dtype=np.float64)
    if partials.dtype == object:
        hi = (partials >> 32).astype(np.int64)
        lo = (partials & 0xFFFFFFFF).astype(np.int64)
        _accumulate_wide(hi, lo, a_scale, w_scale, out)
        return out
    dtype = np.float64 if partials.dtype == np.float64 else np.float32
    _accumulate(np.ascontiguousarray(partials, dtype=dtype), a_scale, w_scale, out)
    return out


@numba.njit(cache=True, inline="always")
def _wide_product(hi, lo, scale, word):  # pragma: no cover - compiled
    """``fp32(p * scale)`` for ``p = hi * 2**32 + lo`` (``0 <= lo < 2**32``), rounded once.

    ``s + err`` is ``p`` exactly (TwoSum of two exact float64 halves); scaling by a power
    of two keeps both exact. ``s`` is then rounded to odd (an inexact result gets an odd
    last bit), and a float64 rounded to odd rounds to fp32 as the exact value would,
    since 53 >= 24 + 2. ``word`` is a float64 [1] scratch with an int64 view ``word[1]``.
    """
    a = np.float64(hi) * 4294967296.0
    b = np.float64(lo)
    s = a + b
    bb = s - a
    err = (a - (s - bb)) + (b - bb)
    s *= scale
    err *= scale
    if err != 0.0 and s == s:
        word[0][0] = s
        if (word[1][0] & 1) == 0:
            word[1][0] += 1 if (err > 0.0) == (s > 0.0) else -1
        s = word[0][0]
    return np.float32(s)


@numba.njit(cache=True)
def _accumulate_wide(hi, lo, a_scale, w_scale, out):  # pragma: no cover - compiled
    nblocks, rows, cols = hi.shape
    f = np.empty(1, np.float64)
    word = (f, f.view(np.int64))
    for n in range(rows):
        for o in range(cols):
            acc = np.float32(0.0)
            for j in range(nblocks):
                d = _wide_product(hi[j, n, o], lo[j, n, o], a_scale[n, j] * w_scale[o, j],
                                  word)
                acc = np.float32(acc + d)
            out[n, o] = acc


_EXACT_BYTES = 1 << 24
"""Bytes of float64 block partials made at a time by :func:`matmul_exact`."""


def matmul_exact(aq: np.ndarray, wq: np.ndarray, block: int, a_scale: np.ndarray,
                 w_scale: np.ndarray, wide: bool) -> np.ndarray:
    """``[N, O]`` fp32: the block product of any format, a slice of rows at a time.

    The integer block partials are float64 GEMMs (exact below 2**53); ``wide`` (partials
    up to 2**72, mxfp8_e5m2) splits each ``q`` into 16-bit halves, makes the three exact
    half-product GEMMs and joins them as ``hi * 2**32 + lo`` in int64 for
    :func:`_wide_product`. Same result as the reference, bit for bit.
    """
    n, kp = aq.shape
    o = wq.shape[0]
    nblocks = kp // block
    a_scale = np.ascontiguousarray(a_scale, np.float64)
    w_scale = np.ascontiguousarray(w_scale, np.float64)

    def operand(q, rows, part, order):
        q = q.astype(np.int64)
        if part is not None:
            q = q >> 16 if part == 0 else q & 0xFFFF
        return np.ascontiguousarray(q.astype(np.float64).reshape(rows, nblocks, block)
                                    .transpose(order))

    parts = (0, 1) if wide else (None,)
    ws = [operand(wq, o, p, (1, 2, 0)) for p in parts]
    out = np.empty((n, o), np.float32)
    step = max(1, _EXACT_BYTES // (8 * nblocks * o * (3 if wide else 1)))
    for n0 in range(0, n, step):
        n1 = min(n, n0 + step)
        rows = [operand(aq[n0:n1], n1 - n0, p, (1, 0, 2)) for p in parts]
        sa = np.ascontiguousarray(a_scale[n0:n1])
        if not wide:
            _accumulate(np.matmul(rows[0], ws[0]), sa, w_scale, out[n0:n1])
            continue
        hi = np.matmul(rows[0], ws[0]).astype(np.int64)
        mid = (np.matmul(rows[0], ws[1]) + np.matmul(rows[1], ws[0])).astype(np.int64)
        lo = np.matmul(rows[1], ws[1]).astype(np.int64)
        low = lo + ((mid & 0xFFFF) << 16)
        _accumulate_wide(hi + (mid >> 16) + (low >> 32), low & 0xFFFFFFFF, sa, w_scale,
                         out[n0:n1])
    return out


@numba.njit(cache=True, nogil=True, inline="always")
def _shared_exponent(x, r, start, block, emax_elem, emin, emax):  # pragma: no cover - compiled
    """``(finite, e)`` of the block ``x[r, start:start + block]``: whether every element is
    finite, and its unbiased shared exponent ``clamp(floor(log2 amax) - emax_elem, emin,
    emax)`` (``emin`` for an all-zero block; ``emax_elem`` is 0 for a BFP format)."""
    amax = 0.0
    finite = True
    for b in range(block):
        v = np.float64(x[r, start + b])
        if math.isfinite(v):
            amax = max(amax, abs(v))
        else:
            finite = False
    e = emin
    if amax > 0.0:
        e = min(max(math.frexp(amax)[1] - 1 - emax_elem, emin), emax)
    return finite, e


@numba.njit(cache=True, nogil=True)
def _quantize_rne(x, block, mbits, emin, emax, bias, nan_exp, r0, r1, q,
                  exps):  # pragma: no cover - compiled
    width = x.shape[1]
    nblocks = width // block
    max_m = (1 << mbits) - 1
    for r in range(r0, r1):
        for j in range(nblocks):
            finite, e = _shared_exponent(x, r, j * block, block, 0, emin, emax)
            if not finite:
                exps[r, j] = nan_exp
                for b in range(block):
                    q[r, j * block + b] = 0
                continue
            exps[r, j] = e + bias
            scale = math.ldexp(1.0, mbits - 1 - e)  # exact: a power of two in float64 range
            for b in range(block):
                v = np.float64(x[r, j * block + b])
                m = min(np.rint(abs(v) * scale), np.float64(max_m))
                mi = int(m)
                q[r, j * block + b] = -mi if v < 0 else mi


def quantize_rne(x2d: np.ndarray, block: int, mbits: int, emin: int, emax: int, bias: int,
                 nan_exp: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-even quantization of a padded ``[rows, nblocks * block]`` fp32 matrix."""
    rows, width = x2d.shape
    q = np.empty((rows, width), np.int8)
    exps = np.empty((rows, width // block), np.uint8)
    x2d = np.ascontiguousarray(x2d, dtype=np.float32)

    def share(r0: int, r1: int) -> None:
        _quantize_rne(x2d, block, mbits, emin, emax, bias, nan_exp, r0, r1, q, exps)

    threads.run(share, rows, grain=max(1, (1 << 18) // max(1, width)))
    return q, exps


@numba.njit(cache=True, nogil=True)
def _quantize_mx(x, block, mbits, emax_elem, shift, emin, emax, bias, nan_exp, max_units, away,
                 r0, r1, q, exps):  # pragma: no cover - compiled
    width = x.shape[1]
    nblocks = width // block
    top = np.float64(max_units)
    for r in range(r0, r1):
        for j in range(nblocks):
            finite, e = _shared_exponent(x, r, j * block, block, emax_elem, emin, emax)
            if not finite:
                exps[r, j] = nan_exp
                for b in range(block):
                    q[r, j * block + b] = 0
                continue
            exps[r, j] = e + bias
            scale = math.ldexp(1.0, shift - e)  # exact: a power of two in float64 range
            for b in range(block):
                v = np.float64(x[r, j * block + b])
                a = min(abs(v) * scale, 2.0 * top)
                k = 0
                if a > 0.0:
                    k = max(math.frexp(a)[1] - 1 - mbits, 0)  # the grid steps by 2**k
                t = math.ldexp(a, -k)
                if away:
                    m = math.floor(t)
                    if t - m >= 0.5:
                        m += 1.0
                else:
                    m = np.rint(t)
                u = np.int64(min(math.ldexp(m, k), top))
                q[r, j * block + b] = -u if v < 0 else u


def quantize_mx(x2d: np.ndarray, block: int, mbits: int, emax_elem: int, shift: int, emin: int,
                emax: int, bias: int, nan_exp: int, max_units: int, away: bool,
                q_dtype) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-even or nearest-away quantization of a padded ``[rows, nblocks * block]``
    fp32 matrix to an MX minifloat format (``mbits``: the element's mantissa bits)."""
    rows, width = x2d.shape
    q = np.empty((rows, width), q_dtype)
    exps = np.empty((rows, width // block), np.uint8)
    x2d = np.ascontiguousarray(x2d, dtype=np.float32)

    def share(r0: int, r1: int) -> None:
        _quantize_mx(x2d, block, mbits, emax_elem, shift, emin, emax, bias, nan_exp,
                     max_units, bool(away), r0, r1, q, exps)

    threads.run(share, rows, grain=max(1, (1 << 18) // max(1, width)))
    return q, exps


# --- global average pooling: numpy's float64 mean, pairwise, without the float64 copy ---

_PAIRWISE_BLOCK = 128  # numpy's PW_BLOCKSIZE


@numba.njit(cache=True, nogil=True)
def _pairwise(x, n):  # pragma: no cover - compiled
    # numpy's pairwise_sum of float32 elements in float64 (loops_utils.h.src), same order:
    # below 8 a running sum from -0.0; up to 128, eight running sums then the rest; above,
    # the two halves (the first a multiple of 8 long)
    if n < 8:
        res = -0.0
        for i in range(n):
            res += np.float64(x[i])
        return res
    if n <= _PAIRWISE_BLOCK:
        r0, r1, r2, r3 = (np.float64(x[0]), np.float64(x[1]), np.float64(x[2]),
                          np.float64(x[3]))
        r4, r5, r6, r7 = (np.float64(x[4]), np.float64(x[5]), np.float64(x[6]),
                          np.float64(x[7]))
        i = 8
        while i < n - n % 8:
            r0 += np.float64(x[i])
            r1 += np.float64(x[i + 1])
            r2 += np.float64(x[i + 2])
            r3 += np.float64(x[i + 3])
            r4 += np.float64(x[i + 4])
            r5 += np.float64(x[i + 5])
            r6 += np.float64(x[i + 6])
            r7 += np.float64(x[i + 7])
            i += 8
        res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
        while i < n:
            res += np.float64(x[i])
            i += 1
        return res
    n2 = n // 2
    n2 -= n2 % 8
    return _pairwise(x[:n2], n2) + _pairwise(x[n2:], n - n2)


@numba.njit(cache=True, nogil=True, error_model="numpy")  # 0 / 0 is NaN, as numpy's
def _mean_rows(x, r0, r1, out):  # pragma: no cover - compiled
    # out[r] = fp32(float64 mean of row r of x [R, N]) as numpy's add.reduce (from +0.0,
    # then the pairwise sum) and true_divide by N give it
    n = x.shape[1]
    r = r0
    if n >= 8:  # four rows at a time: their eight running sums of every leaf of the
        # pairwise sum on four vectors of float64 lanes (one row's would wait on each add)
        starts = np.empty(n // 8 + 1, np.int64)  # a leaf holds at least 8
        lens = np.empty(n // 8 + 1, np.int64)
        leaves = _leaves(n, starts, lens)
        sums = np.empty((leaves, 4, 8), np.float64)
        vals = np.empty(leaves, np.float64)
        rows = np.empty(4, np.intp)
        while r + 4 <= r1:
            for k in range(4):
                rows[k] = x[r + k].ctypes.data
            for f in range(leaves):
                _eight_sums4(rows.ctypes.data, starts[f] * 4, lens[f] // 8,
                             sums[f].ctypes.data)
            for k in range(4):
                for f in range(leaves):
                    v = sums[f, k]
                    res = ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))
                    for i in range(starts[f] + lens[f] // 8 * 8, starts[f] + lens[f]):
                        res += np.float64(x[r + k, i])
                    vals[f] = res
                total = vals[0] if leaves == 1 else _tree(n, vals)
                out[r + k] = np.float32((0.0 + total) / n)
            r += 4
    for q in range(r, r1):
        out[q] = np.float32((0.0 + _pairwise(x[q], n)) / n)


@numba.njit(cache=True)
def _leaves(n, starts, lens):  # pragma: no cover - compiled
    # the leaves (8 <= length <= 128) of numpy's pairwise sum of n >= 8 elements, in
    # order, into starts and lens; returns how many (no recursion: numba's cache of a
    # recursive function called from another cached one crashed when loaded)
    todo_n = np.empty(64, np.int64)  # a stack of halves still to cut, first on top
    todo_s = np.empty(64, np.int64)
    todo_n[0], todo_s[0] = n, 0
    top, k = 1, 0
    while top:
        top -= 1
        m, s = todo_n[top], todo_s[top]
        if m <= _PAIRWISE_BLOCK:
            starts[k], lens[k] = s, m
            k += 1
            continue
        n2 = m // 2
        n2 -= n2 % 8
        todo_n[top], todo_s[top] = m - n2, s + n2
        todo_n[top + 1], todo_s[top + 1] = n2, s
        top += 2
    return k


@numba.njit(cache=True)
def _tree(n, vals):  # pragma: no cover - compiled
    # numpy's pairwise sum of n >= 8 elements from its leaves' sums, in order: the
    # recursion's frames on a stack (n, how far along, the first half's sum)
    fn = np.empty(64, np.int64)
    stage = np.zeros(64, np.int64)
    first = np.empty(64, np.float64)
    fn[0] = n
    depth, leaf, ret = 0, 0, 0.0
    while True:
        m = fn[depth]
        n2 = m // 2
        n2 -= n2 % 8
        if m <= _PAIRWISE_BLOCK or stage[depth] == 2:
            if m <= _PAIRWISE_BLOCK:
                ret = vals[leaf]
                leaf += 1
            else:
                ret = first[depth] + ret
            depth -= 1
            if depth < 0:
                return ret
        elif stage[depth] == 0:
            stage[depth] = 1
            depth += 1
            fn[depth], stage[depth] = n2, 0
        else:
            first[depth], stage[depth] = ret, 2
            depth += 1
            fn[depth], stage[depth] = m - n2, 0


@intrinsic
def _eight_sums4(typingctx, rows, offset, vectors, out):
    """For four rows of float32 (their byte addresses in the int64 table ``rows``), from
    byte ``offset`` on: each row's eight running sums ``x[l] + x[8 + l] + ...`` over
    ``vectors`` vectors of 8, in float64, in that order (numpy's), the four rows' chains
    interleaved; into ``out`` float64 ``[4, 8]``."""
    def codegen(context, builder, signature, args):
        rows, offset, vectors, out = args
        b = builder
        v8f, v8d = ir.VectorType(ir.FloatType(), 8), ir.VectorType(ir.DoubleType(), 8)
        intp = rows.type
        bases = [b.add(b.load(b.inttoptr(b.add(rows, ir.Constant(intp, 8 * k)),
                                         intp.as_pointer())), offset) for k in range(4)]

        def load(k, j):
            at = b.add(bases[k], b.mul(j, ir.Constant(intp, 32)))
            return b.fpext(b.load(b.inttoptr(at, v8f.as_pointer()), align=4), v8d)

        one = ir.Constant(intp, 1)
        acc = [cgutils.alloca_once_value(b, load(k, ir.Constant(intp, 0))) for k in range(4)]
        with cgutils.for_range(b, b.sub(vectors, one)) as loop:
            j = b.add(loop.index, one)
            for k in range(4):
                b.store(b.fadd(b.load(acc[k]), load(k, j)), acc[k])
        for k in range(4):
            at = b.add(out, ir.Constant(intp, 64 * k))
            b.store(b.load(acc[k]), b.inttoptr(at, v8d.as_pointer()), align=8)
        return context.get_dummy_value()

    return types.void(types.intp, types.intp, types.intp, types.intp), codegen


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _norm_rows(x, scale, bias, eps, channels, r0, r1, out):  # pragma: no cover - compiled
    # rows r0...r1 of vector.norm_reference's float64 steps: the mean and the mean of the
    # squared deviations as numpy's add.reduce (from +0.0, pairwise) over N, each
    # deviation over sqrt(variance + eps), times the scale plus the bias (no fused
    # multiply-add), rounded once
    n = x.shape[1]
    d = np.empty(n, np.float64)
    dd = np.empty(n, np.float64)
    for r in range(r0, r1):
        row = x[r]
        mu = (0.0 + _pairwise(row, n)) / n
        for j in range(n):
            d[j] = np.float64(row[j]) - mu
        for j in range(n):
            dd[j] = d[j] * d[j]
        den = np.sqrt((0.0 + _pairwise(dd, n)) / n + eps)
        o = out[r]
        if channels:
            s, b = np.float64(scale[r % channels]), np.float64(bias[r % channels])
            for j in range(n):
                o[j] = np.float32(d[j] / den * s + b)
        else:
            for j in range(n):
                o[j] = np.float32(d[j] / den * np.float64(scale[j]) + np.float64(bias[j]))


def norm_rows(x2d: np.ndarray, scale: np.ndarray, bias: np.ndarray, eps: float,
              channels: int) -> np.ndarray:
    """:func:`npusim.simulator.vector.norm_reference`'s bits for a C-contiguous float32
    ``[R, N]``, without its float64 copies; the threads share the rows."""
    out = np.empty(x2d.shape, np.float32)
    threads.run(lambda a, b: _norm_rows(x2d, scale, bias, float(eps), channels, a, b, out),
                x2d.shape[0], grain=max(1, (1 << 15) // max(1, x2d.shape[1])))
    return out


@numba.njit(cache=True, nogil=True)
def softmax_shift(x, z):  # pragma: no cover - compiled
    """``z[r] = float64(x[r]) - max(float64(x[r]))`` per row of ``x [R, N]``, a NaN
    anywhere in a row making its maximum NaN (numpy's ``max``); the sign of a zero
    maximum does not matter here (only ``exp(z)`` is read)."""
    for r in range(x.shape[0]):
        row = x[r]
        m = np.float64(row[0])
        for j in range(1, row.size):
            v = np.float64(row[j])
            m = v if (v > m or v != v) and m == m else m
        zr = z[r]
        for j in range(row.size):
            zr[j] = np.float64(row[j]) - m


@numba.njit(cache=True, nogil=True, error_model="numpy")
def softmax_scale(e, out):  # pragma: no cover - compiled
    """``out[r] = fp32(e[r] / sum(e[r]))`` per row of ``e [R, N]`` float64, the sum as
    numpy's add.reduce over the last axis (from +0.0, pairwise)."""
    n = e.shape[1]
    for r in range(e.shape[0]):
        total = 0.0 + _pairwise(e[r], n)
        er, o = e[r], out[r]
        for j in range(n):
            o[j] = np.float32(er[j] / total)


def mean_rows(x2d: np.ndarray) -> np.ndarray:
    """``x2d.astype(float64).mean(axis=1).astype(float32)`` of a C-contiguous float32
    ``[R, N]``, bit for bit, with no float64 copy; the threads share the rows."""
    out = np.empty(x2d.shape[0], np.float32)
    threads.run(lambda a, b: _mean_rows(x2d, a, b, out), x2d.shape[0],
                grain=max(1, (1 << 16) // max(1, x2d.shape[1])))
    return out


@numba.njit(cache=True)
def _erf(x, out):  # pragma: no cover - compiled
    for k in range(x.size):
        out[k] = math.erf(x[k])


def erf(x: np.ndarray) -> np.ndarray:
    """Element-wise ``erf`` in float64 (numpy has none; scipy is not a dependency)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty(x.shape, np.float64)
    _erf(x.reshape(-1), out.reshape(-1))
    return out


@intrinsic
def _fma64(typingctx, a, b, c):
    """``a * b + c`` rounded once (LLVM's fma, which vectorizes; numba contracts nothing)."""
    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(d, [d, d, d]),
                                           "llvm.fma.f64")
        return builder.call(f, args)
    return types.float64(types.float64, types.float64, types.float64), codegen


_SIXTH = 1.0 / 6.0


@numba.njit(cache=True, inline="always")
def _sixth(v):  # pragma: no cover - compiled
    """``v / 6.0`` in float64 for a float32 ``v`` with ``|v| <= 6``, without a division
    (which does not vectorize well): ``v * (1/6)`` corrected once by its exact remainder
    (a fused multiply-add), as IA-64 divides. Equal to the division for every such float32
    (checked over all 2**32 bit patterns; the uncorrected product differs on 724M of
    them); ``tests/simulator/test_vector_formulas.py`` checks a dense sample."""
    q = v * _SIXTH
    return _fma64(_fma64(-q, 6.0, v), _SIXTH, q)


@numba.njit(cache=True, nogil=True)
def _hard(x, a, b, swish, out):  # pragma: no cover - compiled
    # t = a*x + b (hard sigmoid) or x/6 + 0.5 (hard swish) in float64, then
    # np.maximum(0.0, np.minimum(1.0, t)) as numpy computes it (a NaN stays; -0.0 stays),
    # times x for the swish; one rounding to fp32. The swish's t comes from x clamped to
    # [-6, 6] (beyond +-3 t clamps to 0 or 1 either way; a NaN stays a NaN)
    if swish:
        for k in range(x.size):
            v = np.float64(x[k])
            c = 6.0 if v > 6.0 else v
            c = -6.0 if c < -6.0 else c
            t = _sixth(c) + 0.5
            t = 1.0 if t > 1.0 else t
            t = 0.0 if t < 0.0 else t
            out[k] = np.float32(v * t)
    else:
        for k in range(x.size):
            t = a * np.float64(x[k]) + b
            t = 1.0 if t > 1.0 else t
            t = 0.0 if t < 0.0 else t
            out[k] = np.float32(t)


def hard_sigmoid(x: np.ndarray, alpha: float, beta: float,
                 out: np.ndarray | None = None) -> np.ndarray:
    """fp32 ``max(0, min(1, alpha * x + beta))`` computed in float64, rounded once: the
    numpy formula of :data:`npusim.simulator.vector._WIDE` in one pass; into ``out`` when
    it is a C-contiguous float32 array of ``x``'s shape (``x`` itself, or no memory
    shared with it)."""
    return _hard_call(x, alpha, beta, False, out)


def hard_swish(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """fp32 ``x * max(0, min(1, x / 6 + 0.5))`` computed in float64, rounded once."""
    return _hard_call(x, 0.0, 0.0, True, out)


def out_like(x: np.ndarray, out: np.ndarray | None) -> np.ndarray:
    """``out`` when it can take an element-wise result of ``x`` (a C-contiguous float32
    array of its shape), else a new one."""
    if (out is None or out.shape != x.shape or out.dtype != np.float32
            or not out.flags.c_contiguous):
        return np.empty(x.shape, np.float32)
    return out


def _hard_call(x: np.ndarray, alpha: float, beta: float, swish: bool,
               out: np.ndarray | None) -> np.ndarray:
    x = np.ascontiguousarray(x, np.float32)
    out = out_like(x, out)
    flat, res = x.reshape(-1), out.reshape(-1)
    threads.run(lambda a, b: _hard(flat[a:b], float(alpha), float(beta), swish, res[a:b]),
                flat.size, grain=1 << 15)
    return out




def _reinterpret(source, target, llvm_type):
    """An intrinsic: the ``target`` value whose bits are those of its ``source`` argument."""
    @intrinsic
    def cast(typingctx, bits):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_type)
        return target(source), codegen
    return cast


as_float32 = _reinterpret(types.int32, types.float32, ir.FloatType())
"""The float32 whose bits are the int32 argument."""
