# SPDX-License-Identifier: Apache-2.0
"""fp32 1x1 convolutions at stride 1 on the CPU's 512-bit fused multiply-adds, read in
place and written straight into the output planes with their epilogue.

``out[r, m] = epilogue(sum_c W[r, c] * X[c, m])`` for an input ``X [C, N]`` (``N`` pixels
a plane). A tile of ``ROWS`` output channels by ``COLUMNS`` pixels keeps its sums in 24
vector registers through a chunk of ``K`` (each input channel's three vectors of pixels
times each row's weight broadcast, as :mod:`npusim.simulator._fma`'s tiles). The last
chunk applies the epilogue (+ bias, + residual, ReLU, clip, each in fp32) in the
registers and stores the tile with masks: the rows past ``O`` and the pixels past ``N``
are neither read nor written. An earlier chunk leaves its partial sums in the output,
where the next one reads them back (a slice of columns at a time, so they are in cache).

:mod:`npusim.simulator._fma`'s tiles write a buffer that a second pass moves into place:
MobileNetV2's 16 -> 96 on 112x112 wrote its 4.8 MB twice and read them once more, and
the layers of few input channels on large planes, most of a mobile network's 1x1
convolutions, are bound by those bytes rather than by their multiply-adds."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.simulator._fma import _F32, _V16F, COLUMNS, LANES, ROWS, VECTORS, _fma_v16, _splat
from npusim.simulator._fma_rows import BIAS, CLIP, RELU, RESIDUAL, clip, relu

__all__ = ["ACCUMULATE", "BIAS", "CLIP", "FINAL", "RELU", "RESIDUAL", "conv"]

ACCUMULATE, FINAL = 16, 32
"""Bits of a tile's ``flags`` beside the epilogue's: start from the sums in the output
(a chunk after the first), apply the epilogue (the last chunk)."""


def _tile(rows: int, vectors: int):
    """The intrinsic of one tile of ``rows`` output channels by ``vectors`` vectors of
    pixels over a chunk of ``K`` (see the module's docstring)."""
    @intrinsic
    def tile(typingctx, x, xrow, w, nk, out, orow, res, ncols, nrows, bias, ep, flags):
        """Byte addresses: ``x`` the tile's first pixel of the chunk's first input channel
        (the next channel's ``xrow`` bytes on), ``w`` the row tile's packed weights of the
        chunk (``rows`` floats an input channel), ``out`` and ``res`` the tile's first
        output and residual (rows ``orow`` bytes apart), ``bias`` the row tile's biases,
        ``ep`` float32 ``[lo, hi]``. ``ncols`` pixels (at most ``vectors * LANES``) and
        ``nrows`` rows (more than ``rows``: all) are the output's; ``flags`` the
        epilogue's bits, :data:`ACCUMULATE` and :data:`FINAL`."""
        sig = types.void(*([types.intp] * 12))

        def codegen(context, builder, signature, args):
            x, xrow, w, nk, out, orow, res, ncols, nrows, bias, ep, flags = args
            b = builder
            intp = x.type
            i1v = ir.VectorType(ir.IntType(1), LANES)
            vptr = _V16F.as_pointer()
            masked_load = cgutils.get_or_insert_function(
                b.module, ir.FunctionType(_V16F, [vptr, ir.IntType(32), i1v, _V16F]),
                "llvm.masked.load.v16f32.p0v16f32")
            masked_store = cgutils.get_or_insert_function(
                b.module, ir.FunctionType(ir.VoidType(), [_V16F, vptr, ir.IntType(32), i1v]),
                "llvm.masked.store.v16f32.p0v16f32")
            fma = _fma_v16(b)
            zero = ir.Constant(_V16F, [0.0] * LANES)
            none = ir.Constant(i1v, [0] * LANES)

            def const(n):
                return ir.Constant(intp, n)

            def flag(bit):
                return b.icmp_signed("!=", b.and_(flags, const(bit)), const(0))

            def vector(base, stride, r, v):
                return b.inttoptr(b.add(b.add(base, b.mul(stride, const(r))),
                                        const(v * LANES * 4)), vptr)

            def load(ptr, mask):
                return b.call(masked_load, [ptr, ir.Constant(ir.IntType(32), 4), mask, zero])

            # vector v's lanes: the pixels ncols - v * LANES of its LANES that are the output's
            masks = []
            for v in range(vectors):
                n = b.sub(ncols, const(v * LANES))
                n = b.select(b.icmp_signed("<", n, const(0)), const(0), n)
                n = b.select(b.icmp_signed(">", n, const(LANES)), const(LANES), n)
                bits = b.sub(b.shl(const(1), n), const(1))
                masks.append(b.bitcast(b.trunc(bits, ir.IntType(LANES)), i1v))
            keep = [[b.select(b.icmp_signed("<", const(r), nrows), masks[v], none)
                     for v in range(vectors)] for r in range(rows)]
            acc = [[cgutils.alloca_once_value(b, zero) for _ in range(vectors)]
                   for _ in range(rows)]
            with b.if_then(flag(ACCUMULATE)):
                for r in range(rows):
                    for v in range(vectors):
                        b.store(load(vector(out, orow, r, v), keep[r][v]), acc[r][v])
            with cgutils.for_range(b, nk) as loop:
                k = loop.index
                xk = b.add(x, b.mul(k, xrow))
                xv = [load(vector(xk, const(0), 0, v), masks[v]) for v in range(vectors)]
                wk = b.add(w, b.mul(k, const(rows * 4)))
                for r in range(rows):
                    wv = _splat(b, b.load(b.inttoptr(b.add(wk, const(r * 4)),
                                                     _F32.as_pointer())))
                    for v in range(vectors):
                        b.store(b.call(fma, [wv, xv[v], b.load(acc[r][v])]), acc[r][v])

            def each(fn):  # acc[r][v] = fn(r, v, acc[r][v])
                for r in range(rows):
                    for v in range(vectors):
                        b.store(fn(r, v, b.load(acc[r][v])), acc[r][v])

            def scalar(addr, i):
                return _splat(b, b.load(b.inttoptr(b.add(addr, const(4 * i)),
                                                   _F32.as_pointer())))

            final = flag(FINAL)
            with b.if_then(b.and_(final, flag(BIAS))):
                each(lambda r, v, s: b.fadd(s, scalar(bias, r)))
            with b.if_then(b.and_(final, flag(RESIDUAL))):
                each(lambda r, v, s: b.fadd(s, load(vector(res, orow, r, v), keep[r][v])))
            with b.if_then(b.and_(final, flag(RELU))):
                each(lambda r, v, s: relu(b, s))
            with b.if_then(b.and_(final, flag(CLIP))):
                lo, hi = scalar(ep, 0), scalar(ep, 1)
                each(lambda r, v, s: clip(b, s, lo, hi))
            for r in range(rows):
                for v in range(vectors):
                    b.call(masked_store, [b.load(acc[r][v]), vector(out, orow, r, v),
                                          ir.Constant(ir.IntType(32), 4), keep[r][v]])
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile8x3 = _tile(ROWS, VECTORS)


@numba.njit(cache=True, nogil=True)
def conv(X, W, m0, m1, r0, r1, kc, step, out, bias, res, lo, hi, flags):  # pragma: no cover
    """``out[r, m]`` for rows ``r0 <= r < r1`` (multiples of ``ROWS``; the rows past
    ``out``'s are not made) and pixels ``m0 <= m < m1`` (``m0`` a multiple of
    ``COLUMNS``): ``epilogue(sum_c W[r, c] * X[c, m])``, ``kc`` input channels a chunk,
    ``step`` pixels (a multiple of ``COLUMNS``) at a time. ``X [C, N]``, ``out [O, N]``
    and ``res`` (``[O, N]``, read with :data:`RESIDUAL`) float32 with C-contiguous rows;
    ``W [R / ROWS, C, ROWS]`` from :func:`npusim.simulator._fma.pack_weights`, ``bias``
    float32 ``[R]`` (read with :data:`BIAS`); ``flags`` the epilogue's bits."""
    c = X.shape[0]
    o = out.shape[0]
    ep = np.empty(2, np.float32)
    ep[0], ep[1] = lo, hi
    xa, wa, oa = np.intp(X.ctypes.data), np.intp(W.ctypes.data), np.intp(out.ctypes.data)
    ra, ba, ea = np.intp(res.ctypes.data), np.intp(bias.ctypes.data), np.intp(ep.ctypes.data)
    xrow, orow = np.intp(X.strides[0]), np.intp(out.strides[0])
    rrow = np.intp(res.strides[0]) if flags & RESIDUAL else orow
    if flags & RESIDUAL and rrow != orow:  # the tile reads the residual at orow
        raise ValueError("the residual's rows are not the output's distance apart")
    for s0 in range(m0, m1, step):
        s1 = min(m1, s0 + step)
        for k0 in range(0, c, kc):
            kn = min(c, k0 + kc) - k0
            mode = flags | (ACCUMULATE if k0 else 0) | (FINAL if k0 + kn == c else 0)
            for rt in range(r0, r1, ROWS):
                w = wa + ((rt // ROWS) * c + k0) * ROWS * 4
                for i in range(s0, s1, COLUMNS):
                    _tile8x3(xa + k0 * xrow + i * 4, xrow, w, kn, oa + rt * orow + i * 4, orow,
                             ra + rt * rrow + i * 4, min(COLUMNS, s1 - i), o - rt,
                             ba + rt * 4, ea, mode)
