# SPDX-License-Identifier: Apache-2.0
"""Block products on the CPU's 8-bit dot-product instruction (AVX-512 VNNI ``vpdpbusd``).

A block format's product is exact integer block dot products, each added to its output
in fp32 in block order (:mod:`npusim.simulator.numerics`). With mantissas of at most 7 bits
the block dot products fit the integer unit's byte products: ``vpdpbusd`` multiplies four
unsigned bytes by four signed ones and adds the four products to a 32-bit lane, 64
multiply-adds per instruction where an fp32 FMA does 16. The vectorized operand is
stored offset by 128 (as unsigned bytes); each block's accumulator starts at ``-128 *
sum(w)`` of its broadcast operand's block, which takes the offset off exactly.

The operands, every array C-contiguous:

* ``X`` uint8 ``[J, Q, M, 4]``: the vectorized operand, mantissa + 128; elements
  ``4q...4q+3`` of column ``m``'s block ``j`` at ``X[j, q, m]``; ``M`` a multiple of 16.
* ``W`` int8 ``[R, J, Q, 4]``: the broadcast operand; ``R`` a multiple of ``ROWS``.
* ``C`` int32 ``[R, J]``: ``-128 * W[r, j].sum()``.
* ``T`` float32 ``[R, J]`` and ``S`` float32 ``[J, M]``: the two operands' block scales
  (NaN on padding columns).
* ``out`` float32 ``[R, M]``: ``out[r, m] = sum_j fp32(P_j[r, m] * T[r, j] * S[j, m])``
  in block order, from 0.

A tile of ``ROWS`` rows by 16 columns keeps its eight int32 block accumulators and eight
fp32 outputs in registers for the whole of K. The update ``a = fma(P, S * T, a)`` is the
golden model's ``fp32(a + P * s)`` when every scale product of the tile's rows is a
normal number of at most ``2**103`` (``P`` is below ``2**24``, so ``P * s`` is then exact
and finite, and the fused multiply-add rounds once, as the separate operations do);
rows with any other take the float64 path of
:func:`npusim.simulator._fast_gemm._accumulate_block`.

The instruction is compiled only where the CPU has it (:data:`AVAILABLE`): LLVM cannot
lower it for any other, and the callers then take :mod:`npusim.simulator._tiles` or BLAS.
``NPUSIM_VNNI=0`` turns it off.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.simulator._fast_gemm import (_accumulate_block, _gather, _quantize_block,
                                         _scale_range)

ROWS = 8
"""Rows of the broadcast operand per tile (their accumulators live in registers)."""

LANES = 16
"""Columns per tile: one 512-bit vector of int32 (or fp32) lanes."""

CHUNK_BYTES = 1 << 17
"""Bytes of the vectorized operand a pass over the row tiles reads (it stays in L2)."""

_MIN_NORMAL = 2.0**-126
_MAX_EXACT = 2.0**(127 - 24)


def _host_has_vnni() -> bool:
    """Whether numba compiles for a CPU with AVX-512 VNNI (the host, unless
    ``NUMBA_CPU_NAME`` names another, when its ``NUMBA_CPU_FEATURES`` decide)."""
    if os.environ.get("NPUSIM_VNNI", "1") == "0":
        return False
    needed = ("avx512f", "avx512bw", "avx512vnni")
    cpu = numba.config.CPU_NAME
    if cpu and cpu != "host":
        given = set((numba.config.CPU_FEATURES or "").split(","))
        return all(f"+{f}" in given for f in needed)
    try:
        import llvmlite.binding as ll
        features = ll.get_host_cpu_features()
    except Exception:  # noqa: BLE001 - any failure to read them means: don't use it
        return False
    return all(features.get(f, False) for f in needed)


AVAILABLE = _host_has_vnni()
"""Whether the instruction may be compiled here."""


def supports(block: int, mbits: int) -> bool:
    """Whether a format's blocks go through these kernels: int8 mantissas of at most 7
    bits (their offset form is a byte), whole quads, and block products below 2**24."""
    return (AVAILABLE and mbits <= 7 and block % 4 == 0
            and block * ((1 << mbits) - 1) ** 2 < 1 << 24)


_I32, _F32 = ir.IntType(32), ir.FloatType()
_V16I, _V16F = ir.VectorType(_I32, LANES), ir.VectorType(_F32, LANES)


def _splat(builder, value, vty):
    undef = ir.Constant(vty, None)
    v = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, LANES),
                                                        [0] * LANES))


@intrinsic
def _tile(typingctx, x, xq, xj, w, wr, c, cr, t, tr, s, sj, a, ar, nblocks, nq):
    """One tile: ``ROWS`` rows of ``W`` against 16 columns of ``X``, all blocks; every
    argument a byte address or a byte stride (``xq``, ``xj``: one quad, one block of
    ``X``; ``wr``, ``cr``, ``tr``: one row of ``W``, ``C``, ``T``; ``sj``: one block of
    ``S``; ``ar``: one row of the output), then the block and quad counts."""
    sig = types.void(*([types.intp] * 15))

    def codegen(context, builder, signature, args):
        x, xq, xj, w, wr, c, cr, t, tr, s, sj, a, ar, nblocks, nq = args
        intp = context.get_value_type(types.intp)
        mod = builder.module
        dot = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_V16I, [_V16I, _V16I, _V16I]), "llvm.x86.avx512.vpdpbusd.512")
        fma = cgutils.get_or_insert_function(
            mod, ir.FunctionType(_V16F, [_V16F, _V16F, _V16F]), "llvm.fma.v16f32")

        def const(n):
            return ir.Constant(intp, n)

        def at(addr, ty):
            return builder.inttoptr(addr, ty.as_pointer())

        def row(base, stride, r, offset):
            return builder.add(base, builder.add(builder.mul(const(r), stride), offset))

        acc = [cgutils.alloca_once_value(builder, ir.Constant(_V16F, [0.0] * LANES))
               for _ in range(ROWS)]
        dots = [cgutils.alloca_once(builder, _V16I) for _ in range(ROWS)]
        with cgutils.for_range(builder, nblocks) as blocks:
            j = blocks.index
            j4 = builder.mul(j, const(4))
            for r in range(ROWS):
                start = builder.load(at(row(c, cr, r, j4), _I32))
                builder.store(_splat(builder, start, _V16I), dots[r])
            xb = builder.add(x, builder.mul(j, xj))
            wb = builder.mul(builder.mul(j, nq), const(4))
            with cgutils.for_range(builder, nq) as quads:
                q = quads.index
                xv = builder.load(at(builder.add(xb, builder.mul(q, xq)), _V16I), align=1)
                wq = builder.add(wb, builder.mul(q, const(4)))
                for r in range(ROWS):
                    wv = builder.load(at(row(w, wr, r, wq), _I32), align=4)
                    builder.store(builder.call(dot, [builder.load(dots[r]), xv,
                                                     _splat(builder, wv, _V16I)]), dots[r])
            sv = builder.load(at(builder.add(s, builder.mul(j, sj)), _V16F), align=4)
            for r in range(ROWS):
                tv = _splat(builder, builder.load(at(row(t, tr, r, j4), _F32)), _V16F)
                p = builder.sitofp(builder.load(dots[r]), _V16F)
                builder.store(builder.call(fma, [p, builder.fmul(sv, tv), builder.load(acc[r])]),
                              acc[r])
        for r in range(ROWS):
            builder.store(builder.load(acc[r]), at(row(a, ar, r, const(0)), _V16F), align=4)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, inline="always")
def _slow_row(X, W, T, S, r, i, lo, hi, p, a):  # pragma: no cover - compiled
    # row r, columns i...i+15, every block: integer products then the float64-safe update
    a[:] = 0.0
    for j in range(X.shape[0]):
        p[:] = 0.0
        for q in range(X.shape[1]):
            for b in range(4):
                wv = np.float32(W[r, j, q, b])
                for n in range(LANES):
                    p[n] += wv * np.float32(np.int32(X[j, q, i + n, b]) - 128)
        _accumulate_block(a, p, S[j, i:i + LANES], np.float64(T[r, j]), lo[j], hi[j])


@numba.njit(cache=True, nogil=True)
def product(X, W, C, T, S, r0, r1, out):  # pragma: no cover - compiled
    """``out[r - r0, :]`` for rows ``r0 <= r < r1`` (``r0``, ``r1`` multiples of ``ROWS``)."""
    nblocks, nq, m = X.shape[0], X.shape[1], X.shape[2]
    lo = np.empty(nblocks, np.float64)
    hi = np.empty(nblocks, np.float64)
    for j in range(nblocks):
        lo[j], hi[j] = _scale_range(S[j])
    fast = np.empty(r1 - r0, np.bool_)
    for r in range(r0, r1):
        ok = True
        for j in range(nblocks):
            s = np.float64(T[r, j])
            ok = ok and lo[j] * s >= _MIN_NORMAL and hi[j] * s <= _MAX_EXACT
        fast[r - r0] = ok
    p = np.empty(LANES, np.float32)
    a = np.empty(LANES, np.float32)
    xa, wa, ca = np.intp(X.ctypes.data), np.intp(W.ctypes.data), np.intp(C.ctypes.data)
    ta, sa, oa = np.intp(T.ctypes.data), np.intp(S.ctypes.data), np.intp(out.ctypes.data)
    xq, xj = m * 4, nq * m * 4
    wr, cr, sj, orow = nblocks * nq * 4, nblocks * 4, m * 4, out.shape[1] * 4
    chunk = max(LANES, CHUNK_BYTES // max(1, nblocks * nq * 4) // LANES * LANES)
    for m0 in range(0, m, chunk):
        for ra in range(r0, r1, ROWS):
            tiled = fast[ra - r0:ra - r0 + ROWS].all()
            for i in range(m0, min(m, m0 + chunk), LANES):
                if tiled:
                    _tile(xa + i * 4, xq, xj, wa + ra * wr, wr, ca + ra * cr, cr,
                          ta + ra * cr, cr, sa + i * 4, sj, oa + (ra - r0) * orow + i * 4,
                          orow, nblocks, nq)
                else:
                    for r in range(ra, ra + ROWS):
                        _slow_row(X, W, T, S, r, i, lo, hi, p, a)
                        out[r - r0, i:i + LANES] = a


def pack_weights(q: np.ndarray, scales: np.ndarray, block: int, quads: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(W, C, T)`` of int8 mantissas ``q [O, J * block]`` and float32 scales
    ``[O, J]``: rows padded with zeros to a multiple of ``ROWS``, each block cut to its
    first ``quads`` quads (a short single block keeps its ``K`` rows and the padding to a
    quad)."""
    o, kp = q.shape
    nblocks = kp // block
    rows = -(-o // ROWS) * ROWS
    w = np.zeros((rows, nblocks, quads * 4), np.int8)
    w[:o] = q.reshape(o, nblocks, block)[:, :, :quads * 4]
    c = -128 * w.astype(np.int32).sum(axis=2, dtype=np.int32)
    t = np.ones((rows, nblocks), np.float32)
    t[:o] = scales
    return (np.ascontiguousarray(w.reshape(rows, nblocks, quads, 4)),
            np.ascontiguousarray(c, np.int32), t)


@numba.njit(cache=True, nogil=True)
def _im2col_quads(xp, kc, ky, kx, oy0, oy1, ow, sy, sx, block, mbits, emin, emax, X,
                  sa):  # pragma: no cover - compiled
    # _fast_gemm._im2col_quantize into X [J, Q, M, 4] (mantissa + 128) and sa [J, M];
    # columns past N = (oy1 - oy0) * ow are padding: zero mantissas, NaN scales
    nk = kc.shape[0]
    nblocks, nq = X.shape[0], X.shape[1]
    n = (oy1 - oy0) * ow
    sa[:, n:] = np.nan
    v = np.empty((block, n), np.float32)
    q = np.empty((block, n), np.float32)
    scratch = np.empty((3, n), np.float64)
    for j in range(nblocks):
        nb = min(block, nk - j * block)
        for b in range(nb):
            k = j * block + b
            _gather(xp, kc[k], ky[k], kx[k], oy0, oy1, ow, sy, sx, v[b])
        _quantize_block(v, nb, mbits, emin, emax, q, sa[j], scratch)
        for qq in range(nq):
            xq = X[j, qq]
            for i in range(n):
                for b in range(4):
                    xq[i, b] = np.uint8(np.int32(q[4 * qq + b, i]) + 128)
            xq[n:, :] = 128


def im2col_quantize(xp: np.ndarray, taps: tuple, rows: tuple[int, int], ow: int, strides,
                    block: int, mbits: int, emin: int, emax: int, quads: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Output rows ``rows`` of the padded input ``xp`` gathered and quantized as
    :func:`npusim.simulator._fast_gemm.im2col_quantize` does, laid out as :func:`product`'s
    vectorized operand: ``(X [J, quads, M, 4] uint8, S [J, M] float32)``, ``M`` the
    pixels rounded up to whole tiles."""
    n = (rows[1] - rows[0]) * ow
    width = -(-n // LANES) * LANES
    nblocks = -(-taps[0].shape[0] // block)
    x = np.empty((nblocks, quads, width, 4), np.uint8)
    s = np.empty((nblocks, width), np.float32)
    _im2col_quads(xp, *taps, rows[0], rows[1], ow, strides[0], strides[1], block, mbits,
                  emin, emax, x, s)
    return x, s
