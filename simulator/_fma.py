# SPDX-License-Identifier: Apache-2.0
"""fp32 convolutions on the CPU's 512-bit fused multiply-adds, without im2col.

fp32 mode is a plain fp32 GEMM whose summation order is not bit-defined
(``docs/numerics.md``), so its convolutions may run as a direct kernel: the input is laid
out in the planes of the stride's phases (one copy, :func:`phases`), and tap ``t`` of
channel ``c`` of every output pixel ``m = oy * Wq + ox`` is then element
``offsets[t] + m`` of channel ``c``'s row, as in :func:`npusim.simulator.gemm._conv_planes`;
the output is made at the phases' width ``Wq`` and each row's last ``Wq - OW`` pixels are
dropped.

The operands, every array C-contiguous:

* ``X`` float32 ``[C, L]``: the phases of each channel, with room for the last tile's reach.
* ``koff`` int64 ``[K]``: the byte offset in ``X`` of row ``k = c * taps + t``
  (``(c * L + offsets[t]) * 4``): a channel's taps together, so that a chunk of ``K``
  reads few rows of ``X`` (the weights' own order is ``(t, c)``: :func:`pack_weights`
  reorders them).
* ``W`` float32 ``[R / ROWS, K, ROWS]``: the weights, a tile of ``ROWS`` output channels
  interleaved per ``k`` (rows padded with zeros to a multiple of ``ROWS``).
* ``out`` float32 ``[R, M]``: ``out[r, m] = sum_k W[r, k] * X.flat[koff[k] / 4 + m]``.

A tile of ``ROWS`` rows by ``COLUMNS`` pixels keeps its accumulators in 24 vector
registers through a chunk of ``K`` (broadcast weight times three vectors of pixels per
``k``); the chunks keep a tile's weights in L1 and its pixels in L2.

Convolutions of one input channel per group (depthwise) on small planes run here too,
vectorized along the channels (:func:`depthwise`): the image is transposed once to
channel-last order in vector registers (:func:`channels_last`), a tile keeps the sums of
4 pixels by 64 channels in 16 registers through all the window's taps (in tap order, a
fused multiply-add each), and the sums are transposed back into the output's planes
(:func:`channels_first`).

Compiled only where the CPU has AVX-512 (:data:`AVAILABLE`); elsewhere fp32 convolutions
take im2col and BLAS, and depthwise ones the portable kernels. ``NPUSIM_FMA=0`` turns it
off.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.simulator.cpu import AVX512

ROWS = 8
"""Output channels per tile."""

LANES = 16
"""fp32 lanes of a vector register."""

VECTORS = 3
"""Vectors of pixels per tile: ``ROWS * VECTORS`` accumulators."""

COLUMNS = LANES * VECTORS
"""Pixels per tile."""

CHUNK_BYTES = 9 << 10
"""Bytes of a row tile's weights per chunk of ``K`` (they stay in L1 while the tile runs
over the chunk's columns)."""

AVAILABLE = os.environ.get("NPUSIM_FMA", "1") != "0" and AVX512
"""Whether the kernel may be compiled here."""

_I32, _F32 = ir.IntType(32), ir.FloatType()
_V16F = ir.VectorType(_F32, LANES)


def _splat(builder, value):
    undef = ir.Constant(_V16F, None)
    v = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, LANES),
                                                        [0] * LANES))


def _fma_v16(builder):
    """LLVM's fused multiply-add of two vectors into a third."""
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V16F, [_V16F, _V16F, _V16F]), "llvm.fma.v16f32")


def _word(builder, addr, offset):
    """The int64 at byte address ``addr + offset``."""
    intp = addr.type
    return builder.load(builder.inttoptr(builder.add(addr, offset), intp.as_pointer()))


def _vector_at(builder, addr, v: int = 0):
    """A pointer to the ``v``-th vector from byte address ``addr``."""
    return builder.inttoptr(builder.add(addr, ir.Constant(addr.type, v * LANES * 4)),
                            _V16F.as_pointer())


def _sums(builder, rows: int, vectors: int):
    """``rows`` by ``vectors`` vector sums, zero (promoted to registers by the compiler)."""
    zero = ir.Constant(_V16F, [0.0] * LANES)
    return [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
            for _ in range(rows)]


def _add_product(builder, fma, a, b, acc) -> None:
    """``acc += a * b``, rounded once."""
    builder.store(builder.call(fma, [a, b, builder.load(acc)]), acc)


