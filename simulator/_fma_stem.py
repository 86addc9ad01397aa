# SPDX-License-Identifier: Apache-2.0
"""fp32 convolutions of three input channels (a network's RGB stem) with a 3x3 window,
on the CPU's 512-bit vectors, read from and written to the planes in place.

A call runs one vector of ``LANES`` pixels of one output row for ``OUTPUTS`` output
channels: each tap ``(ky, kx, c)`` is one masked load of its input row (two and a shuffle
at stride 2, as in :mod:`npusim.simulator._fma_rows`), times each output's weight
broadcast, on a fused multiply-add into that output's sums; the epilogue (+ bias, ReLU,
clip) in the registers before the masked stores. The general path made a padded copy,
a phase layout and a tile buffer of such a layer and passed over each (MobileNet's 3 ->
32 at stride 2 on 224x224: about 0.45 ms on two threads; onnxruntime 0.12-0.2 ms). The
sums run in the window's ``(ky, kx, c)`` order (fp32 sums are not bit-defined)."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from npusim.simulator._fma import _V16F, LANES, _fma_v16, _splat
from npusim.simulator._fma_rows import BIAS, CLIP, RELU, _Emitter, _tables

OUTPUTS = 16
"""Output channels a call makes (its sums in 16 vector registers)."""

CHANNELS = (3,)
"""Input channel counts compiled for (one channel ran slower than the general path: its
nine taps a call do not cover the epilogue and the sixteen stores)."""

__all__ = ["BIAS", "CLIP", "OUTPUTS", "RELU", "conv", "fits"]


WIDTH = 64
"""Narrowest output rows taken: on small planes (CIFAR's 32x32) the general path was as
fast, and the vectors' cache-line splits made this one 1-2x slower by where the planes
happened to lie (28x28: 42-128 µs against 35-73)."""


def fits(geom, channels: int, out_w: int) -> bool:
    """Whether an fp32 convolution of ``channels`` input channels into rows of ``out_w``
    pixels runs here: one group, a 3x3 window, a column stride of 1 or 2,
    :data:`CHANNELS`, rows of at least :data:`WIDTH`."""
    return (geom.groups == 1 and channels in CHANNELS and geom.kernel == (3, 3)
            and geom.strides[1] in (1, 2) and out_w >= WIDTH)


def _vectors(c: int, k: int, stride2: bool):
    """The intrinsic of one vector of pixels of one output row, ``OUTPUTS`` outputs."""
    @intrinsic
    def vectors(typingctx, rtab, cols, masks, w, wstride, bias, out, ostride, omask, ep,
                flags, nout):
        """``rtab`` the int64 addresses of the window's rows, channel by channel (``c *
        k``; a padding row's is a row of zeros), ``cols``/``masks`` as
        :mod:`npusim.simulator._fma_rows`'s, ``w`` the first output's float32 weights in
        ``(ky, kx, c)`` order (the next output's ``wstride`` bytes on), ``bias`` its
        float32 bias (the next's after it), ``out`` its output vector (the next output's
        ``ostride`` bytes on), ``omask`` the store mask, ``ep`` float32 ``[unused, lo,
        hi]``, ``flags`` the epilogue's steps, ``nout`` how many outputs to store."""
        sig = types.void(*([types.intp] * 12))

        def codegen(context, builder, signature, args):
            rtab, cols, masks, w, wstride, bias, out, ostride, omask, ep, flags, nout = args
            b = builder
            zero = ir.Constant(_V16F, [0.0] * LANES)
            em = _Emitter(context, b, cols, masks, k, stride2, zero)
            fma = _fma_v16(b)
            rows = [[em.word(rtab, 8 * (ch * k + ky)) for ky in range(k)] for ch in range(c)]
            wrow = [b.add(w, b.mul(wstride, em.const(o))) for o in range(OUTPUTS)]
            acc = [zero] * OUTPUTS
            for ky in range(k):
                for kx in range(k):
                    for ch in range(c):
                        acc = em.pin(acc)
                        v = em.tap(rows[ch][ky], kx)
                        t = (ky * k + kx) * c + ch
                        for o in range(OUTPUTS):
                            acc[o] = b.call(fma, [_splat(b, em.scalar(wrow[o], t)), v, acc[o]])
            keep = em.lanes(omask, 0)
            none = ir.Constant(em.i1v, [0] * LANES)
            for o in range(OUTPUTS):
                s = em.epilogue(acc[o], ep, flags, bias=_splat(b, em.scalar(bias, o)))
                stored = b.select(b.icmp_signed("<", em.const(o), nout), keep, none)
                em.store(s, b.add(out, b.mul(ostride, em.const(o))), stored)
            return context.get_dummy_value()

        return sig, codegen

    return vectors


_c3s1, _c3s2 = (_vectors(3, 3, s2) for s2 in (False, True))


@numba.njit(cache=True, nogil=True)
def _run(sx, args):  # pragma: no cover - compiled
    if sx == 1:
        _c3s1(*args)
    else:
        _c3s2(*args)


@numba.njit(cache=True, nogil=True)
def conv(x, wt, sy, sx, dy, dx, top, left, oh, ow, y0, y1, bias, lo, hi, flags,
         out):  # pragma: no cover - compiled
    """Output rows ``y0 <= oy < y1`` of the convolution of ``x [3, H, W]`` with
    ``wt [R, 27]`` (K in ``(ky, kx, c)`` order) and a 3x3 window, into
    ``out [O, oh * ow]``, with the epilogue's ``flags`` (``bias [R]``, ``lo``, ``hi``);
    float32, C-contiguous, ``sx`` 1 or 2. ``R``, ``O`` rounded up to a multiple of
    ``OUTPUTS``: a call reads the weights and biases of ``OUTPUTS`` outputs."""
    c, h, w = x.shape
    k = 3
    o_all, kk = out.shape[0], wt.shape[1]
    if min(wt.shape[0], bias.size) < -(-o_all // OUTPUTS) * OUTPUTS:
        raise ValueError("the weights and biases must fill whole groups of OUTPUTS")
    roff, cols, masks, omask = _tables(h, w, k, k, sy, sx, dy, dx, top, left, oh, ow)
    padding = np.zeros(w, np.float32)
    ep = np.zeros(3, np.float32)
    ep[1], ep[2] = lo, hi
    rtab = np.empty(c * k, np.int64)
    xa, wa, ba = np.intp(x.ctypes.data), np.intp(wt.ctypes.data), np.intp(bias.ctypes.data)
    oa, ca, ma = np.intp(out.ctypes.data), np.intp(cols.ctypes.data), np.intp(masks.ctypes.data)
    ea, pa, ra = np.intp(ep.ctypes.data), np.intp(padding.ctypes.data), np.intp(rtab.ctypes.data)
    for oy in range(y0, y1):
        for ch in range(c):
            for ky in range(k):
                r = roff[oy, ky]
                rtab[ch * k + ky] = xa + ch * h * w * 4 + r if r >= 0 else pa
        for o0 in range(0, o_all, OUTPUTS):
            nout = min(OUTPUTS, o_all - o0)
            for b in range(omask.size):
                _run(sx, (ra, ca + b * k * 8, ma + b * k * 8, wa + o0 * kk * 4, kk * 4,
                             ba + o0 * 4, oa + (o0 * oh * ow + oy * ow + b * LANES) * 4,
                             oh * ow * 4, omask[b], ea, flags, nout))
