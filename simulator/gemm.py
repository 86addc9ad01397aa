# SPDX-License-Identifier: Apache-2.0
"""The matrix unit's products, fast, with the golden model's result bit for bit.

:mod:`npusim.simulator.numerics` defines a block-floating-point product as exact integer block
dot products summed block by block in fp32; this module computes the same numbers the
way a CPU is fast at:

* the activations are gathered into columns (im2col, one column per output pixel) and
  quantized in the same numba pass (:mod:`npusim.simulator._fast_gemm`);
* the integer block dot products of all blocks are one batched fp32 GEMM (BLAS via
  ``np.matmul``; exact, since every partial sum is an integer below 2**24), a slice of
  columns at a time so the partials stay in cache;
* a fused numba pass sums them in the device's order;
* or, on a CPU with AVX-512 VNNI, both in one pass on its 8-bit dot products
  (:mod:`npusim.simulator._vnni`), from the input planes quantized once where every block
  lies within a pixel's channels (no im2col); fp32 convolutions likewise on its 512-bit
  fused multiply-adds (:mod:`npusim.simulator._fma`).

Grouped and depthwise convolutions run all their groups in one numba call that
quantizes each window and dots it with its group's weights
(:mod:`npusim.simulator.channelwise`); a 1x1 convolution reads
its input in place; a product with few activation rows reads the int8 weights
directly. The result comes out ``[O, pixels]``, that is NCHW.

``tests/simulator/test_fast_gemm.py`` compares every path with the numpy reference
(:func:`npusim.simulator.kernels.conv2d_reference`) bit for bit in every format.
"""

from __future__ import annotations

import functools

import numpy as np

from npusim.simulator import (
    _bfp_stem,
    _fast_gemm,
    _fma,
    _fma_grouped,
    _fma_pointwise,
    _fma_stem,
    _vnni,
    channelwise,
    conv_pixels,
    threads,
)
from npusim.simulator import _tiles as _tiles_mod
from npusim.simulator.conv_shares import grain, pad_extent, padded
from npusim.simulator.epilogue import Epilogue
from npusim.simulator.numerics import BfpTensor, Format
from npusim.simulator.weight_tiles import grouped_f32, packed_f32
from npusim.simulator.weight_tiles import tiles as _tiles
from npusim.simulator.weight_tiles import weight_rows as _weight_rows

PARTIAL_BYTES = 1 << 20
"""Bytes of block partials (or fp32 columns) made per GEMM: a slice of output rows sized
to stay in a core's cache."""

