# SPDX-License-Identifier: Apache-2.0
"""numba kernels of the convolutions that are no GEMM: grouped ones with small groups and
depthwise ones (one input channel per group), with the golden model's result.

They gather each window themselves, quantize it with the activations' quantizer of
:mod:`npusim.simulator._fast_gemm` and sum its block products in the device's order
(``_accumulate_block``), so their numbers are those of the GEMM path; fp32 twins sum each
window in K order. ``tests/simulator/test_fast_gemm.py`` compares every kernel bit for
bit with the numpy reference. Kernels compile on first call, never at import.
"""

from __future__ import annotations

import numba
import numpy as np

from npusim.simulator._fast_gemm import (
    _MAX_SCALE,
    _MIN_NORMAL,
    _accumulate_block,
    _gather,
    _quantize_block,
    _scale_range,
)


@numba.njit(cache=True, inline="always")
def _row_product(wq, o, q, sa, sw, lo, hi, nk, block, p, acc):  # pragma: no cover - compiled
    """``acc[:n] =`` weight row ``o``'s product with quantized columns ``q [J, B, n]``
    (scales ``sa [J, n]``, in ``[lo[j], hi[j]]``): per block, the exact integer products
    summed in fp32 (``p`` scratch), then accumulated in block order (``wq [O, Kp]`` int8,
    ``sw [O, J]`` f64)."""
    n = acc.shape[0]
    acc[:] = 0.0
    for j in range(sa.shape[0]):
        p[:] = 0.0
        for b in range(min(block, nk - j * block)):
            wv = np.float32(wq[o, j * block + b])
            if wv != 0.0:  # integer products and sums: exact in fp32
                qb = q[j, b]
                for i in range(n):
                    p[i] += wv * qb[i]
        _accumulate_block(acc, p, sa[j], sw[o, j], lo[j], hi[j])


@numba.njit(cache=True, inline="always")
def _block_scratch(nblocks, depth, width):  # pragma: no cover - compiled
    """A direct kernel's buffers for ``width`` columns of ``nblocks`` blocks of ``depth``
    taps: gathered taps, mantissas, scales, their ranges, products and the quantizer's
    scratch (see :func:`_block_views`)."""
    return (np.empty(depth * width, np.float32), np.empty(nblocks * depth * width, np.float32),
            np.empty(nblocks * width, np.float32), np.empty(nblocks, np.float64),
            np.empty(nblocks, np.float64), np.empty(width, np.float32),
            np.empty((3, width), np.float64))


@numba.njit(cache=True, inline="always")
def _block_views(vbuf, qbuf, sbuf, nblocks, depth, n):  # pragma: no cover - compiled
    """The taps ``v [depth, n]``, mantissas ``q [nblocks, depth, n]`` and scales
    ``sa [nblocks, n]`` of ``n`` columns in :func:`_block_scratch`'s buffers."""
    return (vbuf[:depth * n].reshape(depth, n),
            qbuf[:nblocks * depth * n].reshape(nblocks, depth, n),
            sbuf[:nblocks * n].reshape(nblocks, n))


