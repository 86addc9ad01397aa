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

from npusim.simulator._fast_gemm import (
    _accumulate_block,
    _gather_block,
    _scale_range,
    quantize_block_call,
)
from npusim.simulator.cpu import host_has

ROWS = 8
"""Rows of the broadcast operand per tile (their accumulators live in registers)."""

LANES = 16
"""Columns per tile: one 512-bit vector of int32 (or fp32) lanes."""

CHUNK_BYTES = 1 << 17
"""Bytes of the vectorized operand a pass over the row tiles reads (it stays in L2)."""

_MIN_NORMAL = 2.0**-126
_MAX_EXACT = 2.0**(127 - 24)


AVAILABLE = (os.environ.get("NPUSIM_VNNI", "1") != "0"
             and host_has("avx512f", "avx512bw", "avx512vnni"))
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
    """One tile: ``ROWS`` rows of ``W`` against 16 columns of ``X``, all blocks. Every
    argument is a byte address or a byte stride: ``x`` and ``s``, the tile's first column
    of ``X`` and ``S`` (to which block ``j`` adds ``xj[j]``, ``sj[j]``: the addresses of
    two int64 tables), ``xq`` one quad of ``X``; ``wr``, ``cr``, ``tr`` one row of ``W``,
    ``C``, ``T``; ``ar`` one row of the output; then the block and quad counts."""
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
            j8 = builder.mul(j, const(8))
            for r in range(ROWS):
                start = builder.load(at(row(c, cr, r, j4), _I32))
                builder.store(_splat(builder, start, _V16I), dots[r])
            xb = builder.add(x, builder.load(at(builder.add(xj, j8), intp)))
            wb = builder.mul(builder.mul(j, nq), const(4))
            with cgutils.for_range(builder, nq) as quads:
                q = quads.index
                xv = builder.load(at(builder.add(xb, builder.mul(q, xq)), _V16I), align=1)
                wq = builder.add(wb, builder.mul(q, const(4)))
                for r in range(ROWS):
                    wv = builder.load(at(row(w, wr, r, wq), _I32), align=4)
                    builder.store(builder.call(dot, [builder.load(dots[r]), xv,
                                                     _splat(builder, wv, _V16I)]), dots[r])
            sb = builder.add(s, builder.load(at(builder.add(sj, j8), intp)))
            sv = builder.load(at(sb, _V16F), align=4)
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
def _slow_row(X, xj, xq, W, T, S, sj, r, i, lo, hi, p, a):  # pragma: no cover - compiled
    # row r, columns i...i+15, every block: integer products then the float64-safe update
    a[:] = 0.0
    for j in range(W.shape[1]):
        p[:] = 0.0
        for q in range(W.shape[2]):
            base = xj[j] + q * xq + i * 4
            for b in range(4):
                wv = np.float32(W[r, j, q, b])
                for n in range(LANES):
                    p[n] += wv * np.float32(np.int32(X[base + n * 4 + b]) - 128)
        s0 = sj[j] // 4 + i
        _accumulate_block(a, p, S[s0:s0 + LANES], np.float64(T[r, j]), lo[j], hi[j])


