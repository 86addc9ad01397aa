# SPDX-License-Identifier: Apache-2.0
"""Convolutions whose groups are too small for a GEMM (:mod:`npusim.simulator.gemm` sends
them here): one input channel per group (depthwise, or with a channel multiplier) on the
phase layout, vectorized along the channels or on padded planes; and a few channels
per group, all groups in one direct kernel. Each with the golden model's result, bit for
bit in the block formats."""

from __future__ import annotations

import numpy as np

from npusim.simulator import (
    _bfp_rows,
    _bfp_stem,
    _fast_direct,
    _fast_phases,
    _fma,
    _fma_rows,
    _fma_stem,
    threads,
)
from npusim.simulator.conv_shares import direct_kind, grain, pad_extent, padded
from npusim.simulator.numerics import Format
from npusim.simulator.phase_layout import FlatLayout, flat_layout
from npusim.simulator.weight_tiles import channels_last_f32
from npusim.simulator.weight_tiles import tiles as _tiles


def grouped_direct(cg: int, og: int, kg: int) -> bool:
    """Groups too small for a GEMM each run together in the direct kernel."""
    return og < 16 or kg < 32 or cg < 8


GROUPED_COLUMNS = 512
"""Output pixels of one group gathered and quantized at a time by the direct grouped
kernel: its columns, mantissas and products then stay in L1."""


CHANNEL_WIDTH = 10
"""A convolution with one input channel per group, output rows narrower than this and at
least ``CHANNEL_GROUPS`` groups runs vectorized along its channels: its planes are too
small to vectorize (measured against the phase layout in MSFP16 and MX INT8: 1.3-1.8x
faster on MobileNet's 7x7 planes, 1.15-1.3x slower on 14x14 ones; in fp32 1.1-1.2x
faster on 7x7 planes, and 576 channels of 14x14 at stride 2 take 5-8 ns per output,
against 13-18 on the phase layout)."""

CHANNEL_GROUPS = 32
"""Fewest groups worth vectorizing along (see ``CHANNEL_WIDTH``)."""


def _by_channels(groups: int, width: int) -> bool:
    return width < CHANNEL_WIDTH and groups >= CHANNEL_GROUPS


def one_channel_per_group(hw: tuple[int, int], weight, tp, geom, fmt: Format, og: int,
                           out_hw: tuple[int, int]):
    """``run(x, plane, finish)`` for one image of a convolution with one input channel per
    group: vectorized along the channels (narrow planes), on the phase layout, or on
    padded planes (when the layout does not fit)."""
    groups = weight.shape[0] // og
    if fmt.is_fp32 and _fma.AVAILABLE and _fma_rows.depthwise_fits(geom, out_hw[0]):
        return lambda x, plane, finish: _depthwise_rows(x, weight, geom, og, plane, out_hw,
                                                        finish)
    if (not fmt.is_fp32 and _bfp_rows.AVAILABLE
            and _bfp_rows.fits(geom, fmt.block_size, out_hw[0])):
        rows = _tiles(weight).rows_f32(weight)
        if rows is not None:
            return lambda x, plane, finish: _depthwise_rows_bfp(x, weight, rows, tp, geom, fmt,
                                                                og, plane, out_hw, finish)
    if fmt.is_fp32 and _fma.AVAILABLE and _fma_channels(groups, out_hw[1], len(tp[0])):
        return lambda x, plane, finish: _depthwise_fma(x, weight, tp, geom, og, plane, out_hw,
                                                       finish)
    channels = _by_channels(groups, out_hw[1])
    layout = None if channels else flat_layout(hw, geom, out_hw, PLANE_COLUMNS)
    if layout is not None:
        return lambda x, plane, finish: _depthwise_flat(x, weight, layout, fmt, og, plane,
                                                        finish)
    if channels:
        return lambda x, plane, finish: _depthwise(
            padded(x, geom, out_hw, channels_last=True), weight, tp, geom, fmt, og, plane,
            out_hw, finish)
    return lambda x, plane, finish: _depthwise_planes(x, weight, tp, geom, fmt, og, plane,
                                                      out_hw, finish)


