# SPDX-License-Identifier: Apache-2.0
"""fp32 convolutions on small planes, on the CPU's 512-bit fused multiply-adds: each
output pixel's input broadcast against vectors of output channels
(:func:`npusim.simulator._fma.product_by_pixels`), read in place from the padded input,
the sums transposed into the planes. :mod:`npusim.simulator.gemm` sends here the windows
larger than 1x1 whose planes the column tiles would mostly waste."""

from __future__ import annotations

import functools

import numpy as np

from npusim.simulator import _fma, threads
from npusim.simulator.conv_shares import grain
from npusim.simulator.weight_tiles import pixel_packed_f32

BY_PIXELS = 256
"""Output pixels up to which an fp32 convolution runs on
:func:`npusim.simulator._fma.product_by_pixels` (its sums come out pixel by pixel and are
transposed into the planes, about 0.3 ns an element) rather than im2col and BLAS or the
column tiles, where those would drop most of a tile's pixels."""


BY_PIXELS_K = 256
"""Fewest rows of K a convolution on :func:`conv` has: with fewer, its
transposes and the sums' loads and stores outweigh what the tiles gain (ShuffleNet's
grouped 1x1 convolutions, K = 68, ran 1.8x slower on it than through BLAS)."""


def fits(geom, out_hw, k: int, column_tiles: bool) -> bool:
    """Whether an fp32 convolution of ``k`` rows of K runs on :func:`conv`: a window larger
    than 1x1 on a plane of at most ``BY_PIXELS`` output pixels, or on one the column tiles
    would mostly waste (``column_tiles``: whether they would not; 1x1 convolutions on
    small planes measured 0.7-1.1x on it against BLAS, 3x3 ones 1.1-1.6x, in the zoo's
    ResNet-50, DenseNet-121 and Inception v2)."""
    npix = out_hw[0] * out_hw[1]
    if not _fma.AVAILABLE or npix < _fma.LANES or k < BY_PIXELS_K or geom.kernel == (1, 1):
        return False  # a few pixels, a short K, or a 1x1 (BLAS reads its input in place)
    return npix <= BY_PIXELS or not column_tiles


def _plane_stride(hp: int, wp: int) -> int:
    """Elements between channels in the input :func:`conv` reads: the planes'
    own size (read in place) unless that is a multiple of 1 KiB, which gets a vector more
    (on 16x16 planes read in place, the channels of a chunk of K fell in the same L1 sets
    and the kernel ran at half speed)."""
    return hp * wp + _fma.LANES if hp * wp % 256 == 0 else hp * wp


@functools.lru_cache(maxsize=512)
def _pixel_tables(geom, cin: int, stride: int, wp: int, out_hw: tuple[int, int]
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(koff, pix)`` of :func:`npusim.simulator._fma.product_by_pixels` for padded input
    planes ``Wp`` wide, ``stride`` elements apart: each row of K (``(c, tap)`` order) and
    each output pixel (padded with the last to a multiple of ``_fma.PIXEL_SUMS``) as byte
    offsets."""
    oh, ow = out_hw
    (kh, kw), (dy, dx), (sy, sx) = geom.kernel, geom.dilations, geom.strides
    taps = np.array([i * dy * wp + j * dx for i in range(kh) for j in range(kw)], np.int64)
    koff = ((np.arange(cin, dtype=np.int64)[:, None] * stride + taps[None]) * 4).reshape(-1)
    oy, ox = np.divmod(np.arange(oh * ow, dtype=np.int64), ow)
    pix = (oy * sy * wp + ox * sx) * 4
    pix = np.concatenate([pix, np.full(-pix.size % _fma.PIXEL_SUMS, pix[-1])])
    for a in (koff, pix):
        a.setflags(write=False)
    return koff, pix


PIXEL_K_CHUNK = 96
"""Rows of K per pass of :func:`npusim.simulator._fma.product_by_pixels`: 4 vectors of
their weights (24 KiB) stay in L1 while every pixel runs through them."""


def conv(xp, w: np.ndarray, groups: int, grp: int, geom, out_hw, out, finish,
                    run=threads.run) -> None:
    """One image and group of an fp32 convolution on
    :func:`npusim.simulator._fma.product_by_pixels`: each pixel's input broadcast against
    vectors of output channels, read in place from the padded input; the sums, pixel by
    pixel, transposed into the planes ``out [O, OH*OW]``. The threads share the output
    channels, four vectors at a time, or the pixels when there are fewer such channel
    slices than threads (DenseNet's 32-channel 3x3 layers)."""
    c, hp, wp = xp.shape
    (kh, kw) = geom.kernel
    oh, ow = out_hw
    wts = pixel_packed_f32(w, groups, kh * kw)[grp]
    stride = _plane_stride(hp, wp)
    if stride == hp * wp and xp.flags.c_contiguous:  # read in place
        x = xp.reshape(c, stride)
    else:  # planes of a multiple of 1 KiB, a vector apart
        x = np.zeros((c, stride), np.float32)
        x[:, :hp * wp] = xp.reshape(c, hp * wp)
    koff, pix = _pixel_tables(geom, c, stride, wp, out_hw)
    ng, o, npix = wts.shape[0], out.shape[0], oh * ow
    res = np.empty((pix.size, ng * _fma.LANES), np.float32)

    slices, tile = -(-ng // 4), _fma.PIXEL_SUMS
    if slices < threads.workers():
        def by_pixels(t0: int, t1: int) -> None:
            p0, p1 = t0 * tile, min(npix, t1 * tile)
            _fma.product_by_pixels(x, koff, pix[p0:], p1 - p0, wts, 0, ng, PIXEL_K_CHUNK,
                                   res[p0:])
            _fma.channels_first(res[p0:p1, None, :], o, p0, out)
            finish(0, o, p0, p1)

        run(by_pixels, pix.size // tile,
            grain=grain(ng * _fma.LANES * len(koff) * tile, "fma"))
        return

    def share(t0: int, t1: int) -> None:
        g0, g1 = 4 * t0, min(ng, 4 * t1)
        _fma.product_by_pixels(x, koff, pix, npix, wts, g0, g1, PIXEL_K_CHUNK, res)
        c0, c1 = g0 * _fma.LANES, min(o, g1 * _fma.LANES)
        _fma.channels_first(res[:npix, None, c0:], c1 - c0, 0, out[c0:c1])
        finish(c0, c1, 0, npix)

    run(share, slices, grain=grain(4 * _fma.LANES * len(koff) * npix, "fma"))
