# SPDX-License-Identifier: Apache-2.0
"""Block-format convolutions of one input channel per group (depthwise) on the CPU's
512-bit vectors: the row vectors of :mod:`npusim.simulator._fma_rows`, each output
pixel's window quantized in its lane.

A call runs one vector of ``LANES`` pixels of ``ROWS`` consecutive output rows, read in
place from the unpadded plane. For each block of the window's taps (in tap order, as
the device cuts K), two passes over the taps, each a masked load as in the fp32 kernel:

1. the block maximum, by the bits of ``|x|`` (integer max: a NaN's above an infinity's);
   from it, in each lane, the shared exponent ``e = clamp(exponent, emin, emax)``, the
   multiplier ``2**(mbits - 1 - e)`` and the scale ``2**(e - mbits + 1)`` (1 when every
   mantissa rounds to 0), built from their bits;
2. each tap's mantissa ``clamp(rint(x * multiplier), -M, M)`` times its integer weight,
   summed on fused multiply-adds: integers, exact in fp32 in any order.

The block's product is then added to the pixel's sum as ``sum + p * (scale * s)`` in
fp32, ``s`` the weight block's scale: the numbers of
:func:`npusim.simulator._fast_phases._fused_block` and
:func:`npusim.simulator._fast_gemm._accumulate_block`. Those are exact whenever every
lane's ``scale * s`` is a normal fp32 number of at most ``2**103``, its block finite
and not so small that its multiplier would leave fp32's normal range; a call reports
the lanes where that fails, and the driver reruns their channel on the general kernel
(:func:`npusim.simulator._fast_direct.depthwise_planes_quantized`). The epilogue
(+ bias, ReLU, clip) is applied in the registers before the masked store."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.simulator import _fma
from npusim.simulator._fma import _I32, _V16F, LANES, _fma_v16, _splat
from npusim.simulator._fma_rows import ROWS, _Emitter, _row_addresses, _tables
from npusim.simulator.cpu import host_has

AVAILABLE = _fma.AVAILABLE and host_has("avx512dq")
"""Whether the kernel may be compiled here (its clamp is AVX-512 DQ's vrangeps)."""

_V16I = ir.VectorType(_I32, LANES)
_MIN_NORMAL, _MAX_SCALE = 2.0**-126, 2.0**103  # as in _fast_gemm._accumulate_block


def blocks_of(taps: int, block: int) -> tuple[int, ...]:
    """The lengths of the blocks a window of ``taps`` taps is cut into."""
    return tuple(min(block, taps - t) for t in range(0, taps, block))


class Quantizer:
    """The code of the per-lane block quantization the row-vector kernels share (see the
    module's docstring): the block maximum's bits, the shared exponent, multiplier and
    scale, each mantissa; ``fm`` the address of int32 ``[mantissa bits, emin, emax]``,
    ``top_m`` the largest mantissa (a vector)."""

    def __init__(self, b, em, fm, top_m) -> None:
        self.b, self.em, self.top_m = b, em, top_m
        self.vrange = cgutils.get_or_insert_function(
            b.module, ir.FunctionType(_V16F, [_V16F, _V16F, _I32, _V16F, ir.IntType(16), _I32]),
            "llvm.x86.avx512.mask.range.ps.512")
        self.fma = _fma_v16(b)

        def field(i):
            return b.load(b.inttoptr(b.add(fm, em.const(4 * i)), _I32.as_pointer()))

        mbits = field(0)
        self.emin, self.emax = self.iconst(field(1)), self.iconst(field(2))
        self.lowest = self.iconst(b.sub(mbits, ir.Constant(_I32, 126)))
        self.mul_base = self.iconst(b.add(mbits, ir.Constant(_I32, 126)))  # mbits - 1 + 127
        self.scl_base = self.iconst(b.sub(ir.Constant(_I32, 128), mbits))  # 127 - (mbits-1)
        self.magic = ir.Constant(_V16F, [1.5 * 2.0**23] * LANES)
        self.half = ir.Constant(_V16F, [0.5] * LANES)
        self.one = ir.Constant(_V16F, [1.0] * LANES)
        self.min_normal = ir.Constant(_V16F, [_MIN_NORMAL] * LANES)
        self.max_scale = ir.Constant(_V16F, [_MAX_SCALE] * LANES)
        self.inf_bits, self.abs_bits = self.ivec(0x7F800000), self.ivec(0x7FFFFFFF)

    @staticmethod
    def ivec(n):
        return ir.Constant(_V16I, [n] * LANES)

    def iconst(self, v):
        """An int32 scalar in every lane."""
        lane = self.b.insert_element(ir.Constant(_V16I, None), v, ir.Constant(_I32, 0))
        return self.b.shuffle_vector(lane, ir.Constant(_V16I, None), self.ivec(0))

    def maximum(self, top, v):
        """The running block maximum ``top`` (bits of ``|x|``, int32 lanes) with tap ``v``
        (integer max: a NaN's bits above an infinity's)."""
        b = self.b
        a = b.and_(b.bitcast(v, _V16I), self.abs_bits)
        return b.select(b.icmp_signed(">", a, top), a, top)

    def block(self, top):
        """``(multiplier, scale, bad)`` of a block whose maximum's bits are ``top``: the
        scale 1 when every mantissa rounds to 0; ``bad`` the lanes the kernel cannot make
        exactly (a live block whose multiplier would not be normal, a non-finite one)."""
        b = self.b
        ivec = self.ivec
        ex = b.sub(b.lshr(top, ivec(23)), ivec(127))
        e = b.select(b.icmp_signed("<", ex, self.emin), self.emin, ex)
        e = b.select(b.icmp_signed(">", e, self.emax), self.emax, e)
        live = b.and_(b.icmp_signed(">", top, ivec(0)), b.icmp_signed("<", top, self.inf_bits))
        bad = b.or_(b.and_(live, b.icmp_signed("<", e, self.lowest)),
                    b.icmp_signed(">=", top, self.inf_bits))
        m = b.bitcast(b.select(live, b.shl(b.sub(self.mul_base, e), ivec(23)), ivec(0)), _V16F)
        sc = b.bitcast(b.shl(b.add(e, self.scl_base), ivec(23)), _V16F)
        nonzero = b.fcmp_ordered(">", b.fmul(b.bitcast(top, _V16F), m), self.half)
        return m, b.select(nonzero, sc, self.one), bad

    def product_scale(self, scale, sj):
        """``(scale * sj, bad)``: the block's scale times the weight block's, and the lanes
        where that is not a normal fp32 number of at most ``2**103``."""
        b = self.b
        t = b.fmul(scale, sj)
        fits = b.and_(b.fcmp_ordered(">=", t, self.min_normal),
                      b.fcmp_ordered("<=", t, self.max_scale))
        return t, b.not_(fits)

    def mantissa(self, v, mult):
        """``clamp(rint(v * mult), -M, M)``: ties to even as ``(v * mult + C) - C`` in one
        rounding (``|v * mult| < 2**22``, ``C`` an even integer whose sums have a unit in
        the last place of 1), the clamp by AVX-512 DQ's vrangeps (the smaller magnitude,
        the first operand's sign)."""
        b = self.b
        q = b.fsub(b.call(self.fma, [v, mult, self.magic]), self.magic)
        return b.call(self.vrange, [q, self.top_m, ir.Constant(_I32, 0b0010), q,
                                    ir.Constant(ir.IntType(16), -1), ir.Constant(_I32, 4)])


def _vectors(k: int, stride2: bool, rows: int, blocks: tuple[int, ...]):
    """The intrinsic of one vector of pixels of ``rows`` output rows of a ``k x k``
    window cut into ``blocks``, unrolled (see the module's docstring)."""
    @intrinsic
    def vectors(typingctx, rtab, cols, masks, w, s, out, ostride, omask, ep, flags, fm):
        """``rtab``, ``cols``, ``masks``, ``out``, ``ostride``, ``omask``, ``ep`` and
        ``flags`` as :func:`npusim.simulator._fma_rows.depthwise`'s; ``w`` the float32
        integer weights in tap order, ``s`` the float32 scale of each weight block, ``fm``
        int32 ``[mantissa bits, emin, emax]``; ``ep[3]`` the largest mantissa ``M``.
        Returns the lanes (bits of the store mask) whose numbers need the general
        kernel."""
        sig = types.intp(*([types.intp] * 11))

        def codegen(context, builder, signature, args):
            rtab, cols, masks, w, s, out, ostride, omask, ep, flags, fm = args
            b = builder
            zero = ir.Constant(_V16F, [0.0] * LANES)
            em = _Emitter(context, b, cols, masks, k, stride2, zero)
            fma = _fma_v16(b)
            qz = Quantizer(b, em, fm, _splat(b, em.scalar(ep, 3)))
            base = [[em.word(rtab, 8 * (j * k + ky)) for ky in range(k)] for j in range(rows)]

            def tap(j, t):
                return em.tap(base[j][t // k], t % k)

            acc = [zero] * rows
            bad = ir.Constant(em.i1v, [0] * LANES)
            t0 = 0
            for jb, nb in enumerate(blocks):
                top = [qz.ivec(0)] * rows
                for t in range(t0, t0 + nb):
                    top = em.pin(top)
                    for j in range(rows):
                        top[j] = qz.maximum(top[j], tap(j, t))
                sj = _splat(b, em.scalar(s, jb))
                mult, scale = [], []
                for j in range(rows):
                    m, sc, worse = qz.block(top[j])
                    t, unfit = qz.product_scale(sc, sj)
                    bad = b.or_(bad, b.or_(worse, unfit))
                    mult.append(m)
                    scale.append(t)
                p = [zero] * rows
                for t in range(t0, t0 + nb):
                    p = em.pin(p)
                    wv = _splat(b, em.scalar(w, t))
                    for j in range(rows):
                        p[j] = b.call(fma, [wv, qz.mantissa(tap(j, t), mult[j]), p[j]])
                for j in range(rows):
                    acc[j] = b.fadd(acc[j], b.fmul(p[j], scale[j]))
                t0 += nb
            keep = em.lanes(omask, 0)
            for j in range(rows):
                em.store(em.epilogue(acc[j], ep, flags),
                         b.add(out, b.mul(ostride, em.const(j))), keep)
            lanes = b.zext(b.bitcast(bad, ir.IntType(LANES)), em.intp)
            return b.and_(lanes, omask)

        return sig, codegen

    return vectors


WINDOWS = (3, 5, 7)
"""The windows (``k x k``) the kernel is compiled for."""

BLOCKS = (16, 32)
"""Block sizes compiled for windows larger than one block (a window of one block runs
on any size)."""


def fits(geom, block: int, out_h: int) -> bool:
    """Whether a convolution of one input channel per group in a format of ``block`` with
    ``out_h`` output rows runs here: a window of :data:`WINDOWS`, cut into blocks of
    :data:`BLOCKS` or held in one, a column stride of 1 or 2, at least ``ROWS`` output
    rows (the last group of rows shifted up, as in :mod:`npusim.simulator._fma_rows`)."""
    kh, kw = geom.kernel
    return (kh == kw and kh in WINDOWS and geom.strides[1] in (1, 2)
            and (block in BLOCKS or block >= kh * kw) and out_h >= ROWS)


(_k3s1, _k3s2) = (_vectors(3, s2, ROWS, (9,)) for s2 in (False, True))
(_k5s1, _k5s2, _k5s1b, _k5s2b) = (
    _vectors(5, s2, ROWS, blocks_of(25, b)) for b in (25, 16) for s2 in (False, True))
(_k7s1, _k7s2, _k7s1b, _k7s2b, _k7s1c, _k7s2c) = (
    _vectors(7, s2, ROWS, blocks_of(49, b)) for b in (49, 16, 32) for s2 in (False, True))


@numba.njit(cache=True, nogil=True)
def _run(k, block, sx, args):  # pragma: no cover - compiled
    """One call of the kernel of window ``k x k``, blocks of ``block``, stride ``sx``."""
    one = sx == 1
    if k == 3:
        return _k3s1(*args) if one else _k3s2(*args)
    if k == 5:
        if block >= 25:
            return _k5s1(*args) if one else _k5s2(*args)
        return _k5s1b(*args) if one else _k5s2b(*args)
    if block >= 49:
        return _k7s1(*args) if one else _k7s2(*args)
    if block == 16:
        return _k7s1b(*args) if one else _k7s2b(*args)
    return _k7s1c(*args) if one else _k7s2c(*args)


BIAS = 1
"""The epilogue's bias bit (with ReLU and clip, as :mod:`npusim.simulator._fma_rows`'s)."""


@numba.njit(cache=True, nogil=True)
def depthwise(x, wq, sw, og, k, sy, sx, dy, dx, top, left, oh, ow, block, fm, o0, o1, bias,
              lo, hi, max_m, flags, out, bad):  # pragma: no cover - compiled
    """Output channels ``o0 <= o < o1`` (each of input plane ``o // og``) of a block-format
    convolution with one input channel per group and a ``k x k`` window: ``x [C, H, W]``
    float32, ``wq [O, Kp]`` the float32 integer weights, ``sw [O, J]`` their float32
    block scales (1 for a finite block of zero mantissas), ``fm`` int32 ``[mantissa bits,
    emin, emax]``, ``max_m`` the largest mantissa; the epilogue as
    :func:`npusim.simulator._fma_rows.depthwise`'s, into ``out [O, oh * ow]``.
    ``bad[o]`` is set where some pixel of output ``o`` needs the general kernel (its
    plane as written here is then not the golden one)."""
    _, h, w = x.shape
    roff, cols, masks, omask = _tables(h, w, k, k, sy, sx, dy, dx, top, left, oh, ow)
    padding = np.zeros(w, np.float32)
    ep = np.zeros(4, np.float32)
    ep[1], ep[2], ep[3] = lo, hi, max_m
    kp, nb = wq.shape[1], sw.shape[1]
    xa, wa, sa = np.intp(x.ctypes.data), np.intp(wq.ctypes.data), np.intp(sw.ctypes.data)
    oa, ca, ma = np.intp(out.ctypes.data), np.intp(cols.ctypes.data), np.intp(masks.ctypes.data)
    ea, pa, fa = np.intp(ep.ctypes.data), np.intp(padding.ctypes.data), np.intp(fm.ctypes.data)
    rtab = np.empty((oh, k), np.int64)
    ra = np.intp(rtab.ctypes.data)
    for o in range(o0, o1):
        if flags & BIAS:
            ep[0] = bias[o]
        _row_addresses(roff, xa + (o // og) * h * w * 4, pa, rtab)
        wo, so = wa + o * kp * 4, sa + o * nb * 4
        worse = 0
        for b in range(omask.size):
            cb, mb = ca + b * k * 8, ma + b * k * 8
            ob = oa + (o * oh * ow + b * LANES) * 4
            for first in range(0, oh, ROWS):
                oy = min(first, oh - ROWS)  # the last group ends at the last row
                worse |= _run(k, block, sx, (ra + oy * k * 8, cb, mb, wo, so,
                                             ob + oy * ow * 4, ow * 4, omask[b], ea, flags,
                                             fa))
        bad[o] = worse != 0
