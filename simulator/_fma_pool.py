# SPDX-License-Identifier: Apache-2.0
"""Max pooling on the CPU's 512-bit vectors, read from and written to its planes in place,
as :mod:`npusim.simulator._fma_depthwise` runs depthwise convolutions: vectors of 16
output pixels of four output rows at a time, each tap one masked load (two and a shuffle
at column stride 2) whose masked-off lanes (the padding, the ceil-mode overhang) read
-inf, as does a padding row. Each tap is taken as :func:`npusim.simulator.kernels.
maxpool_reference` takes it: a NaN wins, and of equal values (+0 and -0) the later tap."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.simulator._fma import _I32, _V16F, LANES, _word
from npusim.simulator._fma_depthwise import ROWS, _tables


def _vectors(k: int, stride2: bool, rows: int):
    """The intrinsic of one vector of pixels of ``rows`` consecutive output rows of a
    ``k x k`` window, unrolled."""
    @intrinsic
    def vectors(typingctx, rtab, cols, masks, out, ostride, omask):
        """``rtab`` the int64 table of the first row's ``k`` window row addresses, the next
        row's after it (a padding row's is a row of -inf), ``cols`` and ``masks`` the
        tables of the ``k`` taps' column byte offsets and load masks (at stride 2, 32
        bits: the two loads'), ``out`` the first row's output vector (the next row's
        ``ostride`` bytes on), ``omask`` its store mask."""
        sig = types.void(*([types.intp] * 6))

        def codegen(context, builder, signature, args):
            rtab, cols, masks, out, ostride, omask = args
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
            low = ir.Constant(_V16F, [float("-inf")] * LANES)
            align = ir.Constant(_I32, 4)

            def const(n):
                return ir.Constant(intp, n)

            def lanes(m, shift):
                bits = builder.trunc(builder.lshr(m, const(shift)), ir.IntType(LANES))
                return builder.bitcast(bits, i1v)

            def masked(addr, m):
                return builder.call(load, [builder.inttoptr(addr, _V16F.as_pointer()), align,
                                           m, low])

            coff = [_word(builder, cols, const(8 * kx)) for kx in range(k)]
            mk = [_word(builder, masks, const(8 * kx)) for kx in range(k)]
            mlo = [lanes(m, 0) for m in mk]
            mhi = [lanes(m, LANES) for m in mk] if stride2 else None
            evens = ir.Constant(ir.VectorType(_I32, LANES), [2 * i for i in range(LANES)])
            acc = [low] * rows
            for ky in range(k):
                base = [_word(builder, rtab, const(8 * (j * k + ky))) for j in range(rows)]
                for kx in range(k):
                    for j in range(rows):
                        at = builder.add(base[j], coff[kx])
                        if stride2:
                            v = builder.shuffle_vector(
                                masked(at, mlo[kx]),
                                masked(builder.add(at, const(4 * LANES)), mhi[kx]), evens)
                        else:
                            v = masked(at, mlo[kx])
                        m = acc[j]
                        # np.maximum's pick: a NaN wins, of equal values the later tap
                        take = builder.and_(
                            builder.or_(builder.fcmp_ordered(">=", v, m),
                                        builder.fcmp_unordered("uno", v, v)),
                            builder.fcmp_ordered("ord", m, m))
                        acc[j] = builder.select(take, v, m)
            keep = lanes(omask, 0)
            for j in range(rows):
                dst = builder.add(out, builder.mul(ostride, const(j)))
                builder.call(store, [acc[j], builder.inttoptr(dst, _V16F.as_pointer()), align,
                                     keep])
            return context.get_dummy_value()

        return sig, codegen

    return vectors


WINDOWS = ((2, 2), (3, 3), (5, 5))
"""The windows the kernel is compiled for (VGG's and YOLO's 2x2, the 3x3 of ResNet,
GoogLeNet and SqueezeNet, YOLO's 5x5)."""


def fits(geom) -> bool:
    """Whether a max pooling runs on :func:`maxpool`: a window of :data:`WINDOWS`, a column
    stride of 1 or 2."""
    return geom.kernel in WINDOWS and geom.strides[1] in (1, 2)


(_k2s1, _k2s1_one, _k2s2, _k2s2_one, _k3s1, _k3s1_one, _k3s2, _k3s2_one,
 _k5s1, _k5s1_one, _k5s2, _k5s2_one) = (
    _vectors(k, s2, r) for k in (2, 3, 5) for s2 in (False, True) for r in (ROWS, 1))


@numba.njit(cache=True, nogil=True)
def _run(k, sx, rows, rt, cb, mb, ob, ostride, om):  # pragma: no cover - compiled
    """One call of the kernel of window ``k x k``, stride ``sx``, ``rows`` rows (ROWS or
    1)."""
    args = (rt, cb, mb, ob, ostride, om)
    if k == 2:
        if sx == 1:
            _k2s1(*args) if rows == ROWS else _k2s1_one(*args)
        else:
            _k2s2(*args) if rows == ROWS else _k2s2_one(*args)
    elif k == 3:
        if sx == 1:
            _k3s1(*args) if rows == ROWS else _k3s1_one(*args)
        else:
            _k3s2(*args) if rows == ROWS else _k3s2_one(*args)
    elif sx == 1:
        _k5s1(*args) if rows == ROWS else _k5s1_one(*args)
    else:
        _k5s2(*args) if rows == ROWS else _k5s2_one(*args)


@numba.njit(cache=True, nogil=True)
def maxpool(x, k, sy, sx, dy, dx, top, left, oh, ow, p0, p1, out):  # pragma: no cover
    """Planes ``p0 <= p < p1`` of the max pooling of ``x [P, H, W]`` with a ``k x k``
    window (one of :data:`WINDOWS`) into ``out [P, oh * ow]`` (float32, C-contiguous):
    ``out[p, oy * ow + ox]`` the largest of ``x[p, oy * sy + ky * dy - top, ox * sx +
    kx * dx - left]`` over the taps in ``(ky, kx)`` order, -inf outside the plane; ``sx``
    1 or 2."""
    _, h, w = x.shape
    roff, cols, masks, omask = _tables(h, w, k, k, sy, sx, dy, dx, top, left, oh, ow)
    low = np.full(w, -np.inf, np.float32)
    xa, oa, la = np.intp(x.ctypes.data), np.intp(out.ctypes.data), np.intp(low.ctypes.data)
    ca, ma = np.intp(cols.ctypes.data), np.intp(masks.ctypes.data)
    rtab = np.empty((oh, k), np.int64)
    ra = np.intp(rtab.ctypes.data)
    for p in range(p0, p1):
        xc = xa + p * h * w * 4
        for oy in range(oh):
            for ky in range(k):
                rtab[oy, ky] = xc + roff[oy, ky] if roff[oy, ky] >= 0 else la
        for b in range(omask.size):
            cb, mb = ca + b * k * 8, ma + b * k * 8
            ob, om = oa + (p * oh * ow + b * LANES) * 4, omask[b]
            oy = 0
            while oy + ROWS <= oh:
                _run(k, sx, ROWS, ra + oy * k * 8, cb, mb, ob + oy * ow * 4, ow * 4, om)
                oy += ROWS
            for oy in range(oy, oh):
                _run(k, sx, 1, ra + oy * k * 8, cb, mb, ob + oy * ow * 4, ow * 4, om)
