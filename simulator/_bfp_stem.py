# SPDX-License-Identifier: Apache-2.0
"""Block-format convolutions of three input channels (a network's RGB stem) with a 3x3
window, on the row vectors of :mod:`npusim.simulator._fma_rows`.

A call runs one vector of ``LANES`` pixels of one output row for every output channel.
Each pixel's window, its 27 taps in ``(ky, kx, c)`` order (the device's order of K) cut
into the format's blocks, is quantized once in its lane as
:mod:`npusim.simulator._bfp_rows` quantizes a depthwise window (the block maximum, the
shared exponent, multiplier and scale built from bits, each mantissa one fused
multiply-add and a clamp), into a buffer of 27 vectors that stays in L1; then, ``OUTPUTS``
output channels at a time, each block's integer products on fused multiply-adds and
``sum + p * (scale * s)`` in fp32, ``s`` the weight block's scale, the epilogue (+ bias,
ReLU, clip) in the registers before the masked stores. A call reports the lanes it cannot
make exactly (a non-finite or tiny block, a scale product outside fp32's normal range),
and the driver then runs the layer on the general path. The general path quantized an
im2col of the window (27 rows by every output pixel) and made the products on the
8-bit dot products with a second pass into place: about 0.6 ms for MobileNet's stems."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.simulator._bfp_rows import AVAILABLE, Quantizer, blocks_of
from npusim.simulator._fma import _V16F, LANES, _fma_v16, _splat
from npusim.simulator._fma_rows import BIAS, CLIP, RELU, _Emitter, _tables

__all__ = ["AVAILABLE", "BIAS", "CLIP", "OUTPUTS", "RELU", "conv", "fits"]

OUTPUTS = 8
"""Output channels whose sums a call keeps in registers at a time (two vectors each: the
block's product and the running sum)."""

TAPS = 27
BLOCKS = (16, 32)
"""Block sizes compiled for (16 cuts the window into 16 + 11 taps; 32 and longer hold
it)."""

WIDTH = 64
"""Narrowest output rows taken (as :data:`npusim.simulator._fma_stem.WIDTH`)."""


def fits(geom, channels: int, block: int, out_w: int) -> bool:
    """Whether a block-format convolution of ``channels`` input channels in blocks of
    ``block`` into rows of ``out_w`` pixels runs here: one group, three channels, a 3x3
    window, a column stride of 1 or 2, rows of at least :data:`WIDTH`."""
    return (AVAILABLE and geom.groups == 1 and channels == 3 and geom.kernel == (3, 3)
            and geom.strides[1] in (1, 2) and (block == 16 or block >= TAPS)
            and out_w >= WIDTH)


def _vectors(stride2: bool, blocks: tuple[int, ...]):
    """The intrinsic of one vector of pixels of one output row, every output channel."""
    @intrinsic
    def vectors(typingctx, rtab, cols, masks, w, wstride, s, sstride, bias, out, ostride,
                omask, ep, flags, fm, nout, qbuf):
        """``rtab`` the int64 addresses of the window's rows, channel by channel (a
        padding row's is a row of zeros), ``cols``/``masks``/``omask`` as
        :mod:`npusim.simulator._fma_rows`'s; ``w`` the first output's float32 integer
        weights in ``(ky, kx, c)`` order and ``s`` its weight blocks' float32 scales (the
        next output's ``wstride`` and ``sstride`` bytes on), ``bias`` the float32 biases,
        ``out`` the first output's vector (the next ``ostride`` bytes on), ``ep`` float32
        ``[unused, lo, hi, largest mantissa]``, ``flags`` the epilogue's steps, ``fm``
        int32 ``[mantissa bits, emin, emax]``, ``nout`` how many outputs (the weights,
        scales and biases padded to whole groups of ``OUTPUTS``), ``qbuf`` room for 27
        vectors, 64-byte aligned. Returns the lanes (bits of the store mask) the call
        could not make exactly."""
        sig = types.intp(*([types.intp] * 16))

        def codegen(context, builder, signature, args):
            (rtab, cols, masks, w, wstride, s, sstride, bias, out, ostride, omask, ep, flags,
             fm, nout, qbuf) = args
            b = builder
            zero = ir.Constant(_V16F, [0.0] * LANES)
            em = _Emitter(context, b, cols, masks, 3, stride2, zero)
            fma = _fma_v16(b)
            qz = Quantizer(b, em, fm, _splat(b, em.scalar(ep, 3)))
            rows = [[em.word(rtab, 8 * (ch * 3 + ky)) for ky in range(3)] for ch in range(3)]

            def tap(t):
                ky, kx, ch = t // 9, t // 3 % 3, t % 3
                return em.tap(rows[ch][ky], kx)

            def slot(t):
                return b.inttoptr(b.add(qbuf, em.const(t * LANES * 4)), _V16F.as_pointer())

            bad = cgutils.alloca_once_value(b, ir.Constant(em.i1v, [0] * LANES))
            scales = []
            t0 = 0
            for nb in blocks:  # each pixel's window quantized once, into qbuf
                top = [qz.ivec(0)]
                for t in range(t0, t0 + nb):
                    top = em.pin(top)
                    top[0] = qz.maximum(top[0], tap(t))
                m, sc, worse = qz.block(top[0])
                b.store(b.or_(b.load(bad), worse), bad)
                for t in range(t0, t0 + nb):
                    (q,) = em.pin([qz.mantissa(tap(t), m)])
                    b.store(q, slot(t), align=64)
                scales.append(sc)
                t0 += nb
            keep = em.lanes(omask, 0)
            none = ir.Constant(em.i1v, [0] * LANES)
            groups = b.sdiv(b.add(nout, em.const(OUTPUTS - 1)), em.const(OUTPUTS))
            with cgutils.for_range(b, groups) as loop:
                o0 = b.mul(loop.index, em.const(OUTPUTS))
                wrow = [b.add(w, b.mul(wstride, b.add(o0, em.const(o))))
                        for o in range(OUTPUTS)]
                srow = [b.add(s, b.mul(sstride, b.add(o0, em.const(o))))
                        for o in range(OUTPUTS)]
                acc = [zero] * OUTPUTS
                t0 = 0
                for jb, nb in enumerate(blocks):
                    p = [zero] * OUTPUTS
                    for t in range(t0, t0 + nb):
                        p = em.pin(p)
                        q = b.load(slot(t), align=64)
                        for o in range(OUTPUTS):
                            p[o] = b.call(fma, [_splat(b, em.scalar(wrow[o], t)), q, p[o]])
                    for o in range(OUTPUTS):
                        scale, unfit = qz.product_scale(scales[jb],
                                                        _splat(b, em.scalar(srow[o], jb)))
                        unfit = b.select(b.icmp_signed("<", b.add(o0, em.const(o)), nout),
                                         unfit, none)  # a padding output's: no matter
                        b.store(b.or_(b.load(bad), unfit), bad)
                        acc[o] = b.fadd(acc[o], b.fmul(p[o], scale))
                    t0 += nb
                for o in range(OUTPUTS):
                    at = b.add(o0, em.const(o))
                    v = em.epilogue(acc[o], ep, flags,
                                    bias=_splat(b, em.scalar(b.add(bias, b.mul(at, em.const(4))),
                                                             0)))
                    em.store(v, b.add(out, b.mul(ostride, at)),
                             b.select(b.icmp_signed("<", at, nout), keep, none))
            lanes = b.zext(b.bitcast(b.load(bad), ir.IntType(LANES)), em.intp)
            return b.and_(lanes, omask)

        return sig, codegen

    return vectors


_s1_16, _s2_16, _s1_27, _s2_27 = (_vectors(s2, blocks_of(TAPS, blk))
                                  for blk in (16, TAPS) for s2 in (False, True))


@numba.njit(cache=True, nogil=True)
def _run(block, sx, args):  # pragma: no cover - compiled
    if block == 16:
        return _s1_16(*args) if sx == 1 else _s2_16(*args)
    return _s1_27(*args) if sx == 1 else _s2_27(*args)


@numba.njit(cache=True, nogil=True)
def conv(x, wq, sw, sy, sx, dy, dx, top, left, oh, ow, y0, y1, block, fm, max_m, bias, lo,
         hi, flags, out):  # pragma: no cover - compiled
    """Output rows ``y0 <= oy < y1`` of the block-format convolution of ``x [3, H, W]``
    with a 3x3 window into ``out [O, oh * ow]``: ``wq [R, >= 27]`` the float32 integer
    weights in ``(ky, kx, c)`` order, ``sw [R, J]`` their blocks' float32 scales and
    ``bias [R]`` (``R``, ``O`` rounded up to a multiple of ``OUTPUTS``: zeros and ones),
    ``fm`` int32 ``[mantissa bits, emin, emax]``, ``max_m`` the largest mantissa, the
    epilogue's ``flags``, ``lo``, ``hi``; float32, C-contiguous, ``sx`` 1 or 2. Returns
    whether a pixel needs the general path (then ``out`` is not the golden result)."""
    c, h, w = x.shape
    o_all = out.shape[0]
    if min(wq.shape[0], sw.shape[0], bias.size) < -(-o_all // OUTPUTS) * OUTPUTS or c != 3:
        raise ValueError("the weights, scales and biases must fill whole groups of OUTPUTS")
    roff, cols, masks, omask = _tables(h, w, 3, 3, sy, sx, dy, dx, top, left, oh, ow)
    padding = np.zeros(w, np.float32)
    ep = np.zeros(4, np.float32)
    ep[1], ep[2], ep[3] = lo, hi, max_m
    rtab = np.empty(9, np.int64)
    qbuf = np.empty(TAPS * LANES + LANES, np.float32)
    qa = (np.intp(qbuf.ctypes.data) + 63) // 64 * 64  # 64-byte aligned vectors
    xa, wa, sa = np.intp(x.ctypes.data), np.intp(wq.ctypes.data), np.intp(sw.ctypes.data)
    ba, oa = np.intp(bias.ctypes.data), np.intp(out.ctypes.data)
    ca, ma, fa = np.intp(cols.ctypes.data), np.intp(masks.ctypes.data), np.intp(fm.ctypes.data)
    ea, pa, ra = np.intp(ep.ctypes.data), np.intp(padding.ctypes.data), np.intp(rtab.ctypes.data)
    bad = 0
    for oy in range(y0, y1):
        for ch in range(c):
            for ky in range(3):
                r = roff[oy, ky]
                rtab[ch * 3 + ky] = xa + ch * h * w * 4 + r if r >= 0 else pa
        for b in range(omask.size):
            bad |= _run(block, sx, (ra, ca + b * 24, ma + b * 24, wa, wq.shape[1] * 4, sa,
                                    sw.shape[1] * 4, ba, oa + (oy * ow + b * LANES) * 4,
                                    oh * ow * 4, omask[b], ea, flags, fa, o_all, qa))
    return bad != 0