@numba.njit(cache=True, nogil=True)
def _product(X, xj, xq, W, C, T, S, sj, lo, hi, m0, m1, r0, r1,
             out):  # pragma: no cover - compiled
    # out[r - r0, m - m0] for rows r0 <= r < r1 (multiples of ROWS) and the tiles of
    # columns m0 <= m < m1; X (uint8) and S (float32) flat, block j's column 0 at byte
    # xj[j] of X (its quads xq bytes apart) and byte sj[j] of S; lo, hi: the smallest and
    # largest scale each block of S may have
    nblocks, nq = W.shape[1], W.shape[2]
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
    xja, sja = np.intp(xj.ctypes.data), np.intp(sj.ctypes.data)
    wr, cr, orow = nblocks * nq * 4, nblocks * 4, out.shape[1] * 4
    chunk = max(LANES, CHUNK_BYTES // max(1, nblocks * nq * 4) // LANES * LANES)
    for c0 in range(m0, m1, chunk):
        for ra in range(r0, r1, ROWS):
            tiled = fast[ra - r0:ra - r0 + ROWS].all()
            for i in range(c0, min(m1, c0 + chunk), LANES):
                o = oa + (ra - r0) * orow + (i - m0) * 4
                if tiled:
                    _tile(xa + i * 4, xq, xja, wa + ra * wr, wr, ca + ra * cr, cr,
                          ta + ra * cr, cr, sa + i * 4, sja, o, orow, nblocks, nq)
                else:
                    for r in range(ra, ra + ROWS):
                        _slow_row(X, xj, xq, W, T, S, sj, r, i, lo, hi, p, a)
                        out[r - r0, i - m0:i - m0 + LANES] = a


@numba.njit(cache=True, nogil=True)
def product(X, W, C, T, S, r0, r1, out):  # pragma: no cover - compiled
    """``out[r - r0, :]`` for rows ``r0 <= r < r1`` (``r0``, ``r1`` multiples of ``ROWS``)."""
    nblocks, nq, m = X.shape[0], X.shape[1], X.shape[2]
    lo = np.empty(nblocks, np.float64)
    hi = np.empty(nblocks, np.float64)
    xj = np.empty(nblocks, np.int64)
    sj = np.empty(nblocks, np.int64)
    for j in range(nblocks):
        lo[j], hi[j] = _scale_range(S[j])
        xj[j] = j * nq * m * 4
        sj[j] = j * m * 4
    _product(X.reshape(-1), xj, m * 4, W, C, T, S.reshape(-1), sj, lo, hi, 0, m, r0, r1, out)


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
    # _fast_gemm._im2col_quantize into X [J, Q, M] (uint32 quads of mantissas + 128) and
    # sa [J, M];
    # columns past N = (oy1 - oy0) * ow are padding: zero mantissas, NaN scales
    nblocks, nq = X.shape[0], X.shape[1]
    n = (oy1 - oy0) * ow
    sa[:, n:] = np.nan
    # as many rows as a block gathers or the quads read (ms-fp8's blocks of 128 on a
    # layer of K = 34 gather 34: 128 rows allocated and zeroed a call were a fifth of a
    # grouped 1x1 convolution's time)
    v = np.empty((max(min(block, kc.shape[0]), 4 * nq), n), np.float32)
    scratch = np.empty((3, n), np.float64)
    for j in range(nblocks):
        nb = _gather_block(xp, kc, ky, kx, j * block, block, oy0, oy1, ow, sy, sx, v)
        v[nb:4 * nq] = 0.0
        _quantize_quads(v, 0, 0, n, nb, mbits, emin, emax, X[j], 0, sa[j], scratch)
        X[j, :, n:] = 0x80808080


def quad_view(x: np.ndarray) -> np.ndarray:
    """The kernel's vectorized operand ``[..., M, 4]`` uint8 as uint32 ``[..., M]``."""
    return x.view(np.uint32)[..., 0]


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
                  emin, emax, quad_view(x), s)
    return x, s


@numba.njit(cache=True, inline="always")
def _pack(q, n, nq, X, p0):  # pragma: no cover - compiled
    # mantissas q [B, >= n] (float32) + 128 into X [Q, p0:p0 + n] (uint32: a quad's four
    # bytes, element 4 * qq + b in byte b, little-endian), so that the loop vectorizes
    for qq in range(nq):
        dst = X[qq, p0:p0 + n]
        m0, m1, m2, m3 = q[4 * qq], q[4 * qq + 1], q[4 * qq + 2], q[4 * qq + 3]
        for i in range(n):
            dst[i] = (np.uint32(np.int32(m0[i]) + 128)
                      | (np.uint32(np.int32(m1[i]) + 128) << 8)
                      | (np.uint32(np.int32(m2[i]) + 128) << 16)
                      | (np.uint32(np.int32(m3[i]) + 128) << 24))