def _row_tile(rows: int, vectors: int):
    """The tile of ``rows`` rows of ``W`` by ``vectors`` vectors of columns of ``X``: see
    :func:`product`."""
    @intrinsic
    def tile(typingctx, x, koff, w, nk, out, orow, accumulate):
        """One tile over ``nk`` rows of ``K``. Byte addresses: ``x`` the tile's first
        column of ``X`` (row ``k`` at ``x + koff[k]``), ``koff`` the int64 table of the
        chunk's row offsets, ``w`` the row tile's packed weights of the chunk (``rows`` a
        row of ``K``), ``out`` the tile's first output (rows ``orow`` bytes apart); with
        ``accumulate``, the tile adds to what ``out`` holds."""
        sig = types.void(*([types.intp] * 7))

        def codegen(context, builder, signature, args):
            x, koff, w, nk, out, orow, accumulate = args
            intp = context.get_value_type(types.intp)
            fma = _fma_v16(builder)

            def const(n):
                return ir.Constant(intp, n)

            def dst(r, v):
                return _vector_at(builder, builder.add(out, builder.mul(const(r), orow)), v)

            acc = _sums(builder, rows, vectors)
            with builder.if_then(builder.icmp_signed("!=", accumulate, const(0))):
                for r in range(rows):
                    for v in range(vectors):
                        builder.store(builder.load(dst(r, v), align=4), acc[r][v])
            with cgutils.for_range(builder, nk) as loop:
                k = loop.index
                base = builder.add(x, _word(builder, koff, builder.mul(k, const(8))))
                xv = [builder.load(_vector_at(builder, base, v), align=4)
                      for v in range(vectors)]
                wk = builder.add(w, builder.mul(k, const(rows * 4)))
                for r in range(rows):
                    wv = _splat(builder, builder.load(builder.inttoptr(
                        builder.add(wk, const(r * 4)), _F32.as_pointer())))
                    for v in range(vectors):
                        _add_product(builder, fma, wv, xv[v], acc[r][v])
            for r in range(rows):
                for v in range(vectors):
                    builder.store(builder.load(acc[r][v]), dst(r, v), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_tile = _row_tile(ROWS, VECTORS)


def _channel_tile(vectors: int, pixels: int):
    """The depthwise tile of ``pixels`` output pixels by ``vectors`` vectors of channels:
    see :func:`depthwise`."""
    @intrinsic
    def tile(typingctx, x, xoff, offs, w, nk, wstride, out, ostep):
        """``out[j][c] = sum_k w[k, c] * x[xoff[j] + offs[k] + c]`` over ``nk`` taps, in
        tap order (a fused multiply-add each), for ``vectors * LANES`` channels of
        ``pixels`` pixels: ``pixels * vectors`` chains of sums hide the multiply-adds'
        latency, and each tap's weights are loaded once for all the pixels. Byte
        addresses: ``x`` the image at the tile's first channel, ``xoff`` the int64 table
        of the pixels' window origins, ``offs`` that of the taps' offsets from an origin,
        ``w`` the first tap's weights (the next tap's ``wstride`` bytes on), ``out`` the
        first pixel's sums (the next pixel's ``ostep`` bytes on)."""
        sig = types.void(*([types.intp] * 8))

        def codegen(context, builder, signature, args):
            x, xoff, offs, w, nk, wstride, out, ostep = args
            intp = context.get_value_type(types.intp)
            fma = _fma_v16(builder)

            def const(n):
                return ir.Constant(intp, n)

            xs = [builder.add(x, _word(builder, xoff, const(8 * j))) for j in range(pixels)]
            acc = _sums(builder, pixels, vectors)
            with cgutils.for_range(builder, nk) as loop:
                k = loop.index
                off = _word(builder, offs, builder.mul(k, const(8)))
                wk = builder.add(w, builder.mul(k, wstride))
                wv = [builder.load(_vector_at(builder, wk, v), align=4) for v in range(vectors)]
                for j in range(pixels):
                    xk = builder.add(xs[j], off)
                    for v in range(vectors):
                        xv = builder.load(_vector_at(builder, xk, v), align=4)
                        _add_product(builder, fma, wv[v], xv, acc[j][v])
            for j in range(pixels):
                oj = builder.add(out, builder.mul(ostep, const(j)))
                for v in range(vectors):
                    builder.store(builder.load(acc[j][v]), _vector_at(builder, oj, v), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


CHANNEL_VECTORS = 4
"""Vectors of channels per wide depthwise tile (64 channels)."""

CHANNEL_PIXELS = 4
"""Output pixels per wide depthwise tile (16 sums in registers); a narrow tile (one
vector of channels, the last of a channel count not a multiple of 64) takes twice as
many."""

_dw_wide = _channel_tile(CHANNEL_VECTORS, CHANNEL_PIXELS)
_dw_narrow = _channel_tile(1, 2 * CHANNEL_PIXELS)
_dw_wide_one = _channel_tile(CHANNEL_VECTORS, 1)
_dw_narrow_one = _channel_tile(1, 1)


@numba.njit(cache=True, nogil=True)
def depthwise(xt, offs, wt, sy, sx, ow, oy0, oy1, res):  # pragma: no cover - compiled
    """Output rows ``oy0 <= oy < oy1`` of a convolution with one input channel per group,
    vectorized along the channels: ``res[(oy - oy0) * ow + ox, r, c] = sum_k wt[r, k, c] *
    xt[oy * sy + ky[k], ox * sx + kx[k], c]`` in tap order, where ``offs[k]`` is tap
    ``k``'s byte offset ``(ky[k] * Wp + kx[k]) * G * 4``. ``xt [Hp, Wp, G]`` is the padded
    channel-last image, ``wt [og, K, G]`` the weights, ``res [pixels, og, G]``; ``G`` a
    multiple of ``LANES``, every array C-contiguous. The tiles run along the share's
    pixels across its rows."""
    _, wp, g = xt.shape
    og, nk, _ = wt.shape
    row = g * 4
    npix = (oy1 - oy0) * ow
    xoff = np.empty(npix, np.int64)
    for p in range(npix):
        oy, ox = oy0 + p // ow, p % ow
        xoff[p] = ((oy * sy) * wp + ox * sx) * row
    xa, oa, pa = np.intp(xt.ctypes.data), np.intp(offs.ctypes.data), np.intp(xoff.ctypes.data)
    wa, ra = np.intp(wt.ctypes.data), np.intp(res.ctypes.data)
    wide, ostep = CHANNEL_VECTORS * LANES, og * row
    for r in range(og):
        wb = wa + r * nk * row
        c = 0
        while c + wide <= g:
            p = 0
            while p + CHANNEL_PIXELS <= npix:
                _dw_wide(xa + c * 4, pa + p * 8, oa, wb + c * 4, nk, row,
                         ra + (p * og + r) * row + c * 4, ostep)
                p += CHANNEL_PIXELS
            for p in range(p, npix):
                _dw_wide_one(xa + c * 4, pa + p * 8, oa, wb + c * 4, nk, row,
                             ra + (p * og + r) * row + c * 4, ostep)
            c += wide
        while c < g:
            p = 0
            while p + 2 * CHANNEL_PIXELS <= npix:
                _dw_narrow(xa + c * 4, pa + p * 8, oa, wb + c * 4, nk, row,
                           ra + (p * og + r) * row + c * 4, ostep)
                p += 2 * CHANNEL_PIXELS
            for p in range(p, npix):
                _dw_narrow_one(xa + c * 4, pa + p * 8, oa, wb + c * 4, nk, row,
                               ra + (p * og + r) * row + c * 4, ostep)
            c += LANES


def _pixel_tile(vectors: int, pixels: int):
    """The tile of ``pixels`` output pixels by ``vectors`` vectors of output channels of
    :func:`product_by_pixels`."""
    @intrinsic
    def tile(typingctx, x, pix, koff, nk, w, wgroup, out, ostep, accumulate):
        """``out[j][v * LANES + l] (+)= sum_k W_v[k, l] * x[pix[j] + koff[k]]`` over ``nk``
        rows of ``K``: each row's weights for ``vectors`` vectors of output channels (the
        vectors ``wgroup`` bytes apart, a row ``LANES * 4`` bytes after the last), times
        each pixel's input broadcast; ``pixels * vectors`` sums in registers. Byte
        addresses: ``x`` the input, ``pix`` and ``koff`` the int64 tables of the pixels'
        and the rows' offsets into it, ``w`` the first row's weights of the first vector,
        ``out`` the first pixel's sums (the next pixel's ``ostep`` bytes on); with
        ``accumulate`` the sums start from what ``out`` holds."""
        sig = types.void(*([types.intp] * 9))

        def codegen(context, builder, signature, args):
            x, pix, koff, nk, w, wgroup, out, ostep, accumulate = args
            intp = context.get_value_type(types.intp)
            fma = _fma_v16(builder)

            def const(n):
                return ir.Constant(intp, n)

            def dst(j, v):
                return _vector_at(builder, builder.add(out, builder.mul(ostep, const(j))), v)

            xs = [builder.add(x, _word(builder, pix, const(8 * j))) for j in range(pixels)]
            acc = _sums(builder, pixels, vectors)
            with builder.if_then(builder.icmp_signed("!=", accumulate, const(0))):
                for j in range(pixels):
                    for v in range(vectors):
                        builder.store(builder.load(dst(j, v), align=4), acc[j][v])
            wv0 = [builder.add(w, builder.mul(wgroup, const(v))) for v in range(vectors)]
            with cgutils.for_range(builder, nk) as loop:
                k = loop.index
                off = _word(builder, koff, builder.mul(k, const(8)))
                wk = builder.mul(k, const(LANES * 4))
                wv = [builder.load(_vector_at(builder, builder.add(wv0[v], wk)), align=4)
                      for v in range(vectors)]
                for j in range(pixels):
                    xv = _splat(builder, builder.load(builder.inttoptr(
                        builder.add(xs[j], off), _F32.as_pointer())))
                    for v in range(vectors):
                        _add_product(builder, fma, wv[v], xv, acc[j][v])
            for j in range(pixels):
                for v in range(vectors):
                    builder.store(builder.load(acc[j][v]), dst(j, v), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


PIXEL_SUMS = 24
"""Sums in registers in a tile of :func:`product_by_pixels`: 6 pixels by 4 vectors of
output channels, 12 by 2 or 24 by 1 (each row of ``K`` loads a vector of weights per
vector and broadcasts an input per pixel: as many loads as fused multiply-adds at most)."""

_px4, _px2, _px1 = (_pixel_tile(v, PIXEL_SUMS // v) for v in (4, 2, 1))


@numba.njit(cache=True, nogil=True)
def product_by_pixels(X, koff, pix, npix, W, g0, g1, kc, res):  # pragma: no cover - compiled
    """``res[j, g * LANES + l] = sum_k W[g, k, l] * X.flat[(koff[k] + pix[j]) / 4]`` for
    the groups ``g0 <= g < g1`` of ``LANES`` output channels and pixels ``j < npix``:
    ``W [G, K, LANES]`` float32, ``koff`` and ``pix`` int64 byte offsets (``pix`` padded
    with a real pixel to a multiple of ``PIXEL_SUMS``), ``res [len(pix), >= g1 * LANES]``
    with rows of whole vectors (the rows past ``npix`` are scratch); ``kc`` rows of ``K``
    at a time (their weights stay in L1)."""
    nk = koff.size
    xa, ka, pa = np.intp(X.ctypes.data), np.intp(koff.ctypes.data), np.intp(pix.ctypes.data)
    wa, ra, rstep = np.intp(W.ctypes.data), np.intp(res.ctypes.data), np.intp(res.strides[0])
    wgroup = nk * LANES * 4
    for k0 in range(0, nk, kc):
        n = min(nk, k0 + kc) - k0
        kp = ka + k0 * 8
        g = g0
        while g < g1:
            wb = wa + g * wgroup + k0 * LANES * 4
            ob = ra + g * LANES * 4
            if g + 4 <= g1:
                for p in range(0, npix, PIXEL_SUMS // 4):
                    _px4(xa, pa + p * 8, kp, n, wb, wgroup, ob + p * rstep, rstep, k0)
                g += 4
            elif g + 2 <= g1:
                for p in range(0, npix, PIXEL_SUMS // 2):
                    _px2(xa, pa + p * 8, kp, n, wb, wgroup, ob + p * rstep, rstep, k0)
                g += 2
            else:
                for p in range(0, npix, PIXEL_SUMS):
                    _px1(xa, pa + p * 8, kp, n, wb, wgroup, ob + p * rstep, rstep, k0)
                g += 1


def pack_by_pixels(wf: np.ndarray, taps: int) -> np.ndarray:
    """``W [G, K, LANES]`` of float32 weights ``wf [O, K]`` (``K`` in ``(taps, C)`` order)
    for :func:`product_by_pixels`: ``K`` in ``(C, taps)`` order, ``LANES`` output channels
    a group (padded with zeros)."""
    o, k = wf.shape
    groups = -(-o // LANES)
    w = np.zeros((groups * LANES, k), np.float32)
    w[:o] = wf.reshape(o, taps, k // taps).transpose(0, 2, 1).reshape(o, k)
    return np.ascontiguousarray(w.reshape(groups, LANES, k).transpose(0, 2, 1))


def _transpose_masks(builder, n, intp):
    """``<16 x i1>``: lanes below ``n``."""
    lanes = ir.Constant(ir.VectorType(intp, LANES), list(range(LANES)))
    undef = ir.Constant(ir.VectorType(intp, LANES), None)
    v = builder.insert_element(undef, n, ir.Constant(_I32, 0))
    splat = builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, LANES),
                                                         [0] * LANES))
    return builder.icmp_signed("<", lanes, splat)


@intrinsic
def _transpose(typingctx, src, sstride, dst, dstride, nr, nc, whole):
    """``dst[j][i] = src[i][j]`` for ``i < nr``, ``j < nc`` (at most ``LANES`` each) of
    fp32 rows ``sstride`` and ``dstride`` bytes apart, in vector registers (four rounds
    of shuffles). With ``whole``, each of the ``nc`` rows of ``dst`` is written whole,
    zeros past ``nr``; otherwise its first ``nr`` elements only."""
    sig = types.void(*([types.intp] * 7))

    def codegen(context, builder, signature, args):
        src, sstride, dst, dstride, nr, nc, whole = args
        intp = context.get_value_type(types.intp)
        i1v = ir.VectorType(ir.IntType(1), LANES)
        load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16F, [_V16F.as_pointer(), _I32, i1v, _V16F]),
            "llvm.masked.load.v16f32.p0v16f32")
        store = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [_V16F, _V16F.as_pointer(), _I32,
                                                            i1v]),
            "llvm.masked.store.v16f32.p0v16f32")
        zero = ir.Constant(_V16F, [0.0] * LANES)
        cols = _transpose_masks(builder, nc, intp)
        none = ir.Constant(i1v, [0] * LANES)
        align = ir.Constant(_I32, 4)
        rows = []
        for i in range(LANES):
            mask = builder.select(builder.icmp_signed("<", ir.Constant(intp, i), nr), cols,
                                  none)
            ptr = builder.inttoptr(builder.add(src, builder.mul(sstride, ir.Constant(intp, i))),
                                   _V16F.as_pointer())
            rows.append(builder.call(load, [ptr, align, mask, zero]))
        d = 1
        while d < LANES:  # swap the off-diagonal d x d blocks of each 2d x 2d block
            lo = [(lane if not lane & d else LANES + (lane ^ d)) for lane in range(LANES)]
            hi = [((lane ^ d) if not lane & d else LANES + lane) for lane in range(LANES)]
            for a in range(LANES):
                if a & d:
                    continue
                b = a | d
                ra, rb = rows[a], rows[b]
                rows[a] = builder.shuffle_vector(ra, rb, ir.Constant(
                    ir.VectorType(_I32, LANES), lo))
                rows[b] = builder.shuffle_vector(ra, rb, ir.Constant(
                    ir.VectorType(_I32, LANES), hi))
            d *= 2
        every = ir.Constant(i1v, [1] * LANES)
        keep = builder.select(builder.icmp_signed("!=", whole, ir.Constant(intp, 0)), every,
                              _transpose_masks(builder, nr, intp))
        for j in range(LANES):
            mask = builder.select(builder.icmp_signed("<", ir.Constant(intp, j), nc), keep,
                                  none)
            ptr = builder.inttoptr(builder.add(dst, builder.mul(dstride, ir.Constant(intp, j))),
                                   _V16F.as_pointer())
            builder.call(store, [rows[j], ptr, align, mask])
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def channels_last(x, top, left, y0, y1, xt):  # pragma: no cover - compiled
    """Rows ``y0 <= y < y1`` of ``x [C, H, W]`` into ``xt [Hp, Wp, G]`` at row
    ``top + y``, column ``left``, on vector transposes: zeros around them and in channels
    ``C...G`` (``G`` a multiple of ``LANES``), and in the rows above the first row and
    below the last."""
    c, h, w = x.shape
    hp, wp, g = xt.shape
    if y0 == 0:
        xt[:top] = 0.0
    if y1 == h:
        xt[top + h:] = 0.0
    xa, ta = np.intp(x.ctypes.data), np.intp(xt.ctypes.data)
    plane, row = h * w * 4, g * 4
    for y in range(y0, y1):
        r = xt[top + y]
        r[:left] = 0.0
        r[left + w:] = 0.0
        for c0 in range(0, g, LANES):
            for i0 in range(0, w, LANES):
                _transpose(xa + c0 * plane + (y * w + i0) * 4, plane,
                           ta + (((top + y) * wp + left + i0) * g + c0) * 4, row,
                           max(0, min(LANES, c - c0)), min(LANES, w - i0), 1)


@numba.njit(cache=True, nogil=True)
def channels_first(res, groups, n0, out):  # pragma: no cover - compiled
    """``out[c * og + r, n0 + i] = res[i, r, c]`` for ``c < groups`` on vector
    transposes: channel-last sums ``res [pixels, og, G]`` (channels contiguous, at least
    ``groups`` rounded up to ``LANES`` of them) into the output's planes."""
    npix, og, g = res.shape
    ra, oa = np.intp(res.ctypes.data), np.intp(out.ctypes.data)
    rstride, rog, ostride = res.strides[0], res.strides[1], out.strides[0]
    for r in range(og):
        for c0 in range(0, groups, LANES):
            for i0 in range(0, npix, LANES):
                _transpose(ra + i0 * rstride + r * rog + c0 * 4, rstride,
                           oa + (c0 * og + r) * ostride + (n0 + i0) * 4, og * ostride,
                           min(LANES, npix - i0), min(LANES, groups - c0), 0)


@numba.njit(cache=True, nogil=True)
def product(X, koff, W, m0, m1, r0, r1, kc, out):  # pragma: no cover - compiled
    """``out[r - r0, m - m0]`` for rows ``r0 <= r < r1`` (multiples of ``ROWS``) and the
    tiles of columns ``m0 <= m < m1`` (``out`` at least as wide as those tiles), ``kc``
    rows of ``K`` at a time."""
    nk = koff.size
    xa, ka, wa = np.intp(X.ctypes.data), np.intp(koff.ctypes.data), np.intp(W.ctypes.data)
    oa, orow = np.intp(out.ctypes.data), np.intp(out.strides[0])
    for k0 in range(0, nk, kc):
        n = min(nk, k0 + kc) - k0
        for ra in range(r0, r1, ROWS):
            w = wa + ((ra // ROWS) * nk + k0) * ROWS * 4
            for i in range(m0, m1, COLUMNS):
                _tile(xa + i * 4, ka + k0 * 8, w, n, oa + (ra - r0) * orow + (i - m0) * 4,
                      orow, k0)


def chunk(k: int) -> int:
    """Rows of ``K`` per chunk: ``CHUNK_BYTES`` of a row tile's weights, in chunks of
    about equal size."""
    per = max(1, CHUNK_BYTES // (ROWS * 4))
    return -(-k // -(-k // per))


def pack_weights(wf: np.ndarray, taps: int) -> np.ndarray:
    """``W [R / ROWS, K, ROWS]`` of float32 weights ``wf [O, K]``, ``K`` in ``(taps, C)``
    order, in ``(C, taps)`` order (rows padded with zeros)."""
    o, k = wf.shape
    rows = -(-o // ROWS) * ROWS
    w = np.zeros((rows, k), np.float32)
    w[:o] = wf.reshape(o, taps, k // taps).transpose(0, 2, 1).reshape(o, k)
    return np.ascontiguousarray(w.reshape(rows // ROWS, ROWS, k).transpose(0, 2, 1))


@numba.njit(cache=True, nogil=True)
def phases(xp, sy, sx, hq, wq, c0, c1, X):  # pragma: no cover - compiled
    """Channels ``c0...c1`` of the padded input ``xp [C, Hp, Wp]`` into ``X [C, L]``: phase
    ``(py, px)`` at ``(py * sx + px) * hq * wq``, ``hq`` rows of ``wq``; zeros where a
    phase is past the plane and after the phases."""
    _, hp, wp = xp.shape
    for c in range(c0, c1):
        row = X[c]
        for py in range(sy):
            for px in range(sx):
                base = (py * sx + px) * hq * wq
                for y in range(hq):
                    dst = row[base + y * wq:base + (y + 1) * wq]
                    yy = y * sy + py
                    if yy >= hp:
                        dst[:] = 0.0
                        continue
                    src = xp[c, yy]
                    n = max(0, min(wq, -(-(wp - px) // sx)))
                    for i in range(n):
                        dst[i] = src[i * sx + px]
                    dst[n:] = 0.0
        row[sy * sx * hq * wq:] = 0.0