@numba.njit(cache=True, nogil=True)
def _grouped_quantized(xp, kc, ky, kx, oh, ow, sy, sx, cg, og, block, mbits, emin, emax, wq,
                       sw, g0, g1, step, out):  # pragma: no cover - compiled
    # A grouped (or depthwise) convolution, one group per task (g0 <= g < g1): gather the
    # group's K_g taps (channel offsets within the group in kc) over ``step`` output rows
    # at a time (so the columns stay in L1), quantize them, and multiply by each of the
    # group's og weight rows, vectorized along the columns. xp padded; wq [O, J*B] int8,
    # sw [O, J] f64, out [O, oh*ow].
    nk = kc.shape[0]
    nblocks = sw.shape[1]
    rows = min(block, nk)  # a block longer than K (ms-fp8's 128) is mostly padding: skip it
    width = min(oh, step) * ow
    vbuf, qbuf, sbuf, lo, hi, pbuf, scratch = _block_scratch(nblocks, rows, width)
    for g in range(g0, g1):
        for oy0 in range(0, oh, step):
            oy1 = min(oh, oy0 + step)
            n = (oy1 - oy0) * ow
            v, q, sa = _block_views(vbuf, qbuf, sbuf, nblocks, rows, n)
            p = pbuf[:n]
            for j in range(nblocks):
                nb = min(block, nk - j * block)
                for b in range(nb):
                    k = j * block + b
                    _gather(xp, g * cg + kc[k], ky[k], kx[k], oy0, oy1, ow, sy, sx, v[b])
                _quantize_block(v, nb, mbits, emin, emax, q[j], sa[j], scratch)
                lo[j], hi[j] = _scale_range(sa[j])
            for o in range(g * og, (g + 1) * og):
                _row_product(wq, o, q, sa, sw, lo, hi, nk, block, p,
                             out[o, oy0 * ow:oy1 * ow])


@numba.njit(cache=True, nogil=True)
def _grouped_f32(xp, kc, ky, kx, oh, ow, sy, sx, cg, og, wf, g0, g1, step,
                 out):  # pragma: no cover - compiled
    # fp32 twin of _grouped_quantized: wf [O, K_g] f32; the sum runs in K order
    nk = kc.shape[0]
    vbuf = np.empty(nk * min(oh, step) * ow, np.float32)
    for g in range(g0, g1):
        for oy0 in range(0, oh, step):
            oy1 = min(oh, oy0 + step)
            n = (oy1 - oy0) * ow
            v = vbuf[:nk * n].reshape(nk, n)
            for k in range(nk):
                _gather(xp, g * cg + kc[k], ky[k], kx[k], oy0, oy1, ow, sy, sx, v[k])
            for o in range(g * og, (g + 1) * og):
                acc = out[o, oy0 * ow:oy1 * ow]
                acc[:] = 0.0
                for k in range(nk):
                    wv = wf[o, k]
                    vk = v[k]
                    for i in range(n):
                        acc[i] = acc[i] + wv * vk[i]