@numba.njit(cache=True, nogil=True)  # a call (a step's worth of work): compiled once
def _quantize_quads(vs, v0, c0, n, nb, mbits, emin, emax, X, p0, sa,
                    scratch):  # pragma: no cover - compiled
    """:func:`npusim.simulator._fast_gemm._quantize_block` straight into the kernel's
    layout: ``v = vs[v0:v0 + 4Q, c0:c0 + n]`` (rows ``nb...4Q`` zero; ``vs`` C-contiguous,
    so that the loops vectorize) into ``X [Q, p0:p0 + n]`` (uint32 quads of mantissas +
    128; ``X`` C-contiguous too) and ``sa [n]``, without the float32 mantissas in between. The same
    steps in fp32 (the block maximum from the bits, its exponent clamped, the multiplier
    and scale built from bits, round half to even); a format or a block that needs the
    float64 quantizer takes it, then :func:`_pack`."""
    nq = X.shape[0]
    lowest = mbits - 126
    bits = scratch[0, :n].view(np.int32)[:n]  # max |x| as bits
    multi = scratch[1, :n].view(np.int32)[:n]  # 2**(M-1-e) as bits (0 for no live value)
    scalei = scratch[2, :n].view(np.int32)[:n]  # 2**(e-M+1) as bits
    tiny = 1 if emin < -127 else 0
    if not tiny:
        bits[:] = 0
        vbits = vs.view(np.int32)
        mask = np.int32(0x7FFFFFFF)
        for b in range(nb):
            row = vbits[v0 + b, c0:c0 + n]
            for i in range(n):
                a = np.int32(row[i] & mask)
                m = bits[i]
                bits[i] = a if a > m else m
        for i in range(n):
            e = min(max(((bits[i] >> 23) & 255) - 127, emin), emax)
            live = bits[i] > 0 and bits[i] < 0x7F800000
            tiny += 1 if live and e < lowest else 0
            e = max(e, lowest)
            multi[i] = (mbits - 1 - e + 127) << 23 if live else 0
            scalei[i] = (e - mbits + 1 + 127) << 23
    if tiny:
        v = np.zeros((max(nb, 4 * nq), n), np.float32)
        for b in range(nb):
            v[b] = vs[v0 + b, c0:c0 + n]
        q = np.empty((v.shape[0], n), np.float32)
        quantize_block_call(v, nb, mbits, emin, emax, q, sa, scratch)
        _pack(q, n, nq, X, p0)
        return
    amax = bits.view(np.float32)
    mult = multi.view(np.float32)
    scale = scalei.view(np.float32)
    one, nan = np.float32(1.0), np.float32(np.nan)
    for i in range(n):
        s = scale[i] if np.rint(amax[i] * mult[i]) != 0.0 else one  # all mantissas zero
        sa[i] = s if bits[i] < 0x7F800000 else nan
    max_m = np.float32((1 << mbits) - 1)
    for qq in range(nq):
        r = v0 + 4 * qq
        r0, r1 = vs[r, c0:c0 + n], vs[r + 1, c0:c0 + n]
        r2, r3 = vs[r + 2, c0:c0 + n], vs[r + 3, c0:c0 + n]
        dst = X[qq, p0:p0 + n]
        for i in range(n):
            f = mult[i]
            dst[i] = (_byte(r0[i], f, max_m) | (_byte(r1[i], f, max_m) << 8)
                      | (_byte(r2[i], f, max_m) << 16) | (_byte(r3[i], f, max_m) << 24))


@numba.njit(cache=True, inline="always")
def _byte(x, f, max_m):  # pragma: no cover - compiled
    # one element's mantissa + 128 as uint32: round |x| * f half to even, clamp, sign
    m = abs(x) * f
    m = min(np.rint(m), max_m) if m == m else np.float32(0.0)  # inf * 0: a non-finite block
    k = np.int32(m)
    return np.uint32((-k if x < 0 else k) + 128)