FMA_GROUPS = 16
"""Fewest groups an fp32 convolution of one input channel per group runs vectorized along
on :func:`npusim.simulator._fma.depthwise` (a tile's 16 lanes)."""

FMA_WIDTH, FMA_WIDE_TAPS, FMA_WIDE_WIDTH = 17, 25, 32
"""Which fp32 convolutions of one input channel per group take the channel-last kernel:
output rows narrower than ``FMA_WIDTH``, or windows of ``FMA_WIDE_TAPS`` taps or more
with rows up to ``FMA_WIDE_WIDTH``. Its two transposes cost about 0.15-0.4 ns an element,
so wider planes with fewer taps a pixel stay on the phase layout (measured on one thread
against it: 576 channels of 7x7 5x5 1.9x faster, 960 of 7x7 3x3 1.6x, 240 of 14x14 5x5
1.7x, 384 of 14x14 3x3 1.4x, 120 of 28x28 5x5 1.3x; 192 of 28x28 3x3 1.15x slower,
32 of 112x112 3x3 1.7x slower)."""


def _fma_channels(groups: int, width: int, taps: int) -> bool:
    return groups >= FMA_GROUPS and (width < FMA_WIDTH
                                      or (taps >= FMA_WIDE_TAPS and width <= FMA_WIDE_WIDTH))


def _depthwise_rows(x, weight, geom, og: int, out, out_hw, finish) -> None:
    """An fp32 convolution of one input channel per group, one unpadded image
    ``x [C, H, W]``, on :func:`npusim.simulator._fma_rows.depthwise`: vectors of
    output rows read in place, the epilogue applied in the registers (unless there is a
    residual: then after each share); the threads share the channels."""
    oh, ow = out_hw
    k, (sy, sx), (dy, dx) = geom.kernel[0], geom.strides, geom.dilations
    wf = np.ascontiguousarray(weight, np.float32)
    fused, bias, lo, hi, flags = _in_register(finish)

    def share(c0: int, c1: int) -> None:
        _fma_rows.depthwise(x, wf, og, k, sy, sx, dy, dx, *geom.pads[:2], oh, ow, c0 * og,
                                 c1 * og, bias, lo, hi, flags, out)
        if fused is None:
            finish(c0 * og, c1 * og, 0, oh * ow)

    threads.run(share, x.shape[0], grain=grain(og * k * k * oh * ow, "direct_f32"))


_NO_BIAS = np.zeros(0, np.float32)


def _in_register(finish):
    """``(fused, bias, lo, hi, flags)`` for a row-vector kernel that applies the epilogue
    in its registers (``flags`` of :mod:`npusim.simulator._fma_rows`; ``fused`` None when
    there is a residual: the kernel then stores bare sums, and the finisher runs after)."""
    fused = finish.in_register()
    bias, relu, clip, lo, hi = fused or (_NO_BIAS, False, False, np.float32(0), np.float32(0))
    flags = ((_fma_rows.BIAS if bias.size else 0) | (_fma_rows.RELU if relu else 0)
             | (_fma_rows.CLIP if clip else 0))
    return fused, bias, lo, hi, flags


