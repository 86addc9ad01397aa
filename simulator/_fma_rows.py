# SPDX-License-Identifier: Apache-2.0
"""fp32 convolutions of one input channel per group (depthwise), and max pooling, on the
CPU's 512-bit vectors, read from and written to their planes in place.

Each output row is cut into vectors of ``LANES`` pixels; a call runs the same vector of
``ROWS`` consecutive output rows. Tap ``(ky, kx)`` is one masked load of the input row
``oy * sy + ky * dy - top`` from column ``ox * sx + kx * dx - left`` (at stride 2, two
loads and a shuffle that keeps the even elements), the mask dropping the lanes that fall
in the padding or past the row; a padding row reads a row of the padding's value.

* :func:`depthwise`: the tap times its weight broadcast, on a fused multiply-add into the
  vector's sums; the epilogue (+ bias, ReLU, clip, each in fp32) applied in the register
  before a masked store. No padded copy, no phase layout and no second pass over the
  output: the layers of the mobile networks read each input and write each output once.
* :func:`maxpool`: the padding reads -inf, and each tap is taken as
  :func:`npusim.simulator.kernels.maxpool_reference` takes it: a NaN wins, and of equal
  values (+0 and -0) the later tap.

The window is unrolled when the kernel is generated, so the taps' column masks stay in
mask registers. Masked-off lanes are not read (AVX-512 masked loads do not fault on
them), so a load that starts before a row, or runs past the plane, touches only the
row's own elements."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.simulator._fma import _F32, _I32, _V16F, LANES, _fma_v16, _splat, _word

BIAS, RELU, CLIP, RESIDUAL = 1, 2, 4, 8
"""Bits of the epilogue ``flags`` a kernel applies itself (the depthwise one takes no
residual)."""


class _Emitter:
    """What the row-vector intrinsics share when they generate code: the tap's masked
    load (two and a shuffle at stride 2), scalar and table reads, the masked store."""

    def __init__(self, context, builder, cols, masks, kw: int, stride2: bool, fill) -> None:
        self.builder, self.fill, self.stride2 = builder, fill, stride2
        self.intp = context.get_value_type(types.intp)
        self.i1v = ir.VectorType(ir.IntType(1), LANES)
        self._load = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16F, [_V16F.as_pointer(), _I32, self.i1v, _V16F]),
            "llvm.masked.load.v16f32.p0v16f32")
        self._store = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [_V16F, _V16F.as_pointer(), _I32, self.i1v]),
            "llvm.masked.store.v16f32.p0v16f32")
        self.coff = [self.word(cols, 8 * kx) for kx in range(kw)]
        mk = [self.word(masks, 8 * kx) for kx in range(kw)]
        self.mlo = [self.lanes(m, 0) for m in mk]
        self.mhi = [self.lanes(m, LANES) for m in mk] if stride2 else None
        self.evens = ir.Constant(ir.VectorType(_I32, LANES), [2 * i for i in range(LANES)])

    def const(self, n):
        return ir.Constant(self.intp, n)

    def word(self, addr, offset: int):
        """The int64 at byte address ``addr + offset``."""
        return _word(self.builder, addr, self.const(offset))

    def lanes(self, m, shift: int):
        """Bits ``shift...shift + LANES`` of ``m`` as a lane mask."""
        b = self.builder
        return b.bitcast(b.trunc(b.lshr(m, self.const(shift)), ir.IntType(LANES)), self.i1v)

    def scalar(self, addr, i: int):
        """The float32 ``i`` of the array at ``addr``."""
        b = self.builder
        return b.load(b.inttoptr(b.add(addr, self.const(4 * i)), _F32.as_pointer()))

    def _masked(self, addr, m):
        b = self.builder
        return b.call(self._load, [b.inttoptr(addr, _V16F.as_pointer()), ir.Constant(_I32, 4),
                                   m, self.fill])

    def tap(self, row, kx: int):
        """Column tap ``kx`` of the vector whose window row starts at address ``row``."""
        b = self.builder
        at = b.add(row, self.coff[kx])
        if not self.stride2:
            return self._masked(at, self.mlo[kx])
        return b.shuffle_vector(self._masked(at, self.mlo[kx]),
                                self._masked(b.add(at, self.const(4 * LANES)), self.mhi[kx]),
                                self.evens)

    def pin(self, vs: list) -> list:
        """``vs`` as made at this point of the code, and loads kept on their side of it:
        LLVM would otherwise hoist a window's loads ahead of their use, keep taps loaded
        once for a second pass, or sink a chain of integer maxima into a tree at its end,
        and spill what it holds (a tap pass ran 3-4x slower)."""
        b, n = self.builder, len(vs)
        ty = vs[0].type if n == 1 else ir.LiteralStructType([v.type for v in vs])
        tie = ",".join(["=v"] * n + [str(i) for i in range(n)] + ["~{memory}"])
        pinned = b.call(ir.InlineAsm(ir.FunctionType(ty, [v.type for v in vs]), "", tie,
                                     side_effect=True), vs)
        return [pinned] if n == 1 else [b.extract_value(pinned, i) for i in range(n)]

    def store(self, v, addr, keep) -> None:
        b = self.builder
        b.call(self._store, [v, b.inttoptr(addr, _V16F.as_pointer()), ir.Constant(_I32, 4), keep])

    def epilogue(self, s, ep, flags, bias=None):
        """``s`` + bias, ReLU, clip (``ep`` float32 ``[bias, lo, hi]``; ``bias``, a
        vector, instead of its first), each step as ``flags`` says (:func:`epilogue`)."""
        b = self.builder
        if bias is None:
            bias = _splat(b, self.scalar(ep, 0))
        return epilogue(b, s, flags, bias, _splat(b, self.scalar(ep, 1)),
                        _splat(b, self.scalar(ep, 2)))


def relu(b, s):
    """The code of ReLU on vector ``s`` in fp32: a NaN passes (its comparison is false),
    -0 becomes +0."""
    zero = ir.Constant(_V16F, [0.0] * LANES)
    return b.select(b.fcmp_ordered("<=", s, zero), zero, s)


def clip(b, s, lo, hi):
    """The code of vector ``s`` clipped to ``[lo, hi]`` (vectors): a NaN passes."""
    s = b.select(b.fcmp_ordered("<", s, lo), lo, s)
    return b.select(b.fcmp_ordered(">", s, hi), hi, s)


def epilogue(b, s, flags, bias, lo, hi):
    """The code of ``s`` + ``bias``, ReLU, clip to ``[lo, hi]`` (vectors), each step
    where the int64 ``flags`` has its bit (:data:`BIAS`, :data:`RELU`, :data:`CLIP`): the
    steps and order of :func:`npusim.simulator._vnni.store`."""
    def step(bit):
        return b.icmp_signed("!=", b.and_(flags, ir.Constant(flags.type, bit)),
                             ir.Constant(flags.type, 0))

    s = b.select(step(BIAS), b.fadd(s, bias), s)
    s = b.select(step(RELU), relu(b, s), s)
    return b.select(step(CLIP), clip(b, s, lo, hi), s)


def _vectors(kh: int, kw: int, stride2: bool, rows: int, pool: bool):
    """The intrinsic of one vector of pixels of ``rows`` consecutive output rows of a
    ``kh x kw`` window (see the module's docstring), unrolled: ``rows`` independent
    chains hide the latency, and each tap's weight is broadcast once for all of them.
    With ``pool``, the largest tap instead of the weighted sum, and no epilogue."""
    @intrinsic
    def vectors(typingctx, rtab, cols, masks, w, out, ostride, omask, ep, flags):
        """``rtab`` the int64 table of the first row's ``kh`` window row addresses, the
        next row's after it (a padding row's is a row of the padding's value), ``cols``
        and ``masks`` the tables of the ``kw`` taps' column byte offsets and load masks
        (at stride 2, 32 bits: the two loads'), ``w`` the ``kh * kw`` float32 weights,
        ``out`` the first row's output vector (the next row's ``ostride`` bytes on),
        ``omask`` its store mask, ``ep`` float32 ``[bias, lo, hi]``, ``flags`` the
        epilogue's steps (``BIAS | RELU | CLIP``); ``w``, ``ep`` and ``flags`` unused with
        ``pool``."""
        sig = types.void(*([types.intp] * 9))

        def codegen(context, builder, signature, args):
            rtab, cols, masks, w, out, ostride, omask, ep, flags = args
            fill = ir.Constant(_V16F, [float("-inf") if pool else 0.0] * LANES)
            em = _Emitter(context, builder, cols, masks, kw, stride2, fill)
            fma = _fma_v16(builder)

            def take(v, m):
                """``m`` with tap ``v`` taken in: its sum, or np.maximum's pick (a NaN
                wins, of equal values the later tap)."""
                if not pool:
                    return builder.call(fma, [wv, v, m])
                later = builder.and_(
                    builder.or_(builder.fcmp_ordered(">=", v, m),
                                builder.fcmp_unordered("uno", v, v)),
                    builder.fcmp_ordered("ord", m, m))
                return builder.select(later, v, m)

            acc = [fill] * rows
            for ky in range(kh):
                base = [em.word(rtab, 8 * (j * kh + ky)) for j in range(rows)]
                for kx in range(kw):
                    acc = em.pin(acc)
                    wv = None if pool else _splat(builder, em.scalar(w, ky * kw + kx))
                    for j in range(rows):
                        acc[j] = take(em.tap(base[j], kx), acc[j])
            keep = em.lanes(omask, 0)
            for j in range(rows):
                s = acc[j] if pool else em.epilogue(acc[j], ep, flags)
                em.store(s, builder.add(out, builder.mul(ostride, em.const(j))), keep)
            return context.get_dummy_value()

        return sig, codegen

    return vectors


ROWS = 4
"""Output rows a call of the kernel runs at once (one vector of each). A plane of fewer
rows takes another path; a last group of fewer is shifted up to end at the plane's last
row, recomputing rows already made (the same values), so that one kernel per window and
stride serves (half the code to compile)."""

DEPTHWISE_WINDOWS = ((3, 3), (5, 5), (7, 7))
"""The windows :func:`depthwise` is compiled for (MobileNet's, MnasNet's and
EfficientNet's 3x3 and 5x5, ConvNeXt's 7x7)."""

POOL_WINDOWS = ((2, 2), (3, 3), (5, 5))
"""The windows :func:`maxpool` is compiled for (VGG's and YOLO's 2x2, the 3x3 of ResNet,
GoogLeNet and SqueezeNet, YOLO's 5x5)."""


def depthwise_fits(geom, out_h: int) -> bool:
    """Whether a convolution of one input channel per group with ``out_h`` output rows
    runs on :func:`depthwise`: a window of :data:`DEPTHWISE_WINDOWS`, a column stride of
    1 or 2, at least :data:`ROWS` output rows."""
    return geom.kernel in DEPTHWISE_WINDOWS and geom.strides[1] in (1, 2) and out_h >= ROWS


def maxpool_fits(geom, out_h: int) -> bool:
    """Whether a max pooling with ``out_h`` output rows runs on :func:`maxpool`: a window
    of :data:`POOL_WINDOWS`, a column stride of 1 or 2, at least :data:`ROWS` output
    rows."""
    return geom.kernel in POOL_WINDOWS and geom.strides[1] in (1, 2) and out_h >= ROWS


(_d3s1, _d3s2, _d5s1, _d5s2, _d7s1, _d7s2) = (
    _vectors(k, k, s2, ROWS, False) for k in (3, 5, 7) for s2 in (False, True))
(_p2s1, _p2s2, _p3s1, _p3s2, _p5s1, _p5s2) = (
    _vectors(k, k, s2, ROWS, True) for k in (2, 3, 5) for s2 in (False, True))


@numba.njit(cache=True, nogil=True)
def _run(pool, k, sx, args):  # pragma: no cover - compiled
    """One call of the kernel of window ``k x k``, stride ``sx``, a depthwise
    convolution's or (``pool``) a max pooling's."""
    if pool:
        if k == 2:
            _p2s1(*args) if sx == 1 else _p2s2(*args)
        elif k == 3:
            _p3s1(*args) if sx == 1 else _p3s2(*args)
        else:
            _p5s1(*args) if sx == 1 else _p5s2(*args)
    elif k == 3:
        _d3s1(*args) if sx == 1 else _d3s2(*args)
    elif k == 5:
        _d5s1(*args) if sx == 1 else _d5s2(*args)
    else:
        _d7s1(*args) if sx == 1 else _d7s2(*args)


@numba.njit(cache=True, nogil=True)
def _tables(h, w, kh, kw, sy, sx, dy, dx, top, left, oh, ow):  # pragma: no cover
    """The row offsets ``[oh, kh]`` of every output row's window (-1: a padding row), and
    the column offsets and load masks ``[blocks, kw]`` and store masks ``[blocks]`` of
    every vector of an output row."""
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


@numba.njit(cache=True, inline="always")
def _row_addresses(roff, plane, padding, rtab):  # pragma: no cover - compiled
    """``rtab[oy, ky]``: the byte address of output row ``oy``'s window row ``ky``, at
    ``roff``'s offset in the plane at ``plane``, or the padding row's (``roff`` -1)."""
    for oy in range(roff.shape[0]):
        for ky in range(roff.shape[1]):
            rtab[oy, ky] = plane + roff[oy, ky] if roff[oy, ky] >= 0 else padding


@numba.njit(cache=True, nogil=True)
def _planes(x, wt, og, k, sy, sx, dy, dx, top, left, oh, ow, o0, o1, bias, lo, hi, flags,
            pool, out):  # pragma: no cover - compiled
    """Output planes ``o0 <= o < o1`` (each of input plane ``o // og``) of :func:`depthwise`
    or, with ``pool``, of :func:`maxpool` (``wt`` and ``bias`` then unread)."""
    _, h, w = x.shape
    roff, cols, masks, omask = _tables(h, w, k, k, sy, sx, dy, dx, top, left, oh, ow)
    padding = np.full(w, -np.inf if pool else 0.0, np.float32)
    ep = np.zeros(3, np.float32)
    ep[1], ep[2] = lo, hi
    xa, wa, oa = np.intp(x.ctypes.data), np.intp(wt.ctypes.data), np.intp(out.ctypes.data)
    ca, ma = np.intp(cols.ctypes.data), np.intp(masks.ctypes.data)
    ea, pa = np.intp(ep.ctypes.data), np.intp(padding.ctypes.data)
    rtab = np.empty((oh, k), np.int64)
    ra = np.intp(rtab.ctypes.data)
    for o in range(o0, o1):
        if flags & BIAS:
            ep[0] = bias[o]
        _row_addresses(roff, xa + (o // og) * h * w * 4, pa, rtab)
        wo = wa + (0 if pool else o * k * k * 4)
        for b in range(omask.size):
            cb, mb = ca + b * k * 8, ma + b * k * 8
            ob = oa + (o * oh * ow + b * LANES) * 4
            for first in range(0, oh, ROWS):
                oy = min(first, oh - ROWS)  # the last group ends at the last row
                _run(pool, k, sx, (ra + oy * k * 8, cb, mb, wo, ob + oy * ow * 4, ow * 4,
                                   omask[b], ea, flags))


@numba.njit(cache=True, nogil=True)
def depthwise(x, wt, og, k, sy, sx, dy, dx, top, left, oh, ow, o0, o1, bias, lo, hi,
              flags, out):  # pragma: no cover - compiled
    """Output channels ``o0 <= o < o1`` of a convolution with one input channel per group
    (``og`` outputs each) and a ``k x k`` window (one of :data:`DEPTHWISE_WINDOWS`):
    ``out[o, oy * ow + ox] = epilogue(sum_t wt[o, t] * x[o // og, oy * sy + ky * dy - top,
    ox * sx + kx * dx - left])`` over the taps ``t = ky * k + kx`` inside the plane, in
    that order (a fused multiply-add each); the epilogue's ``flags`` (:data:`BIAS`:
    + ``bias[o]``, :data:`RELU`, :data:`CLIP` to ``[lo, hi]``). ``x [C, H, W]``,
    ``wt [O, k * k]`` and ``out [O, oh * ow]`` float32, C-contiguous; ``sx`` 1 or 2."""
    _planes(x, wt, og, k, sy, sx, dy, dx, top, left, oh, ow, o0, o1, bias, lo, hi, flags,
            False, out)


@numba.njit(cache=True, nogil=True)
def maxpool(x, k, sy, sx, dy, dx, top, left, oh, ow, p0, p1, out):  # pragma: no cover
    """Planes ``p0 <= p < p1`` of the max pooling of ``x [P, H, W]`` with a ``k x k``
    window (one of :data:`POOL_WINDOWS`) into ``out [P, oh * ow]`` (float32, C-contiguous):
    ``out[p, oy * ow + ox]`` the largest of ``x[p, oy * sy + ky * dy - top, ox * sx +
    kx * dx - left]`` over the taps in ``(ky, kx)`` order, -inf outside the plane; ``sx``
    1 or 2."""
    none = np.zeros(1, np.float32)
    _planes(x, none, 1, k, sy, sx, dy, dx, top, left, oh, ow, p0, p1, none, np.float32(0),
            np.float32(0), 0, True, out)
