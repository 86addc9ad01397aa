# SPDX-License-Identifier: Apache-2.0
"""fp32 convolutions of one input channel per group (depthwise) on the CPU's 512-bit
fused multiply-adds, read from and written to their planes in place.

Each output row is cut into vectors of ``LANES`` pixels. A vector's sums stay in one
register through the window's taps: tap ``(ky, kx)`` is one masked load of the input row
``oy * sy + ky * dy - top`` from column ``ox * sx + kx * dx - left`` (at stride 2, two
loads and a shuffle that keeps the even elements), the mask dropping the lanes that fall
in the padding or past the row, times the tap's weight broadcast. The epilogue (+ bias,
ReLU, clip, each in fp32) is applied in the register and the vector stored, masked past
the row's end. No padded copy, no phase layout and no second pass over the output: the
layers of the mobile networks read each input and write each output once.

Masked-off lanes are not read (AVX-512 masked loads do not fault on them), so a load
that starts before a row, or runs past the plane, touches only the row's own elements."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.simulator._fma import _F32, _I32, _V16F, LANES, _fma_v16, _splat, _word

BIAS, RELU, CLIP = 1, 2, 4
"""Bits of the epilogue ``flags`` the kernel applies itself."""


def _vectors(kh: int, kw: int, stride2: bool, rows: int):
    """The intrinsic of one vector of pixels of ``rows`` consecutive output rows of a
    ``kh x kw`` window (see the module's docstring), unrolled: ``rows`` chains of sums
    hide the fused multiply-adds' latency, each tap's weight is broadcast once for all of
    them, and the taps' column masks stay in mask registers."""
    @intrinsic
    def vectors(typingctx, rtab, cols, masks, w, out, ostride, omask, ep, flags):
        """``rtab`` the int64 table of the first row's ``kh`` window row addresses, the
        next row's after it (a padding row's is a row of zeros), ``cols`` and ``masks``
        the tables of the ``kw`` taps' column byte offsets and load masks (at stride 2,
        32 bits: the two loads'), ``w`` the ``kh * kw`` float32 weights, ``out`` the first
        row's output vector (the next row's ``ostride`` bytes on), ``omask`` its store
        mask, ``ep`` float32 ``[bias, lo, hi]``, ``flags`` the epilogue's steps
        (``BIAS | RELU | CLIP``)."""
        sig = types.void(*([types.intp] * 9))

        def codegen(context, builder, signature, args):
            rtab, cols, masks, w, out, ostride, omask, ep, flags = args
            intp = context.get_value_type(types.intp)
            i1v = ir.VectorType(ir.IntType(1), LANES)
            load = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(_V16F, [_V16F.as_pointer(), _I32, i1v, _V16F]),
                "llvm.masked.load.v16f32.p0v16f32")
            store = cgutils.get_or_insert_function(
                builder.module,
                ir.FunctionType(ir.VoidType(), [_V16F, _V16F.as_pointer(), _I32, i1v]),
                "llvm.masked.store.v16f32.p0v16f32")
            fma = _fma_v16(builder)
            zero = ir.Constant(_V16F, [0.0] * LANES)
            align = ir.Constant(_I32, 4)

            def const(n):
                return ir.Constant(intp, n)

            def lanes(m, shift):
                bits = builder.trunc(builder.lshr(m, const(shift)), ir.IntType(LANES))
                return builder.bitcast(bits, i1v)

            def masked(addr, m):
                return builder.call(load, [builder.inttoptr(addr, _V16F.as_pointer()), align,
                                           m, zero])

            def scalar(addr, i):
                return builder.load(builder.inttoptr(builder.add(addr, const(4 * i)),
                                                     _F32.as_pointer()))

            coff = [_word(builder, cols, const(8 * kx)) for kx in range(kw)]
            mk = [_word(builder, masks, const(8 * kx)) for kx in range(kw)]
            mlo = [lanes(m, 0) for m in mk]
            mhi = [lanes(m, LANES) for m in mk] if stride2 else None
            evens = ir.Constant(ir.VectorType(_I32, LANES), [2 * i for i in range(LANES)])
            acc = [zero] * rows
            for ky in range(kh):
                base = [_word(builder, rtab, const(8 * (j * kh + ky))) for j in range(rows)]
                for kx in range(kw):
                    wv = _splat(builder, scalar(w, ky * kw + kx))
                    for j in range(rows):
                        at = builder.add(base[j], coff[kx])
                        if stride2:
                            v = builder.shuffle_vector(
                                masked(at, mlo[kx]),
                                masked(builder.add(at, const(4 * LANES)), mhi[kx]), evens)
                        else:
                            v = masked(at, mlo[kx])
                        acc[j] = builder.call(fma, [wv, v, acc[j]])

            def step(bit):
                return builder.icmp_signed("!=", builder.and_(flags, const(bit)), const(0))

            bias = _splat(builder, scalar(ep, 0))
            lo_v, hi_v = _splat(builder, scalar(ep, 1)), _splat(builder, scalar(ep, 2))
            keep = lanes(omask, 0)
            for j in range(rows):
                s = acc[j]
                s = builder.select(step(BIAS), builder.fadd(s, bias), s)
                # NaN passes ReLU and the clip (their comparisons are false)
                s = builder.select(step(RELU), builder.select(
                    builder.fcmp_ordered("<=", s, zero), zero, s), s)
                clipped = builder.select(builder.fcmp_ordered("<", s, lo_v), lo_v, s)
                clipped = builder.select(builder.fcmp_ordered(">", clipped, hi_v), hi_v,
                                         clipped)
                s = builder.select(step(CLIP), clipped, s)
                dst = builder.add(out, builder.mul(ostride, const(j)))
                builder.call(store, [s, builder.inttoptr(dst, _V16F.as_pointer()), align, keep])
            return context.get_dummy_value()

        return sig, codegen

    return vectors