@functools.lru_cache(maxsize=256)
def taps(kernel: tuple[int, int], channels: int, dilations: tuple[int, int]
         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Channel, row and column offset of each element of K, ordered ``(kh, kw, c)``."""
    kh, kw = kernel
    i, j, c = np.meshgrid(np.arange(kh), np.arange(kw), np.arange(channels), indexing="ij")
    out = (c.ravel().astype(np.int64), (i * dilations[0]).ravel().astype(np.int64),
           (j * dilations[1]).ravel().astype(np.int64))
    for a in out:
        a.setflags(write=False)
    return out


def _direct(fmt: Format) -> bool:
    """Formats whose block scales are exact fp32 numbers, as the kernels keep them."""
    return -149 <= fmt.emin - fmt.mantissa_bits + 1 and fmt.emax - fmt.mantissa_bits + 1 <= 127


def _tiled(fmt: Format) -> bool:
    """Formats with a register-tiled kernel (int8 mantissas, blocks of 8 or 16: blocks of
    32 are as fast through BLAS, and longer ones have few partials to sum)."""
    return fmt.block_size in _tiles_mod.PRODUCTS and fmt.mantissa_bits <= 7


def supported(fmt: Format) -> bool:
    """Whether these kernels compute ``fmt``: fp32, the BFP formats and mxint8 (int8
    mantissas). The MX minifloat formats take the general path
    (:func:`npusim.simulator.kernels.conv2d`, :func:`npusim.simulator._fast.matmul_exact`)."""
    return fmt.is_fp32 or (not fmt.is_minifloat and _direct(fmt))


def _rows_per_step(nblocks: int, out_rows: int, width: int) -> int:
    """Output pixel rows whose block partials fill about ``PARTIAL_BYTES``."""
    return max(1, PARTIAL_BYTES // (4 * nblocks * out_rows * max(1, width)))


def conv2d(x: np.ndarray, weight: np.ndarray | BfpTensor, geom, fmt: Format,
           bias: np.ndarray | None = None, residual: np.ndarray | None = None,
           relu: bool = False, clip: tuple[float, float] | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """The matrix unit's convolution of ``x [B, C, H, W]`` with its epilogue:
    ``[B, O, OH, OW]`` float32 (``geom`` without input dilation), in ``out`` if given (a
    C-contiguous float32 array of that shape that shares no memory with the operands)."""
    x = np.ascontiguousarray(x, np.float32)
    b, c, h, w = x.shape
    o = weight.shape[0]
    oh, ow = geom.output_hw(h, w)
    g = geom.groups
    cg, og = c // g, o // g
    tp = taps(geom.kernel, cg, geom.dilations)
    if out is None:
        out = np.empty((b, o, oh, ow), np.float32)
    elif out.shape != (b, o, oh, ow) or out.dtype != np.float32 \
            or not out.flags.c_contiguous:
        raise ValueError(f"conv2d: out must be C-contiguous float32 {[b, o, oh, ow]}")
    epi = Epilogue(bias, residual, relu, (b, o), clip)
    depthwise = channelwise.one_channel_per_group((h, w), weight, tp, geom, fmt, og,
                                                  (oh, ow)) \
        if g > 1 and cg == 1 else None
    for i in range(b):
        plane = out[i].reshape(o, oh * ow)
        if depthwise is not None:
            depthwise(x[i], plane, epi.finisher(i, plane))
            continue
        if g > 1 and cg > 1 and og < GROUPED_FMA_OUTPUTS and fmt.is_fp32 and _fma.AVAILABLE:
            _conv_grouped_fma(x[i], weight, g, geom, (oh, ow), plane, epi.finisher(i, plane))
            continue
        if fmt.is_fp32 and _fma.AVAILABLE and _fma_stem.fits(geom, c, ow):
            channelwise.stem(x[i], weight, geom, plane, (oh, ow), epi.finisher(i, plane))
            continue
        if (not fmt.is_fp32 and _bfp_stem.fits(geom, c, fmt.block_size, ow)
                and channelwise.stem_bfp(x[i], weight, geom, fmt, plane, (oh, ow),
                                         epi.finisher(i, plane))):
            continue
        xp = padded(x[i], geom, (oh, ow))
        if g > 1 and channelwise.grouped_direct(cg, og, len(tp[0])):
            channelwise.grouped(xp, weight, tp, geom, fmt, cg, og, plane, (oh, ow),
                                epi.finisher(i, plane))
            continue
        def groups(g0: int, g1: int, run=threads.run, i=i, xp=xp, plane=plane) -> None:
            for grp in range(g0, g1):
                xs = xp[grp * cg:(grp + 1) * cg]
                ys = plane[grp * og:(grp + 1) * og]
                finish = epi.finisher(i, plane, grp * og)
                if fmt.is_fp32 and conv_pixels.fits(geom, (oh, ow), len(tp[0]),
                                                    _fma_ok(geom, (oh, ow), xp.shape)):
                    conv_pixels.conv(xs, weight, g, grp, geom, (oh, ow), ys, finish, run)
                elif fmt.is_fp32 and _fma_ok(geom, (oh, ow), xp.shape):
                    _conv_fma(xs, weight, g, grp, geom, (oh, ow), ys, finish, run)
                elif fmt.is_fp32:
                    wf = np.asarray(weight, np.float32)[grp * og:(grp + 1) * og]
                    _conv_f32(xs, wf, tp, geom, (oh, ow), ys, finish, run)
                elif _vnni_ok(fmt) and _planes(cg, fmt):
                    _conv_planes(xs, weight, g, grp, geom, (oh, ow), ys, finish, run)
                elif _vnni_ok(fmt) and oh * ow >= _vnni.LANES:
                    _conv_vnni(xs, weight, g, grp, tp, geom, (oh, ow), ys, finish, run)
                elif _tiled(fmt) and oh * ow > FEW_COLUMNS:
                    _conv_tiled(xs, weight, g, grp, tp, geom, (oh, ow), ys, finish, run)
                else:
                    tiles = _tiles(weight)
                    _conv_bfp(xs, tiles.mantissas(weight, g)[grp],
                              tiles.scales32(weight, g)[grp], tp, geom, fmt, (oh, ow), ys,
                              finish, run)

        if g > 1 and (g % threads.workers() == 0 or og * len(tp[0]) * oh * ow < SMALL_GROUP):
            # the threads share the groups, each made whole by one (one hand-off)
            threads.run(lambda g0, g1: groups(g0, g1, _inline), g)
        else:
            groups(0, g)  # the threads share each group's rows or columns
    return out


SMALL_GROUP = 1 << 22
"""MACs of a group below which the threads share a grouped convolution's groups rather
than each group's work: ShuffleNet's 1x1 convolutions in three groups were 1 ms each in
a block format, nearly all of it hand-offs and serial quantization."""


def _inline(fn, tasks: int, grain: int = 1) -> None:
    """:func:`npusim.simulator.threads.run` on the calling thread alone."""
    if tasks > 0:
        fn(0, tasks)


VECTOR = 16
"""fp32 lanes of a vector register: a tiled product's columns come in whole vectors."""

TILE_COLUMNS = 512
"""Output pixels quantized per step of a tiled convolution, or more while their columns
fit in ``TILE_BYTES`` (a stem of three channels has 27 rows of K: its steps were mostly
overhead)."""

TILE_BYTES = 1 << 18

MIN_COLUMNS = 128
"""Output pixels a block format's BLAS products take at least, per step (each GEMM is
then at least this wide)."""

FEW_COLUMNS = 256
"""A layer with at most this many output pixels splits its output channels between the
threads (every GEMM then has all the columns) instead of its pixels."""


def _conv_f32(xp, wf, tp, geom, out_hw, out, finish, run=threads.run) -> None:
    """One image and group in fp32: ``out [O, OH*OW] = wf [O, K] @ columns``."""
    oh, ow = out_hw
    pointwise = geom.kernel == (1, 1) and geom.strides == (1, 1)
    flat = xp.reshape(xp.shape[0], -1)
    if oh * ow <= FEW_COLUMNS:
        cols = flat if pointwise else _fast_gemm.im2col(xp, tp, (0, oh), ow, geom.strides)

        def by_rows(o0: int, o1: int) -> None:
            np.matmul(wf[o0:o1], cols, out=out[o0:o1])
            finish(o0, o1, 0, oh * ow)

        run(by_rows, wf.shape[0], grain=grain(len(tp[0]) * oh * ow, "blas"))
        return
    step = _rows_per_step(1, len(tp[0]) + wf.shape[0], ow)

    def share(r0: int, r1: int) -> None:
        for a in range(r0, r1, step):
            n0, n1 = a * ow, min(r1, a + step) * ow
            if pointwise:
                cols = flat[:, n0:n1]
            else:
                cols = _fast_gemm.im2col(xp, tp, (a, min(r1, a + step)), ow, geom.strides)
            np.matmul(wf, cols, out=out[:, n0:n1])
            finish(0, out.shape[0], n0, n1)

    run(share, oh, grain=grain(wf.shape[0] * len(tp[0]) * ow, "blas"))


def _conv_bfp(xp, mant, sw, tp, geom, fmt: Format, out_hw, out, finish,
              run=threads.run) -> None:
    """One image and group in a block format: quantize a slice of output rows, its block
    partials by BLAS, their fused accumulation; ``out [O, OH*OW]``."""
    oh, ow = out_hw
    nblocks, o, block = mant.shape
    k = len(tp[0])
    if nblocks == 1 and k < block:  # one short block (ms-fp8/9's 128): its zero padding
        mant = mant[:, :, :k]       # would be most of the GEMM
    crop = mant.shape[2]

    def quantized(rows):
        q, sa = _fast_gemm.im2col_quantize(xp, tp, rows, ow, geom.strides, fmt.block_size,
                                           fmt.mantissa_bits, fmt.emin, fmt.emax,
                                           short=crop < block)
        return q, sa

    if oh * ow <= FEW_COLUMNS:
        q, sa = quantized((0, oh))
        ostep = max(1, PARTIAL_BYTES // (4 * nblocks * oh * ow))

        def by_rows(o0: int, o1: int) -> None:
            for a in range(o0, o1, ostep):
                b = min(o1, a + ostep)
                _fast_gemm.accumulate_cols(np.matmul(mant[:, a:b], q), sw[:, a:b], sa,
                                           out[a:b], 0)
                finish(a, b, 0, oh * ow)

        run(by_rows, o, grain=grain(len(tp[0]) * oh * ow))
        return
    # slices of at least MIN_COLUMNS pixels, and of the output rows when the layer is
    # wide (a transformer's 4096 outputs left one pixel per GEMM: 12 GMAC/s, now 40)
    step = max(_rows_per_step(nblocks, o, ow), -(-MIN_COLUMNS // ow))
    ostep = max(1, PARTIAL_BYTES // (4 * nblocks * step * ow))

    def share(r0: int, r1: int) -> None:
        for a in range(r0, r1, step):
            rows = (a, min(r1, a + step))
            q, sa = quantized(rows)
            for o0 in range(0, o, ostep):
                o1 = min(o, o0 + ostep)
                _fast_gemm.accumulate_cols(np.matmul(mant[:, o0:o1], q),
                                           np.ascontiguousarray(sw[:, o0:o1]), sa, out[o0:o1],
                                           rows[0] * ow)
            finish(0, o, rows[0] * ow, rows[1] * ow)

    run(share, oh, grain=grain(o * len(tp[0]) * ow))


def _conv_tiled(xp, w: BfpTensor, groups: int, grp: int, tp, geom, out_hw, out,
                finish, run=threads.run) -> None:
    """One image and group in a block format with many output pixels, by the
    register-tiled kernel (:mod:`npusim.simulator._tiles`): quantize a slice of output rows (its
    columns padded to whole vectors), then its block products and their accumulation in
    one pass; ``out [O, OH*OW]``."""
    fmt = w.fmt
    oh, ow = out_hw
    o = out.shape[0]
    product = _tiles_mod.PRODUCTS[fmt.block_size]
    wrows, sw = _weight_rows(w, groups)[grp], _tiles(w).scales32(w, groups)[grp]
    step = max(1, TILE_COLUMNS // ow, TILE_BYTES // (4 * w.q.shape[1] * ow))

    def share(r0: int, r1: int) -> None:
        for a in range(r0, r1, step):
            b = min(r1, a + step)
            n = (b - a) * ow
            q, sa = _fast_gemm.im2col_quantize(xp, tp, (a, b), ow, geom.strides,
                                               fmt.block_size, fmt.mantissa_bits, fmt.emin,
                                               fmt.emax, -(-n // VECTOR) * VECTOR)
            t = np.empty((o, q.shape[2]), np.float32)
            product(wrows, sw, q, sa, 0, o, 0, q.shape[2], t)
            out[:, a * ow:b * ow] = t[:, :n]
            finish(0, o, a * ow, b * ow)

    run(share, oh, grain=grain(o * len(tp[0]) * ow))


def _conv_vnni(xp, w: BfpTensor, groups: int, grp: int, tp, geom, out_hw, out,
               finish, run=threads.run) -> None:
    """One image and group in a block format of byte mantissas, on the CPU's 8-bit dot
    products (:mod:`npusim.simulator._vnni`): quantize a slice of output rows into the
    kernel's layout, then its block products and their accumulation in one pass;
    ``out [O, OH*OW]``. A layer with few output pixels quantizes them all once and
    shares its output channels between the threads."""
    fmt = w.fmt
    oh, ow = out_hw
    o = out.shape[0]
    k = len(tp[0])
    wq, cq, tq = _tiles(w).vnni(w, groups, k)[grp]
    quads = wq.shape[2]
    rows = wq.shape[0]

    def quantized(a: int, b: int):
        return _vnni.im2col_quantize(xp, tp, (a, b), ow, geom.strides, fmt.block_size,
                                     fmt.mantissa_bits, fmt.emin, fmt.emax, quads)

    if oh * ow <= FEW_COLUMNS:
        x, sa = quantized(0, oh)
        t = np.empty((rows, x.shape[2]), np.float32)
        tiles = rows // _vnni.ROWS

        def by_rows(t0: int, t1: int) -> None:
            r0, r1 = t0 * _vnni.ROWS, t1 * _vnni.ROWS
            _vnni.product(x, wq, cq, tq, sa, r0, r1, t[r0:r1])

        run(by_rows, tiles, grain=grain(_vnni.ROWS * k * oh * ow, "vnni"))
        finish.store(t, oh * ow, oh * ow, 1, o, 0)
        return
    step = max(1, TILE_COLUMNS // ow, TILE_BYTES // (k * ow))

    def share(r0: int, r1: int) -> None:
        for a in range(r0, r1, step):
            b = min(r1, a + step)
            n = (b - a) * ow
            x, sa = quantized(a, b)
            t = np.empty((rows, x.shape[2]), np.float32)
            _vnni.product(x, wq, cq, tq, sa, 0, rows, t)
            finish.store(t, n, n, 1, o, a * ow)

    run(share, oh, grain=grain(o * k * ow, "vnni"))


def _planes(channels: int, fmt: Format) -> bool:
    """Whether a convolution reads its quantized input planes in place
    (:func:`_conv_planes`): every block within one pixel's channels."""
    return channels % fmt.block_size == 0


@functools.lru_cache(maxsize=512)
def _phase_offsets(geom, hq: int, wq: int) -> np.ndarray:
    """Where each tap ``(i, j)`` of output pixel ``m = oy * Wq + ox`` is in an input laid
    out in the planes of the stride's phases (``hq`` rows of ``wq`` each): ``offsets[t] +
    m`` (read-only: the same array for every call of a layer)."""
    (kh, kw), (dy, dx), (sy, sx) = geom.kernel, geom.dilations, geom.strides
    offsets = np.array([((i * dy) % sy * sx + (j * dx) % sx) * hq * wq
                        + (i * dy) // sy * wq + (j * dx) // sx
                        for i in range(kh) for j in range(kw)], np.int64)
    offsets.setflags(write=False)
    return offsets


def _phase_extent(xp, geom, reach: int) -> tuple[int, int, int]:
    """``(hq, wq, L)``: the phases' rows and width, and the elements of a channel's phases
    with room for a tile of ``reach`` elements from the last output pixel."""
    _, hp, wp = xp.shape
    (_, kw), (_, dx), (sy, sx) = geom.kernel, geom.dilations, geom.strides
    hq, wq = -(-hp // sy), -(-wp // sx)
    return hq, wq, sy * sx * hq * wq + (kw - 1) * dx // sx + reach


def _fma_phases(xp, geom, reach: int, run) -> tuple[np.ndarray, int, int, int]:
    """``(X, hq, wq, L)``: the padded input ``xp [C, Hp, Wp]`` copied into the planes of
    the stride's phases, ``X [C, L]`` as :func:`npusim.simulator._fma.phases` lays them
    out (room for a tile of ``reach`` from the last output pixel), shared by the threads."""
    c, hp, wp = xp.shape
    (sy, sx) = geom.strides
    hq, wq, length = _phase_extent(xp, geom, reach)
    x = np.empty((c, length), np.float32)
    run(lambda c0, c1: _fma.phases(xp, sy, sx, hq, wq, c0, c1, x), c,
        grain=max(1, QUANTIZE_PIXELS // (hp * wp)))
    return x, hq, wq, length


def _row_offsets(channels: int, length: int, geom, hq: int, wq: int) -> np.ndarray:
    """The byte offset of each row of K, ``(c, tap)`` order, of ``channels`` channels laid
    out ``length`` elements apart in the planes of their stride's phases."""
    return ((np.arange(channels, dtype=np.int64)[:, None] * length
             + _phase_offsets(geom, hq, wq)[None]) * 4).reshape(-1)


def _at_phase_width(product, rows: int, tile: int, lanes: int, macs: int, kind: str,
                    out_hw, wq: int, o: int, finish, run, groups=None) -> None:
    """Run ``product(m0, m1, r0, r1, t)`` (``t[r - r0, m - m0]`` for output pixels
    ``m = oy * wq + ox`` of ``m0 <= m < m1``, in tiles of ``lanes``, and rows ``r0...r1``,
    multiples of ``tile``, of ``rows``) over a convolution's output made at the phases'
    width, shared between the threads; each slice goes into place with its epilogue
    (``finish.store``, with ``groups`` when each group's rows are padded). ``macs`` per
    output pixel of all rows."""
    oh, ow = out_hw
    if oh * wq <= FEW_COLUMNS:  # few pixels: the threads share the rows
        t = np.empty((rows, -(-oh * wq // lanes) * lanes), np.float32)

        def by_rows(t0: int, t1: int) -> None:
            r0, r1 = t0 * tile, t1 * tile
            product(0, oh * wq, r0, r1, t[r0:r1])

        run(by_rows, rows // tile, grain=grain(macs * tile // rows * oh * wq, kind))
        finish.store(t, wq, ow, oh, o, 0, groups)
        return
    step = max(1, max(TILE_COLUMNS, TILE_BYTES // (4 * rows)) // wq)  # few rows: long steps

    def share(r0: int, r1: int) -> None:
        t = np.empty((rows, -(-step * wq // lanes) * lanes), np.float32)
        for a in range(r0, r1, step):
            b = min(r1, a + step)
            product(a * wq, b * wq, 0, rows, t)
            finish.store(t, wq, ow, b - a, o, a * ow, groups)

    run(share, oh, grain=grain(macs * wq, kind))


def _conv_planes(xp, w: BfpTensor, groups: int, grp: int, geom, out_hw, out, finish,
                 run=threads.run) -> None:
    """One image and group of a convolution on the CPU's 8-bit dot products, without
    im2col: each input pixel's blocks are quantized once (not once per window that reads
    them), in the planes of the stride's phases (:func:`npusim.simulator._vnni.quantize_planes`),
    and each tap reads its phase at an offset, the output at the phases' width ``Wq``
    (each row's last ``Wq - OW`` pixels are past the windows and dropped);
    ``out [O, OH*OW]``."""
    fmt = w.fmt
    c, hp, wp = xp.shape
    block = fmt.block_size
    ncb = c // block
    (kh, kw), (sy, sx) = geom.kernel, geom.strides
    hq, wq, width = _phase_extent(xp, geom, _vnni.LANES)
    wts, cs, ts = _tiles(w).vnni(w, groups, c * kh * kw)[grp]
    rows, quads = wts.shape[0], wts.shape[2]
    x = np.empty((ncb, quads, width, 4), np.uint8)
    s = np.empty((ncb, width), np.float32)
    xq = _vnni.quad_view(x)
    run(lambda c0, c1: _vnni.quantize_planes(xp, sy, sx, block, fmt.mantissa_bits, fmt.emin,
                                              fmt.emax, c0, c1, xq, s),
        ncb, grain=max(1, QUANTIZE_PIXELS // (block * hp * wp)))
    tables = _vnni.plane_tables(s, quads, _phase_offsets(geom, hq, wq))

    def product(m0: int, m1: int, r0: int, r1: int, t: np.ndarray) -> None:
        _vnni.product_planes(x, s, tables, wts, cs, ts, m0, m1, r0, r1, t)

    _at_phase_width(product, rows, _vnni.ROWS, _vnni.LANES, rows * c * kh * kw, "vnni",
                    out_hw, wq, out.shape[0], finish, run)


def _fma_ok(geom, out_hw, padded_shape) -> bool:
    """Whether an fp32 convolution runs on :func:`_conv_fma`: most of the tiles' pixels
    wanted (a tile runs ``_fma.COLUMNS`` pixels of the phases' width at a time)."""
    if not _fma.AVAILABLE:
        return False
    oh, ow = out_hw
    wq = -(-padded_shape[2] // geom.strides[1])
    return oh * ow >= FMA_USEFUL * (-(-oh * wq // _fma.COLUMNS) * _fma.COLUMNS)


FMA_USEFUL = 0.85
"""The least share of :func:`_conv_fma`'s pixels that are output pixels (a 3x3 on 7x7
planes computes twice its pixels, and BLAS is faster there)."""


def _conv_fma(xp, w: np.ndarray, groups: int, grp: int, geom, out_hw, out, finish,
              run=threads.run) -> None:
    """One image and group of an fp32 convolution on :mod:`npusim.simulator._fma`'s direct
    kernel: the input copied once into the planes of the stride's phases, each tap read
    at an offset, the output made at the phases' width (as :func:`_conv_planes`);
    ``out [O, OH*OW]``."""
    c, hp, wp = xp.shape
    (kh, kw), (sy, sx) = geom.kernel, geom.strides
    taps = kh * kw
    wts = packed_f32(w, groups, taps)[grp]
    rows, k = wts.shape[0] * _fma.ROWS, wts.shape[1]
    kc = _fma.chunk(k)
    if (kh, kw) == (1, 1) and (sy, sx) == (1, 1) and out_hw == (hp, wp):
        _pointwise_fma(xp.reshape(c, hp * wp), wts, kc, out, finish, run)
        return
    x, hq, wq, length = _fma_phases(xp, geom, _fma.COLUMNS, run)
    koff = _row_offsets(c, length, geom, hq, wq)

    def product(m0: int, m1: int, r0: int, r1: int, t: np.ndarray) -> None:
        _fma.product(x, koff, wts, m0, m1, r0, r1, kc, t)

    _at_phase_width(product, rows, _fma.ROWS, _fma.COLUMNS, rows * k, "fma", out_hw, wq,
                    out.shape[0], finish, run)


def _pointwise_fma(x, wts, kc: int, out, finish, run) -> None:
    """A 1x1 convolution at stride 1 of ``x [C, N]``, read in place, on
    :func:`npusim.simulator._fma_pointwise.conv`: straight into ``out [O, N]`` with the
    epilogue; the threads share the pixels, or the rows when there are few pixels."""
    c, n = x.shape
    rows = wts.shape[0] * _fma.ROWS
    bias, res, relu, clip, lo, hi = finish.whole()
    flags = ((_fma_pointwise.BIAS if bias.size else 0) | (_fma_pointwise.RELU if relu else 0)
             | (_fma_pointwise.CLIP if clip else 0)
             | (_fma_pointwise.RESIDUAL if res.size else 0))
    padded_bias = np.zeros(rows, np.float32)
    if bias.size:
        padded_bias[:out.shape[0]] = bias[:out.shape[0]]
    cols = _fma.COLUMNS
    step = max(cols, max(TILE_COLUMNS, TILE_BYTES // (4 * rows)) // cols * cols)

    def conv(m0: int, m1: int, r0: int, r1: int) -> None:
        _fma_pointwise.conv(x, wts, m0, m1, r0, r1, kc, step, out, padded_bias, res, lo, hi,
                            flags)

    if n <= FEW_COLUMNS:  # few pixels: the threads share the rows
        run(lambda t0, t1: conv(0, n, t0 * _fma.ROWS, t1 * _fma.ROWS), rows // _fma.ROWS,
            grain=grain(_fma.ROWS * c * n, "fma"))
        return
    run(lambda t0, t1: conv(t0 * cols, min(n, t1 * cols), 0, rows), -(-n // cols),
        grain=grain(rows * c * cols, "fma"))


GROUPED_FMA_OUTPUTS = 64
"""Output channels per group below which an fp32 grouped convolution runs all its groups
in :func:`_conv_grouped_fma` (one input channel per group runs in
:mod:`npusim.simulator.channelwise`): RegNet's groups of 8 and ResNeXt's of 4-32 ran
2.5-7x faster there than a group at a time (440 channels of 7x7 in 55 groups: 0.77 ->
0.10 ms; 1024 of 7x7 in 32: 1.18 -> 0.46 ms); from 64 outputs a group, each group's own
product is as fast or faster (AlexNet's two groups of 128: 1.3 against 1.6 ms)."""


def _conv_grouped_fma(x, w: np.ndarray, groups: int, geom, out_hw, out, finish,
                      run=threads.run) -> None:
    """One image ``x [C, H, W]`` of an fp32 grouped convolution (more than one input
    channel per group), all groups in one call of
    :func:`npusim.simulator._fma_grouped.product`, the output made at the phases' width
    (as :func:`_conv_fma`); ``out [O, OH*OW]``. At stride 1 the tiles read the padded
    planes in place (one phase; a tile past a plane's end reads the next plane, or the
    slack after the last, into pixels that are dropped); at a larger stride the padded
    planes are copied into their phases."""
    c = x.shape[0]
    (kh, kw), (sy, sx) = geom.kernel, geom.strides
    o, cg = out.shape[0], c // groups
    wts = grouped_f32(w, groups, kh * kw)
    rows = wts.shape[2]
    tpg = wts.shape[0] // groups
    top, left, hp, wp = pad_extent(x.shape[1:], geom, out_hw)
    wide = -(-hp // sy) * out_hw[0] > 2 * _fma_grouped.tile_lanes(rows, True)
    lanes = _fma_grouped.tile_lanes(rows, wide)
    if (sy, sx) == (1, 1):
        hq, wq, length = hp, wp, hp * wp
        # the last tile of the last plane reads at most a row and a tile past its end
        xs = np.zeros(c * length + wp + lanes, np.float32)
        h, w_ = x.shape[1:]
        xs[:c * length].reshape(c, hp, wp)[:, top:top + h, left:left + w_] = x
    else:
        xs, hq, wq, length = _fma_phases(padded(x, geom, out_hw), geom, lanes, run)
    koff = _row_offsets(cg, length, geom, hq, wq)

    def product(m0: int, m1: int, r0: int, r1: int, t: np.ndarray) -> None:
        _fma_grouped.product(xs, koff, cg * length * 4, tpg, wts, m0, m1, r0 // rows,
                             r1 // rows, wide, _fma.chunk(len(koff)), t)

    _at_phase_width(product, wts.shape[0] * rows, rows, lanes, wts.shape[0] * rows * len(koff),
                    "fma", out_hw, wq, o, finish, run, (o // groups, tpg * rows))


QUANTIZE_PIXELS = 1 << 16
"""Elements a share of a plane quantization holds at least (about 30 us)."""


def _vnni_ok(fmt: Format) -> bool:
    """Formats whose products run on :mod:`npusim.simulator._vnni` on this CPU."""
    return _vnni.supports(fmt.block_size, fmt.mantissa_bits)