@numba.njit(cache=True, nogil=True)
def quantize_planes(xp, sy, sx, block, mbits, emin, emax, c0, c1, X,
                    S):  # pragma: no cover - compiled
    """Channel blocks ``c0 <= cb < c1`` of the padded planes ``xp [C, Hp, Wp]`` quantized
    once for every window that reads them, in their ``sy * sx`` stride phases: phase
    ``(py, px)`` is the plane of pixels ``(py + y * sy, px + x * sx)``, ``Hq x Wq``
    (``ceil(Hp / sy) x ceil(Wp / sx)``, zero past the plane), and its pixel ``(y, x)``'s
    block ``cb`` goes to column ``p = (py * sx + px) * Hq * Wq + y * Wq + x`` of ``X[cb]``
    (uint32 ``[CB, Q, L]``, the kernel's layout seen a quad at a time: mantissas + 128)
    and ``S[cb]``; the columns past the phases are zero mantissas, scale 1."""
    hp, wp = xp.shape[1], xp.shape[2]
    hq, wq = -(-hp // sy), -(-wp // sx)
    per = max(1, max(64, 8192 // block) // wq)  # phase rows per step: a step stays in L1
    end = sy * sx * hq * wq
    flat = xp.reshape(xp.shape[0], hp * wp)  # stride 1: the plane is its only phase
    for cb in range(c0, c1):
        for py in range(sy):
            for px in range(sx):
                base = (py * sx + px) * hq * wq
                for y0 in range(0, hq, per):
                    y1 = min(hq, y0 + per)
                    n = (y1 - y0) * wq
                    p0 = base + y0 * wq
                    scratch = np.empty((3, n), np.float64)
                    if sy == 1 and sx == 1:
                        _quantize_quads(flat, cb * block, p0, n, block, mbits, emin, emax,
                                        X[cb], p0, S[cb, p0:p0 + n], scratch)
                        continue
                    v = np.empty((block, n), np.float32)
                    cols = min(wq, -(-(wp - px) // sx))  # the phase's columns in the plane
                    for b in range(block):
                        plane = xp[cb * block + b]
                        for y in range(y0, y1):
                            dst = v[b, (y - y0) * wq:(y - y0 + 1) * wq]
                            yy = py + y * sy
                            if yy >= hp:
                                dst[:] = 0.0
                                continue
                            src = plane[yy]
                            for x in range(cols):
                                dst[x] = src[px + x * sx]
                            dst[cols:] = 0.0
                    _quantize_quads(v, 0, 0, n, block, mbits, emin, emax, X[cb], p0,
                                    S[cb, p0:p0 + n], scratch)
        X[cb, :, end:] = 0x80808080
        S[cb, end:] = 1.0


@numba.njit(cache=True)
def plane_tables(S, quads, offsets):  # pragma: no cover - compiled
    """``(xj, sj, lo, hi)`` for :func:`product_planes`: block ``j = tap * CB + cb`` reads
    channel block ``cb`` shifted by ``offsets[tap]`` columns."""
    ncb, width = S.shape
    nblocks = offsets.shape[0] * ncb
    xj = np.empty(nblocks, np.int64)
    sj = np.empty(nblocks, np.int64)
    lo = np.empty(nblocks, np.float64)
    hi = np.empty(nblocks, np.float64)
    for cb in range(ncb):
        smallest, largest = _scale_range(S[cb])
        for tap in range(offsets.shape[0]):
            j = tap * ncb + cb
            xj[j] = (cb * quads * width + offsets[tap]) * 4
            sj[j] = (cb * width + offsets[tap]) * 4
            lo[j], hi[j] = smallest, largest
    return xj, sj, lo, hi


@numba.njit(cache=True, nogil=True)
def product_planes(X, S, tables, W, C, T, m0, m1, r0, r1, out):  # pragma: no cover - compiled
    """A convolution straight from the quantized planes (:func:`quantize_planes`): output
    pixel ``m`` (``oy * Wq + ox``) reads column ``m + offsets[tap]`` for each tap;
    ``out[r - r0, m - m0]`` for the tiles of ``m0 <= m < m1``."""
    xj, sj, lo, hi = tables
    _product(X.reshape(-1), xj, X.shape[2] * 4, W, C, T, S.reshape(-1), sj, lo, hi, m0, m1,
             r0, r1, out)


@numba.njit(cache=True, nogil=True)
def store(t, width, ow, rows, o, plane, base, n0, bias, res, relu, clip, lo, hi, og,
          pad):  # pragma: no cover - compiled
    """``plane[base + r, n0 + y * ow + x] = epilogue(t[r', y * width + x])`` for ``r < o``,
    ``y < rows``, ``x < ow``: a product made at another width moved into place with
    :func:`npusim.simulator._fast_gemm._epilogue`'s steps on the way (+ bias, + residual,
    ReLU, clip; each in fp32). Row ``r`` of the output is row ``r' = r // og * pad +
    r % og`` of ``t`` (``og = pad = o``: the same row; else groups of ``og`` rows each
    padded to ``pad``)."""
    zero = np.float32(0.0)
    for r in range(o):
        dst = plane[base + r, n0:n0 + rows * ow]
        b = bias[base + r] if bias.size else zero
        rr = res[base + r, n0:n0 + rows * ow] if res.size else dst
        tr = r // og * pad + r % og
        for y in range(rows):
            src = t[tr, y * width:y * width + ow]
            for x in range(ow):
                v = src[x]
                if bias.size:
                    v = v + b
                if res.size:
                    v = v + rr[y * ow + x]
                if relu:
                    v = v if (v > zero or v != v) else zero
                if clip:
                    v = lo if v < lo else v
                    v = hi if v > hi else v
                dst[y * ow + x] = v
