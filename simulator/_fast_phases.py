# SPDX-License-Identifier: Apache-2.0
"""numba kernels over a channel plane laid out in its stride phases
(:mod:`npusim.simulator.phase_layout`): depthwise convolutions and pooling, with the
golden model's result.

Each tap of every output row is one masked run over the phases. The depthwise kernels
sum it in K order (fp32), or quantize each block of a window with the activations'
quantizer of :mod:`npusim.simulator._fast_gemm` and accumulate its integer products in
the device's order; pooling takes the max, or the float64 sum over the window's count.
``tests/simulator/test_fast_gemm.py`` and ``tests/simulator/test_pool.py`` compare them
bit for bit with the numpy references. Kernels compile on first call, never at import.
"""

from __future__ import annotations

import numba
import numpy as np

from npusim.simulator._fast import as_float32
from npusim.simulator._fast_direct import _block_scratch, _block_views, _row_product
from npusim.simulator._fast_gemm import (
    _accumulate_block,
    _quantize_block,
    _scale_range,
    quantize_block_call,
)


@numba.njit(cache=True, inline="always")
def _fill_phases(x, c, sy, sx, ow, start, buf):  # pragma: no cover - compiled
    """Channel ``c`` of ``x [C, H, W]`` into its stride phases, ``Sy*Sx`` planes of
    ``L = len(buf) // (Sy*Sx)`` elements in ``buf``, in rows of the output's width ``ow``:
    input pixel ``(y, sx*j + px)`` goes to element ``start + (y // sy) * ow + j`` of plane
    ``(y % sy) * sx + px``. Nothing else is written: the rows above and below the plane
    and the columns past a phase's last stay zero. A stride-1 plane as wide as its output
    is one copy."""
    h, w = x.shape[1], x.shape[2]
    length = buf.shape[0] // (sy * sx)
    if sy == 1 and sx == 1 and w == ow:
        src = x[c].reshape(-1)
        dst = buf[start:start + h * w]
        for i in range(h * w):
            dst[i] = src[i]
        return
    py, row = 0, start
    for y in range(h):
        src = x[c, y]
        if sx == 2:  # both phases in one loop of a literal stride: it vectorizes
            d = py * 2 * length + row
            even, odd = buf[d:d + (w + 1) // 2], buf[d + length:d + length + w // 2]
            for j in range(w // 2):
                even[j] = src[2 * j]
                odd[j] = src[2 * j + 1]
            if w % 2:  # through buf and x: a store through `even` here kept the loop
                buf[d + w // 2] = x[c, y, w - 1]  # above from vectorizing (5x slower)
        else:
            for px in range(sx):
                n = (w - px + sx - 1) // sx
                d = (py * sx + px) * length + row
                dst = buf[d:d + n]
                for j in range(n):
                    dst[j] = src[px + j * sx]
        py += 1
        if py == sy:
            py = 0
            row += ow


@numba.njit(cache=True, inline="always")
def _flat_tap(buf, masks, offs, mk, k, m0, n):  # pragma: no cover - compiled
    """Tap ``k`` of outputs ``m0 <= m < m0 + n`` (row-major): its run in the phase planes
    and the mask of the outputs whose tap falls inside the plane (the others read 0)."""
    d = offs[k] + m0
    return buf[d:d + n], masks[mk[k], :n]


@numba.njit(cache=True, nogil=True)
def _depthwise_flat_f32(x, buf, start, sy, sx, offs, masks, mk, oh, ow, og, wf, c0, c1, rows,
                        out):  # pragma: no cover - compiled
    # One input channel per group, channels c0 <= c < c1 of the unpadded x [C, H, W], each
    # laid out by _fill_phases so that tap k of output m = oy*ow + ox reads element
    # offs[k] + m of buf (masked: masks[mk[k], m % (rows*ow)] says
    # whether it is inside the padded plane, else it reads +0.0 as the padding does).
    # Every output row is then one run: the sums go straight into out [O, oh*ow],
    # `rows` output rows at a time, four taps a pass, in K order.
    nk = offs.shape[0]
    z = np.float32(0.0)
    for c in range(c0, c1):
        _fill_phases(x, c, sy, sx, ow, start, buf)
        for r in range(og):
            o = c * og + r
            for m0 in range(0, oh * ow, rows * ow):
                n = min(rows * ow, oh * ow - m0)
                a = out[o, m0:m0 + n]
                a[:] = 0.0
                k = 0
                while k + 3 < nk:
                    w0, w1, w2, w3 = wf[o, k], wf[o, k + 1], wf[o, k + 2], wf[o, k + 3]
                    s0, t0 = _flat_tap(buf, masks, offs, mk, k, m0, n)
                    s1, t1 = _flat_tap(buf, masks, offs, mk, k + 1, m0, n)
                    s2, t2 = _flat_tap(buf, masks, offs, mk, k + 2, m0, n)
                    s3, t3 = _flat_tap(buf, masks, offs, mk, k + 3, m0, n)
                    for i in range(n):
                        a[i] = ((((a[i] + w0 * (s0[i] if t0[i] else z))
                                  + w1 * (s1[i] if t1[i] else z))
                                 + w2 * (s2[i] if t2[i] else z))
                                + w3 * (s3[i] if t3[i] else z))
                    k += 4
                for k in range(k, nk):
                    wv = wf[o, k]
                    s0, t0 = _flat_tap(buf, masks, offs, mk, k, m0, n)
                    for i in range(n):
                        a[i] = a[i] + wv * (s0[i] if t0[i] else z)


@numba.njit(cache=True, inline="always")
def _gather_block(buf, masks, offs, mk, k0, nb, m0, n, v):  # pragma: no cover - compiled
    """Taps ``k0 <= k < k0 + nb`` of outputs ``m0...m0+n`` into the rows of ``v``, the
    padding as +0.0."""
    z = np.float32(0.0)
    for b in range(nb):
        src, t = _flat_tap(buf, masks, offs, mk, k0 + b, m0, n)
        vb = v[b]
        for i in range(n):
            vb[i] = src[i] if t[i] else z


@numba.njit(cache=True, inline="always")
def _nonzero(top, mul):  # pragma: no cover - compiled
    """Whether |x| of bits ``top`` times the multiplier of bits ``mul`` rounds to a
    nonzero mantissa (the block's largest: then some mantissa is not 0)."""
    return np.rint(as_float32(top) * as_float32(mul)) != np.float32(0.0)


@numba.njit(cache=True, inline="always")
def _fused_block(buf, masks, offs, mk, k0, nb, m0, n, mbits, emin, emax, wq8, o, sa, p,
                 bits):  # pragma: no cover - compiled
    """One block of taps ``k0 <= k < k0 + nb`` of outputs ``m0...m0+n`` and weight row
    ``o``, quantized and multiplied in two passes over the taps without storing them: the
    block maxima, then each tap's mantissas straight into the integer products ``p``
    (exact in fp32), the scales into ``sa``. The numbers of :func:`_quantize_block`'s fp32
    path (for ``emin >= -127``) and of :func:`_row_product`. Returns ``(True, lo, hi)``,
    the range of the finite scales as :func:`_scale_range` gives it; ``(False, 0, 0)``,
    with nothing done, when a block maximum is too small for that path (``bits``: int32
    scratch, ``2n``)."""
    z = np.float32(0.0)
    top = bits[:n]
    top[:] = 0
    mask, zero = np.int32(0x7FFFFFFF), np.int32(0)
    for b in range(nb):  # max |x| by the bits of |x|, as _quantize_block reads it (in int32
        src, t = _flat_tap(buf, masks, offs, mk, k0 + b, m0, n)  # lanes: numba's int
        sbits = src.view(np.int32)  # arithmetic is int64 unless cast back)
        for i in range(n):
            a = np.int32(sbits[i] & mask) if t[i] else zero
            m = top[i]
            top[i] = a if a > m else m
    lowest = mbits - 126
    mult = bits[n:2 * n]
    tiny = 0
    worst = zero  # the largest |x| bits: >= 0x7F800000 when a block is not finite
    lo, hi = np.int32(0x7F800000), zero  # the range of the finite scales, by their bits
    one, nan = np.int32(0x3F800000), np.int32(0x7FC00000)
    sbits = sa.view(np.int32)
    for i in range(n):  # integer lanes only (it vectorizes): _quantize_block's exponent
        tp = top[i]
        e = min(max(((tp >> 23) & 255) - 127, emin), emax)
        live = (tp > 0) & (tp < 0x7F800000)
        tiny += np.int32(live & (e < lowest))
        worst = max(worst, tp)
        e = max(e, lowest)
        mul = np.int32((mbits - 1 - e + 127) << 23) if live else zero
        mult[i] = mul
        # every mantissa 0 (the largest rounds to 0): scale 1, else 2**(e - mbits + 1)
        s = np.int32((e - mbits + 1 + 127) << 23) if _nonzero(tp, mul) else one
        finite = tp < 0x7F800000
        sbits[i] = s if finite else nan
        lo = min(lo, s if finite else np.int32(0x7F800000))
        hi = max(hi, s if finite else zero)
    if tiny:
        return False, 0.0, 0.0
    finite = worst < 0x7F800000
    mf = mult.view(np.float32)
    max_m = np.float32((1 << mbits) - 1)
    p[:] = 0.0
    # two taps a pass (integer products: any order is exact); round-to-nearest-even is
    # odd-symmetric: the signed mantissa at once
    b = 0
    while finite and b + 1 < nb:
        w0 = np.float32(wq8[o, k0 + b])
        w1 = np.float32(wq8[o, k0 + b + 1])
        s0, t0 = _flat_tap(buf, masks, offs, mk, k0 + b, m0, n)
        s1, t1 = _flat_tap(buf, masks, offs, mk, k0 + b + 1, m0, n)
        for i in range(n):
            f = mf[i]
            q0 = min(max(np.rint((s0[i] if t0[i] else z) * f), -max_m), max_m)
            q1 = min(max(np.rint((s1[i] if t1[i] else z) * f), -max_m), max_m)
            p[i] += w0 * q0 + w1 * q1
        b += 2
    for b in range(b, nb):
        wv = np.float32(wq8[o, k0 + b])
        if wv == 0.0:
            continue
        src, t = _flat_tap(buf, masks, offs, mk, k0 + b, m0, n)
        if finite:
            for i in range(n):
                m = np.rint((src[i] if t[i] else z) * mf[i])
                p[i] += wv * min(max(m, -max_m), max_m)
        else:
            for i in range(n):
                x = src[i] if t[i] else z
                m = abs(x) * mf[i]
                m = min(np.rint(m), max_m) if m == m else z  # inf * 0 in a non-finite block
                p[i] += wv * (-m if x < 0 else m)
    return True, np.float64(as_float32(lo)), np.float64(as_float32(hi))


@numba.njit(cache=True, nogil=True)
def _depthwise_flat_quantized(x, buf, start, sy, sx, offs, masks, mk, oh, ow, og,
                              block, mbits, emin, emax, wq8, sw, c0, c1, rows,
                              out):  # pragma: no cover - compiled
    # The block-format twin of _depthwise_flat_f32: `rows` output rows of taps gathered
    # (one masked run per tap), quantized once for the og outputs of their channel, their
    # integer block products summed in fp32 (exact) and accumulated in block order as
    # _grouped_quantized does; with one output per channel, quantized and multiplied in
    # one go (_fused_block). wq8 [O, Kp] int8 mantissas, sw [O, J] f64 scales.
    nk = offs.shape[0]
    nblocks = -(-nk // block)
    depth = min(block, nk)
    width = rows * ow
    vbuf, qbuf, sbuf, lo, hi, pbuf, scratch = _block_scratch(nblocks, depth, width)
    bits = np.empty(3 * width, np.int32)
    fused = og == 1 and emin >= -127
    for c in range(c0, c1):
        _fill_phases(x, c, sy, sx, ow, start, buf)
        for m0 in range(0, oh * ow, width):
            n = min(width, oh * ow - m0)
            v, q, sa = _block_views(vbuf, qbuf, sbuf, nblocks, depth, n)
            p = pbuf[:n]
            if fused:  # one output per channel: its taps need not be stored
                acc = out[c, m0:m0 + n]
                acc[:] = 0.0
                for j in range(nblocks):
                    nb = min(block, nk - j * block)
                    ok, lo0, hi0 = _fused_block(buf, masks, offs, mk, j * block, nb, m0, n,
                                                mbits, emin, emax, wq8, c, sa[j], p, bits)
                    if not ok:
                        # a tiny scale: the stored taps and the float64 quantizer
                        _gather_block(buf, masks, offs, mk, j * block, nb, m0, n, v)
                        quantize_block_call(v, nb, mbits, emin, emax, q[j], sa[j], scratch)
                        p[:] = 0.0
                        for b in range(nb):
                            wv = np.float32(wq8[c, j * block + b])
                            qb = q[j, b]
                            for i in range(n):
                                p[i] += wv * qb[i]
                        lo0, hi0 = _scale_range(sa[j])
                    _accumulate_block(acc, p, sa[j], sw[c, j], lo0, hi0)
                continue
            for j in range(nblocks):
                nb = min(block, nk - j * block)
                _gather_block(buf, masks, offs, mk, j * block, nb, m0, n, v)
                _quantize_block(v, nb, mbits, emin, emax, q[j], sa[j], scratch)
                lo[j], hi[j] = _scale_range(sa[j])
            for r in range(og):
                o = c * og + r
                _row_product(wq8, o, q, sa, sw, lo, hi, nk, block, p, out[o, m0:m0 + n])


@numba.njit(cache=True, nogil=True, error_model="numpy")  # 0 / 0 is NaN, as in numpy
def _pool_flat(x, buf, start, sy, sx, offs, masks, mk, oh, ow, pitch, average, count, c0, c1,
               rows, out):  # pragma: no cover - compiled
    # Max or average pooling of planes c0 <= c < c1 of x [C, H, W] into out [C, oh*ow],
    # each plane laid out by _fill_phases in rows of `pitch` (buf holds the padding's
    # value, 0 or -inf, wherever the plane is not; a masked tap reads it too), `rows`
    # output rows at a time. Max: the largest tap, a NaN winning (np.max). Average: the
    # taps summed in float64 from +0.0 in (kh, kw) order, padding as +0.0, over
    # count[oy*ow + ox] taps, rounded once to fp32.
    nk = offs.shape[0]
    width = rows * pitch
    acc = np.empty(width, np.float64)
    big = np.empty(width, np.float32)
    fill = np.float32(0.0) if average else np.float32(-np.inf)
    for c in range(c0, c1):
        _fill_phases(x, c, sy, sx, pitch, start, buf)
        for m0 in range(0, oh * pitch, width):
            n = min(width, oh * pitch - m0)
            if average:
                a = acc[:n]
                a[:] = 0.0  # numpy's sum over the window starts at +0.0
                for k in range(nk):
                    src, t = _flat_tap(buf, masks, offs, mk, k, m0, n)
                    for i in range(n):
                        a[i] = a[i] + np.float64(src[i] if t[i] else fill)
            else:
                b = big[:n]
                b[:] = fill
                for k in range(nk):
                    src, t = _flat_tap(buf, masks, offs, mk, k, m0, n)
                    for i in range(n):
                        v = src[i] if t[i] else fill
                        m = b[i]
                        # np.maximum's pick: a NaN wins, and of equal values (+0 and
                        # -0) the later tap, as numpy's reduction over the window
                        take = ((v >= m) | (v != v)) & (m == m)  # a select, vectorized
                        b[i] = v if take else m
            y0 = m0 // pitch
            if pitch == ow:  # the rows as made are the output's: one run
                o = out[c, m0:m0 + n]
                if average:
                    cnt = count[m0:m0 + n]
                    for i in range(n):
                        o[i] = np.float32(acc[i] / cnt[i])
                else:
                    o[:] = big[:n]
                continue
            for y in range(n // pitch):
                o = out[c, (y0 + y) * ow:(y0 + y + 1) * ow]
                if average:
                    a = acc[y * pitch:y * pitch + ow]
                    cnt = count[(y0 + y) * ow:(y0 + y + 1) * ow]
                    for i in range(ow):
                        o[i] = np.float32(a[i] / cnt[i])
                else:
                    o[:] = big[y * pitch:y * pitch + ow]


# --- entry points: one worker's share, around the compiled kernels -------------------
# Each runs in one thread and releases the GIL; npusim.simulator.gemm and
# npusim.simulator.kernels split the work between the compute threads.

depthwise_flat_f32 = _depthwise_flat_f32
"""A convolution of one input channel per group in fp32, a channel plane at a time laid
out in its stride phases: channels ``[c0, c1)`` of one unpadded image."""

depthwise_flat_quantized = _depthwise_flat_quantized
"""The block-format one, same tasks."""

pool_flat = _pool_flat
"""Max or average pooling, a plane at a time laid out in its stride phases: planes
``[c0, c1)``."""