ROWS = 4
"""Output rows a call of the kernel runs at once (one vector of each)."""

WINDOWS = ((3, 3), (5, 5), (7, 7))
"""The windows the kernel is compiled for (MobileNet's, MnasNet's and EfficientNet's
3x3 and 5x5, ConvNeXt's 7x7)."""


def fits(geom) -> bool:
    """Whether a convolution of one input channel per group runs on :func:`depthwise`: a
    window of :data:`WINDOWS`, a column stride of 1 or 2."""
    return geom.kernel in WINDOWS and geom.strides[1] in (1, 2)


(_k3s1, _k3s1_one, _k3s2, _k3s2_one, _k5s1, _k5s1_one, _k5s2, _k5s2_one,
 _k7s1, _k7s1_one, _k7s2, _k7s2_one) = (
    _vectors(k, k, s2, r) for k in (3, 5, 7) for s2 in (False, True) for r in (ROWS, 1))


@numba.njit(cache=True, nogil=True)
def _tables(h, w, kh, kw, sy, sx, dy, dx, top, left, oh, ow):  # pragma: no cover
    """The row offsets ``[oh, kh]`` of every output row's window, and the column offsets
    and load masks ``[blocks, kw]`` and store masks ``[blocks]`` of every vector of an
    output row (see :func:`depthwise`)."""
    rows = np.empty((oh, kh), np.int64)
    for oy in range(oh):
        for ky in range(kh):
            iy = oy * sy + ky * dy - top
            rows[oy, ky] = iy * w * 4 if 0 <= iy < h else -1
    nb = -(-ow // LANES)
    cols = np.empty((nb, kw), np.int64)
    masks = np.zeros((nb, kw), np.int64)
    omask = np.zeros(nb, np.int64)
    for b in range(nb):
        for lane in range(min(LANES, ow - b * LANES)):
            omask[b] |= np.int64(1) << lane
        for kx in range(kw):
            start = b * LANES * sx + kx * dx - left  # input column of lane 0
            cols[b, kx] = start * 4
            for lane in range(min(LANES, ow - b * LANES)):
                if 0 <= start + lane * sx < w:
                    masks[b, kx] |= np.int64(1) << (lane * sx)
    return rows, cols, masks, omask


@numba.njit(cache=True, nogil=True)
def _run(k, sx, rows, rt, cb, mb, wo, ob, ostride, om, ea, flags):  # pragma: no cover
    """One call of the kernel of window ``k x k``, stride ``sx``, ``rows`` rows (ROWS or
    1)."""
    args = (rt, cb, mb, wo, ob, ostride, om, ea, flags)
    if k == 3:
        if sx == 1:
            _k3s1(*args) if rows == ROWS else _k3s1_one(*args)
        else:
            _k3s2(*args) if rows == ROWS else _k3s2_one(*args)
    elif k == 5:
        if sx == 1:
            _k5s1(*args) if rows == ROWS else _k5s1_one(*args)
        else:
            _k5s2(*args) if rows == ROWS else _k5s2_one(*args)
    elif sx == 1:
        _k7s1(*args) if rows == ROWS else _k7s1_one(*args)
    else:
        _k7s2(*args) if rows == ROWS else _k7s2_one(*args)


@numba.njit(cache=True, nogil=True)
def depthwise(x, wt, og, k, sy, sx, dy, dx, top, left, oh, ow, o0, o1, bias, lo, hi,
              flags, out):  # pragma: no cover - compiled
    """Output channels ``o0 <= o < o1`` of a convolution with one input channel per group
    (``og`` outputs each) and a ``k x k`` window (one of :data:`WINDOWS`):
    ``out[o, oy * ow + ox] = epilogue(sum_t wt[o, t] * x[o // og, oy * sy + ky * dy - top,
    ox * sx + kx * dx - left])`` over the taps ``t = ky * k + kx`` inside the plane, in
    that order (a fused multiply-add each); the epilogue's ``flags`` (:data:`BIAS`:
    + ``bias[o]``, :data:`RELU`, :data:`CLIP` to ``[lo, hi]``). ``x [C, H, W]``,
    ``wt [O, k * k]`` and ``out [O, oh * ow]`` float32, C-contiguous; ``sx`` 1 or 2."""
    _, h, w = x.shape
    roff, cols, masks, omask = _tables(h, w, k, k, sy, sx, dy, dx, top, left, oh, ow)
    zeros = np.zeros(w, np.float32)
    ep = np.zeros(3, np.float32)
    ep[1], ep[2] = lo, hi
    xa, wa, oa = np.intp(x.ctypes.data), np.intp(wt.ctypes.data), np.intp(out.ctypes.data)
    ca, ma = np.intp(cols.ctypes.data), np.intp(masks.ctypes.data)
    ea, za = np.intp(ep.ctypes.data), np.intp(zeros.ctypes.data)
    rtab = np.empty((oh, k), np.int64)
    ra = np.intp(rtab.ctypes.data)
    nb = omask.size
    for o in range(o0, o1):
        if flags & BIAS:
            ep[0] = bias[o]
        xc = xa + (o // og) * h * w * 4
        for oy in range(oh):
            for ky in range(k):
                rtab[oy, ky] = xc + roff[oy, ky] if roff[oy, ky] >= 0 else za
        wo = wa + o * k * k * 4
        for b in range(nb):
            cb, mb = ca + b * k * 8, ma + b * k * 8
            ob, om = oa + (o * oh * ow + b * LANES) * 4, omask[b]
            oy = 0
            while oy + ROWS <= oh:
                _run(k, sx, ROWS, ra + oy * k * 8, cb, mb, wo, ob + oy * ow * 4, ow * 4, om,
                     ea, flags)
                oy += ROWS
            for oy in range(oy, oh):
                _run(k, sx, 1, ra + oy * k * 8, cb, mb, wo, ob + oy * ow * 4, ow * 4, om, ea,
                     flags)