@numba.njit(cache=True, inline="always")
def _pad_phases(x, c, top, left, pad):  # pragma: no cover - compiled
    """Channel ``c`` of ``x [C, H, W]`` into its zero-padded plane, kept as stride phases
    ``pad [Sy, Sx, Hq, Wq]``: padded pixel ``(Y, X)`` at ``pad[Y % Sy, X % Sx, Y // Sy,
    X // Sx]``. Tap ``(ky, kx)`` of output pixel ``(oy, ox)`` is then element
    ``oy * Wq + ox + (ky // Sy) * Wq + kx // Sx`` of phase plane ``(ky % Sy, kx % Sx)``
    flattened: one run of every output row at once. The border stays zero (every channel
    writes the same interior)."""
    h, w = x.shape[1], x.shape[2]
    sy, sx = pad.shape[0], pad.shape[1]
    for y in range(h):
        yy = top + y
        if yy // sy >= pad.shape[2]:
            break
        src = x[c, y]
        for ph in range(sx):
            i0 = (ph - left) % sx  # first input column of this phase
            if i0 >= w:
                continue
            d0 = (left + i0) // sx
            n = min((w - i0 + sx - 1) // sx, pad.shape[3] - d0)
            dst = pad[yy % sy, ph, yy // sy, d0:d0 + n]
            if sx == 1:  # a step-free slice, so the copy vectorizes
                row = src[i0:i0 + n]
                for t in range(n):
                    dst[t] = row[t]
            elif sx == 2:  # pairs of columns as one int64 each (little-endian: the even
                # column in the low half), so the deinterleave vectorizes
                pairs = src[:2 * (w // 2)].view(np.int64)
                out32 = dst.view(np.int32)
                m = min(n, pairs.shape[0])
                if i0 == 0:
                    for t in range(m):
                        out32[t] = np.int32(pairs[t] & 0xFFFFFFFF)
                else:
                    for t in range(m):
                        out32[t] = np.int32(pairs[t] >> 32)
                for t in range(m, n):  # an odd width's last column
                    dst[t] = src[i0 + 2 * t]
            else:
                for t in range(n):
                    dst[t] = src[i0 + t * sx]


@numba.njit(cache=True, inline="always")
def _phase_tap(pad, ky, kx, wq, n0, n):  # pragma: no cover - compiled
    """Elements ``n0 <= m < n0 + n`` of tap ``(ky, kx)`` over the wide output (see
    :func:`_pad_phases`)."""
    sy, sx = pad.shape[0], pad.shape[1]
    flat = pad[ky % sy, kx % sx].reshape(-1)
    d = n0 + (ky // sy) * wq + kx // sx
    return flat[d:d + n]


def _phase_shape(hp: int, wp: int, sy: int, sx: int) -> tuple[int, int, int, int]:
    """The scratch of :func:`_pad_phases` for a padded ``hp x wp`` plane: one more row than
    the plane needs, for the wide output's last row (its columns past the output read up
    to a row further)."""
    return sy, sx, -(-hp // sy) + 1, -(-wp // sx)


@numba.njit(cache=True, nogil=True)
def _depthwise_planes_f32(x, top, left, pad, ky, kx, oh, ow, og, wf, c0, c1, step,
                          out):  # pragma: no cover - compiled
    # One input channel per group, a plane at a time, vectorized along the plane (for
    # planes wide enough; see _depthwise_f32 for narrow ones): channels c0 <= c < c1 of
    # the unpadded x [C, H, W], each zero-padded into the scratch `pad` (_pad_phases).
    # The sums run over a wide output, oh rows of Wq columns (the columns past ow are
    # dropped), `step` rows at a time; output row o = c*og + r of out [O, oh*ow] is
    # sum_k wf[o, k] * tap k, in K order as _grouped_f32 sums it.
    nk = ky.shape[0]
    wq = pad.shape[3]
    acc = np.empty(step * wq, np.float32)
    for c in range(c0, c1):
        _pad_phases(x, c, top, left, pad)
        for r in range(og):
            o = c * og + r
            for oy0 in range(0, oh, step):
                rows = min(step, oh - oy0)
                n = rows * wq
                a = acc[:n]
                a[:] = 0.0
                k = 0
                while k + 3 < nk:  # four taps a pass (in order): fewer trips through L1
                    w0, w1, w2, w3 = wf[o, k], wf[o, k + 1], wf[o, k + 2], wf[o, k + 3]
                    s0 = _phase_tap(pad, ky[k], kx[k], wq, oy0 * wq, n)
                    s1 = _phase_tap(pad, ky[k + 1], kx[k + 1], wq, oy0 * wq, n)
                    s2 = _phase_tap(pad, ky[k + 2], kx[k + 2], wq, oy0 * wq, n)
                    s3 = _phase_tap(pad, ky[k + 3], kx[k + 3], wq, oy0 * wq, n)
                    for i in range(n):
                        a[i] = (((a[i] + w0 * s0[i]) + w1 * s1[i]) + w2 * s2[i]) + w3 * s3[i]
                    k += 4
                for k in range(k, nk):
                    wv = wf[o, k]
                    src = _phase_tap(pad, ky[k], kx[k], wq, oy0 * wq, n)
                    for i in range(n):
                        a[i] = a[i] + wv * src[i]
                for y in range(rows):
                    out[o, (oy0 + y) * ow:(oy0 + y + 1) * ow] = a[y * wq:y * wq + ow]


@numba.njit(cache=True, nogil=True)
def _depthwise_planes_quantized(x, top, left, pad, ky, kx, oh, ow, og, block, mbits, emin,
                                emax, wq8, sw, c0, c1, step,
                                out):  # pragma: no cover - compiled
    # The block-format twin of _depthwise_planes_f32: the windows of a step of output
    # rows are gathered (a run per tap) and quantized once for the og outputs of their
    # channel, their integer block products summed in fp32 (exact) and accumulated in
    # block order, as _grouped_quantized does. wq8 [O, Kp] int8 mantissas, sw [O, J] f64
    # scales.
    nk = ky.shape[0]
    nblocks = -(-nk // block)
    wq = pad.shape[3]
    width = step * wq
    rows = min(block, nk)
    vbuf, qbuf, sbuf, lo, hi, pbuf, scratch = _block_scratch(nblocks, rows, width)
    abuf = np.empty(width, np.float32)
    for c in range(c0, c1):
        _pad_phases(x, c, top, left, pad)
        for oy0 in range(0, oh, step):
            n = min(step, oh - oy0) * wq
            v, q, sa = _block_views(vbuf, qbuf, sbuf, nblocks, rows, n)
            p = pbuf[:n]
            a = abuf[:n]
            for j in range(nblocks):
                nb = min(block, nk - j * block)
                for b in range(nb):
                    k = j * block + b
                    src = _phase_tap(pad, ky[k], kx[k], wq, oy0 * wq, n)
                    vb = v[b]
                    for i in range(n):
                        vb[i] = src[i]
                _quantize_block(v, nb, mbits, emin, emax, q[j], sa[j], scratch)
                lo[j], hi[j] = _scale_range(sa[j])
            for r in range(og):
                o = c * og + r
                _row_product(wq8, o, q, sa, sw, lo, hi, nk, block, p, a)
                for y in range(n // wq):
                    out[o, (oy0 + y) * ow:(oy0 + y + 1) * ow] = a[y * wq:y * wq + ow]


@numba.njit(cache=True, inline="always")
def _channels_first(res, n0, out):  # pragma: no cover - compiled
    """``out[c * og + r, n0 + i] = res[i, r, c]``: the channel-last sums of pixels
    ``n0...`` into the output's channel planes, a plane's run at a time (a store per pixel
    and channel straight into the planes touches a cache line each)."""
    npix, og, groups = res.shape
    for c in range(groups):
        for r in range(og):
            o = out[c * og + r, n0:n0 + npix]
            for i in range(npix):
                o[i] = res[i, r, c]


@numba.njit(cache=True, nogil=True)
def _depthwise_quantized(xt, ky, kx, ow, sy, sx, block, mbits, emin, emax, wt, swt, oy0, oy1,
                         out):  # pragma: no cover - compiled
    # A convolution with one input channel per group, vectorized along the channels (for
    # small planes, where the plane's rows are too short to vectorize): output rows
    # oy0 <= oy < oy1, every channel. xt [Hp, Wp, G] f32 padded and channel-last; tap k of
    # pixel (oy, ox) reads xt[oy*sy + ky[k], ox*sx + kx[k]]. wt [og, K, G] f32 mantissas
    # and swt [og, J, G] f64 scales of weight row g*og + r; out [O, oh*ow].
    groups = xt.shape[2]
    og, nk, _ = wt.shape
    nblocks = swt.shape[1]
    rows = min(block, nk)
    v = np.empty((rows, groups), np.float32)
    q = np.empty((rows, groups), np.float32)
    sa = np.empty(groups, np.float32)
    p = np.empty(groups, np.float32)
    res = np.empty(((oy1 - oy0) * ow, og, groups), np.float32)  # channel-last sums
    scratch = np.empty((3, groups), np.float64)
    for oy in range(oy0, oy1):
        for ox in range(ow):
            acc = res[(oy - oy0) * ow + ox]
            acc[:] = 0.0
            for j in range(nblocks):
                nb = min(block, nk - j * block)
                for b in range(nb):
                    k = j * block + b
                    src = xt[oy * sy + ky[k], ox * sx + kx[k]]
                    vb = v[b]
                    for c in range(groups):
                        vb[c] = src[c]
                _quantize_block(v, nb, mbits, emin, emax, q, sa, scratch)
                for r in range(og):
                    p[:] = 0.0
                    for b in range(nb):  # integer products and sums: exact in fp32
                        wb = wt[r, j * block + b]
                        qb = q[b]
                        for c in range(groups):
                            p[c] += wb[c] * qb[c]
                    # _accumulate_block lane by lane: in fp32 when every lane's scale
                    # product is a normal number of at most 2**103, else in float64
                    a = acc[r]
                    s = swt[r, j]
                    ok = True
                    for c in range(groups):
                        t = np.float64(sa[c]) * s[c]
                        ok = ok & (t >= _MIN_NORMAL) & (t <= _MAX_SCALE)
                    if ok:
                        for c in range(groups):
                            a[c] = a[c] + p[c] * np.float32(np.float64(sa[c]) * s[c])
                    else:
                        for c in range(groups):
                            a[c] = np.float32(a[c] + np.float32(np.float64(p[c])
                                                                * (np.float64(sa[c]) * s[c])))
    _channels_first(res, oy0 * ow, out)


@numba.njit(cache=True, nogil=True)
def _depthwise_f32(xt, ky, kx, ow, sy, sx, wt, oy0, oy1, out):  # pragma: no cover - compiled
    # fp32 twin of _depthwise_quantized: wt [og, K, G] f32; each sum runs in K order
    groups = xt.shape[2]
    og, nk, _ = wt.shape
    res = np.empty(((oy1 - oy0) * ow, og, groups), np.float32)  # channel-last sums
    for oy in range(oy0, oy1):
        for ox in range(ow):
            for r in range(og):
                acc = res[(oy - oy0) * ow + ox, r]
                acc[:] = 0.0
                # two taps a pass, each sum still in K order (with more streams, the
                # overlap checks keep the loop from vectorizing)
                k = 0
                while k + 1 < nk:
                    s0 = xt[oy * sy + ky[k], ox * sx + kx[k]]
                    s1 = xt[oy * sy + ky[k + 1], ox * sx + kx[k + 1]]
                    w0, w1 = wt[r, k], wt[r, k + 1]
                    for c in range(groups):
                        acc[c] = (acc[c] + w0[c] * s0[c]) + w1[c] * s1[c]
                    k += 2
                if k < nk:
                    src = xt[oy * sy + ky[k], ox * sx + kx[k]]
                    wk = wt[r, k]
                    for c in range(groups):
                        acc[c] = acc[c] + wk[c] * src[c]
    _channels_first(res, oy0 * ow, out)


# --- entry points: one worker's share, around the compiled kernels -------------------
# Each runs in one thread and releases the GIL; npusim.simulator.gemm splits the work
# between the compute threads (npusim.simulator.threads).

grouped_quantized = _grouped_quantized
"""A grouped convolution of one padded image in a block format, groups ``[g0, g1)``, ``step``
output rows at a time."""

depthwise_quantized = _depthwise_quantized
"""A convolution of one input channel per group in a block format, vectorized along the
channels: output rows ``[oy0, oy1)`` of one padded channel-last image."""

depthwise_f32 = _depthwise_f32
"""The fp32 one, same tasks."""

depthwise_planes_quantized = _depthwise_planes_quantized
"""A convolution of one input channel per group in a block format, a channel plane at a
time (vectorized along the plane): channels ``[c0, c1)`` of one unpadded image, with a
scratch plane of :func:`phase_shape` (one per thread)."""

phase_shape = _phase_shape

depthwise_planes_f32 = _depthwise_planes_f32
"""The fp32 one, same tasks."""

grouped_f32 = _grouped_f32
"""The fp32 grouped convolution, same tasks."""