def stem(x, weight, geom, out, out_hw, finish) -> None:
    """An fp32 convolution of one image ``x [3, H, W]`` with a 3x3 window on
    :func:`npusim.simulator._fma_stem.conv` (in place, the epilogue in the registers
    unless there is a residual); the threads share the output rows."""
    oh, ow = out_hw
    o = weight.shape[0]
    rows = -(-o // _fma_stem.OUTPUTS) * _fma_stem.OUTPUTS  # a call reads whole groups:
    wf = np.zeros((rows, weight.shape[1]), np.float32)  # zeros past the outputs (garbage
    wf[:o] = weight                                      # there ran 14x slower, subnormal)
    fused, bias, lo, hi, flags = _in_register(finish)
    padded_bias = np.zeros(rows, np.float32)
    padded_bias[:bias.size] = bias

    def share(y0: int, y1: int) -> None:
        _fma_stem.conv(x, wf, *geom.strides, *geom.dilations, *geom.pads[:2], oh, ow, y0, y1,
                       padded_bias, lo, hi, flags, out)
        if fused is None:
            finish(0, out.shape[0], y0 * ow, y1 * ow)

    threads.run(share, oh, grain=grain(wf.size * ow, "direct_f32"))


def stem_bfp(x, weight, geom, fmt: Format, out, out_hw, finish) -> bool:
    """A block-format convolution of one image ``x [3, H, W]`` with a 3x3 window on
    :func:`npusim.simulator._bfp_stem.conv` (in place, the epilogue in the registers
    unless there is a residual); the threads share the output rows. False when the
    weights' scales keep it off the kernel, or a pixel needs the general path (which
    then makes the whole layer, ``out`` included)."""
    rows = _tiles(weight).rows_f32(weight)
    if rows is None:
        return False
    oh, ow = out_hw
    o = weight.shape[0]
    padded_rows = -(-o // _bfp_stem.OUTPUTS) * _bfp_stem.OUTPUTS  # whole groups of
    wq = np.zeros((padded_rows, rows[0].shape[1]), np.float32)  # zero weights, unit scales
    sw = np.ones((padded_rows, rows[1].shape[1]), np.float32)
    wq[:o], sw[:o] = rows
    fused, bias, lo, hi, flags = _in_register(finish)
    padded_bias = np.zeros(padded_rows, np.float32)
    padded_bias[:bias.size] = bias
    fm = np.array([fmt.mantissa_bits, fmt.emin, fmt.emax], np.int32)
    bad = []

    def share(y0: int, y1: int) -> None:
        if _bfp_stem.conv(x, wq, sw, *geom.strides, *geom.dilations, *geom.pads[:2], oh, ow,
                          y0, y1, fmt.block_size, fm, np.float32(fmt.max_mantissa),
                          padded_bias, lo, hi, flags, out):
            bad.append(True)
        elif fused is None:
            finish(0, o, y0 * ow, y1 * ow)

    threads.run(share, oh, grain=grain(padded_rows * _bfp_stem.TAPS * ow, direct_kind(fmt)))
    return not bad


def _depthwise_rows_bfp(x, weight, rows, tp, geom, fmt: Format, og: int, out, out_hw,
                        finish) -> None:
    """A block-format convolution of one input channel per group, one unpadded image
    ``x [C, H, W]``, on :func:`npusim.simulator._bfp_rows.depthwise` (``rows``: its
    weights and scales); a channel with a pixel it cannot take (a block too small or not
    finite, a scale product outside fp32's normal range) is rerun on
    :func:`_depthwise_planes`' kernel. The threads share the channels."""
    oh, ow = out_hw
    k, (sy, sx), (dy, dx) = geom.kernel[0], geom.strides, geom.dilations
    wq, sw = rows
    fused, bias, lo, hi, flags = _in_register(finish)
    fm = np.array([fmt.mantissa_bits, fmt.emin, fmt.emax], np.int32)
    bad = np.zeros(out.shape[0], np.bool_)
    _, ky, kx = tp
    top, left, hp, wp = pad_extent(x.shape[1:], geom, out_hw)
    shape = _fast_direct.phase_shape(hp, wp, sy, sx)

    def share(c0: int, c1: int) -> None:
        _bfp_rows.depthwise(x, wq, sw, og, k, sy, sx, dy, dx, *geom.pads[:2], oh, ow,
                            fmt.block_size, fm, c0 * og, c1 * og, bias, lo, hi,
                            np.float32(fmt.max_mantissa), flags, out, bad)
        for c in np.unique(np.flatnonzero(bad[c0 * og:c1 * og]) // og) + c0:
            _fast_direct.depthwise_planes_quantized(
                x, top, left, np.zeros(shape, np.float32), ky, kx, oh, ow, og,
                fmt.block_size, fmt.mantissa_bits, fmt.emin, fmt.emax, weight.q,
                _tiles(weight).scales, c, c + 1, max(1, PLANE_COLUMNS // shape[3]), out)
            if fused is not None:
                finish(c * og, (c + 1) * og, 0, oh * ow)
        if fused is None:
            finish(c0 * og, c1 * og, 0, oh * ow)

    threads.run(share, x.shape[0], grain=grain(og * k * k * oh * ow, direct_kind(fmt)))


TRANSPOSE_ELEMENTS = 1 << 16
"""Elements of a share of the transpose into channel-last order (about 15 us)."""


def _depthwise_fma(x, weight, tp, geom, og: int, out, out_hw, finish) -> None:
    """An fp32 convolution of one input channel per group, one unpadded image
    ``x [C, H, W]`` copied once channel-last (channels padded to whole vectors), on the
    fused multiply-adds of :func:`npusim.simulator._fma.depthwise`; the threads share its
    output rows."""
    oh, ow = out_hw
    _, ky, kx = tp
    c = x.shape[0]
    top, left, hp, wp = pad_extent(x.shape[1:], geom, out_hw)
    g = -(-c // _fma.LANES) * _fma.LANES
    xt = np.empty((hp, wp, g), np.float32)
    threads.run(lambda y0, y1: _fma.channels_last(x, top, left, y0, y1, xt), x.shape[1],
                grain=max(1, TRANSPOSE_ELEMENTS // (g * x.shape[2])))
    wt = channels_last_f32(weight, og, _fma.LANES)
    offs = (ky * wp + kx) * (g * 4)

    def share(r0: int, r1: int) -> None:
        res = np.empty(((r1 - r0) * ow, og, g), np.float32)
        _fma.depthwise(xt, offs, wt, *geom.strides, ow, r0, r1, res)
        _fma.channels_first(res, c, r0 * ow, out)
        finish(0, out.shape[0], r0 * ow, r1 * ow)

    threads.run(share, oh, grain=grain(out.shape[0] * len(ky) * ow, "direct_f32"))


def _depthwise(xt, weight, tp, geom, fmt: Format, og: int, out, out_hw, finish) -> None:
    """A convolution of one input channel per group (depthwise, or with a channel
    multiplier ``og``), one padded channel-last image ``xt [Hp, Wp, G]``, vectorized along
    the channels; the threads share its output rows."""
    oh, ow = out_hw
    _, ky, kx = tp
    if fmt.is_fp32:
        wt = channels_last_f32(weight, og)

        def product(r0: int, r1: int) -> None:
            _fast_direct.depthwise_f32(xt, ky, kx, ow, *geom.strides, wt, r0, r1, out)
    else:
        wt, swt = _tiles(weight).by_channels(weight, og, len(ky))

        def product(r0: int, r1: int) -> None:
            _fast_direct.depthwise_quantized(xt, ky, kx, ow, *geom.strides, fmt.block_size,
                                           fmt.mantissa_bits, fmt.emin, fmt.emax, wt, swt,
                                           r0, r1, out)

    def share(r0: int, r1: int) -> None:
        product(r0, r1)
        finish(0, out.shape[0], r0 * ow, r1 * ow)

    threads.run(share, oh, grain=grain(out.shape[0] * len(ky) * ow, direct_kind(fmt)))


PLANE_COLUMNS = 2048
"""Elements of the wide output (output rows of the padded plane's width) per step of a
plane-wise depthwise kernel: its taps, mantissas and sums stay in L1/L2."""


def _depthwise_planes(x, weight, tp, geom, fmt: Format, og: int, out, out_hw,
                      finish) -> None:
    """A convolution of one input channel per group, one unpadded image ``x [C, H, W]``, a
    channel plane at a time (each padded in the kernel's own scratch plane); the threads
    share the channels."""
    oh, ow = out_hw
    _, ky, kx = tp
    top, left, hp, wp = pad_extent(x.shape[1:], geom, out_hw)
    shape = _fast_direct.phase_shape(hp, wp, *geom.strides)
    step = max(1, PLANE_COLUMNS // shape[3])
    if fmt.is_fp32:
        wf = np.ascontiguousarray(weight, np.float32)

        def product(c0: int, c1: int) -> None:
            _fast_direct.depthwise_planes_f32(x, top, left, np.zeros(shape, np.float32), ky,
                                            kx, oh, ow, og, wf, c0, c1, step, out)
    else:
        scales = _tiles(weight).scales

        def product(c0: int, c1: int) -> None:
            _fast_direct.depthwise_planes_quantized(
                x, top, left, np.zeros(shape, np.float32), ky, kx, oh, ow, og,
                fmt.block_size, fmt.mantissa_bits, fmt.emin, fmt.emax, weight.q, scales, c0,
                c1, step, out)

    def share(c0: int, c1: int) -> None:
        product(c0, c1)
        finish(c0 * og, c1 * og, 0, oh * ow)

    threads.run(share, x.shape[0], grain=grain(og * len(ky) * oh * ow, direct_kind(fmt)))


def _depthwise_flat(x, weight, lay: FlatLayout, fmt: Format, og: int, out, finish) -> None:
    """A convolution of one input channel per group, one unpadded image ``x [C, H, W]``, a
    channel plane at a time in the :class:`FlatLayout`; the threads share the channels."""
    oh, ow = lay.out_hw
    args = (lay.start, *lay.strides, lay.offs, lay.masks, lay.mk, oh, ow, og)
    if fmt.is_fp32:
        wf = np.ascontiguousarray(weight, np.float32)

        def product(c0: int, c1: int) -> None:
            _fast_phases.depthwise_flat_f32(x, np.zeros(lay.planes * lay.length, np.float32),
                                            *args, wf, c0, c1, lay.rows, out)
    else:
        scales = _tiles(weight).scales

        def product(c0: int, c1: int) -> None:
            _fast_phases.depthwise_flat_quantized(
                x, np.zeros(lay.planes * lay.length, np.float32), *args, fmt.block_size,
                fmt.mantissa_bits, fmt.emin, fmt.emax, weight.q, scales, c0, c1, lay.rows,
                out)

    def share(c0: int, c1: int) -> None:
        product(c0, c1)
        finish(c0 * og, c1 * og, 0, oh * ow)

    threads.run(share, x.shape[0], grain=grain(og * len(lay.offs) * oh * ow, direct_kind(fmt)))


def grouped(xp, weight, tp, geom, fmt: Format, cg: int, og: int, out, out_hw,
             finish) -> None:
    """All groups of one padded image in the direct kernel, one group per task."""
    groups = out.shape[0] // og
    args = (xp, *tp, *out_hw, *geom.strides, cg, og)
    step = max(1, GROUPED_COLUMNS // out_hw[1])
    if fmt.is_fp32:
        wf = np.ascontiguousarray(weight, np.float32)

        def share(g0: int, g1: int) -> None:
            _fast_direct.grouped_f32(*args, wf, g0, g1, step, out)
            finish(g0 * og, g1 * og, 0, out.shape[1])
    else:
        scales = _tiles(weight).scales

        def share(g0: int, g1: int) -> None:
            _fast_direct.grouped_quantized(*args, fmt.block_size, fmt.mantissa_bits, fmt.emin,
                                         fmt.emax, weight.q, scales, g0, g1, step, out)
            finish(g0 * og, g1 * og, 0, out.shape[1])

    threads.run(share, groups,
                grain=grain(og * len(tp[0]) * out_hw[0] * out_hw[1], direct_kind(fmt)))
