# SPDX-License-Identifier: Apache-2.0
"""The fast matrix-unit kernels (npusim.simulator.gemm) against the numpy reference, bit for bit.

Every BFP format (ms-fp8/9 over several native dimensions, MSFP12/16, MXINT8), every
path of :func:`npusim.simulator.gemm.conv2d` (pointwise, im2col, per-group GEMMs, the direct
grouped and depthwise kernel) and of the products (few rows, many rows), with awkward
values: ties, subnormals, NaN, infinities, block scales outside fp32's normal range.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from conv_cases import (
    FMA_DEPTHWISE,
    check_fp32_epilogues,
    every_layer_split,  # noqa: F401  (autouse: every product split)
    same_bits,
)
from numerics_cases import DIFF_FORMATS, MX_FORMATS, fid, nasty

from npusim.simulator import (
    _bfp_rows,
    _fast_gemm,
    _fma,
    _fma_rows,
    _vnni,
    channelwise,
    conv_pixels,
    conv_shares,
    gemm,
)
from npusim.simulator import dense as dense_products
from npusim.simulator.kernels import ConvGeometry, conv2d, conv2d_reference, dense
from npusim.simulator.numerics import (
    FP32,
    Format,
    Rounding,
    accumulate_blocks_reference,
    bfp_matmul,
    get_format,
    matmul,
    quantize,
    quantize_reference,
)

# (C, O, H, W, geometry): one case per path of gemm.conv2d
CONVS = {
    "pointwise": (40, 24, 6, 7, ConvGeometry((1, 1))),
    "3x3-pad": (20, 18, 9, 8, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1))),
    "stride-dilation": (7, 5, 13, 11, ConvGeometry((3, 2), (2, 3), (2, 0, 1, 3), (2, 1))),
    "7x7-stem": (3, 16, 20, 20, ConvGeometry((7, 7), (2, 2), (3, 3, 3, 3))),
    "groups-gemm": (32, 64, 6, 6, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), groups=2)),
    "depthwise": (24, 24, 10, 9, ConvGeometry((3, 3), (2, 2), (1, 1, 1, 1), groups=24)),
    "depthwise-5x5": (8, 16, 9, 9, ConvGeometry((5, 5), (1, 1), (2, 2, 2, 2), groups=8)),
    "depthwise-dilated": (12, 12, 11, 10, ConvGeometry((3, 3), (1, 2), (2, 1, 2, 1), (2, 1),
                                                       groups=12)),
    "grouped-small": (32, 32, 7, 7, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), groups=8)),
    "transposed": (6, 4, 5, 5, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1),
                                            input_dilation=(2, 2))),
    # whole blocks of channels: the quantized planes read in place, in their stride
    # phases (8-bit dot products), dilated and unevenly padded; and a 1x1 of 128 channels
    # (ms-fp8/9's block)
    "planes-dilated": (32, 20, 9, 11, ConvGeometry((3, 3), (1, 1), (2, 1, 1, 2), (2, 1))),
    "planes-strided": (32, 12, 11, 13, ConvGeometry((3, 3), (2, 3), (1, 0, 1, 2), (1, 2))),
    "planes-pointwise": (128, 12, 5, 6, ConvGeometry((1, 1))),
}

# planes wide enough for the plane-wise depthwise kernel whichever path the test forces:
# a stride-2 plane of even and odd width, its left column padded or not
WIDE_DEPTHWISE = {
    "depthwise-wide-even": (16, 16, 7, 40, ConvGeometry((3, 3), (2, 2), (0, 0, 1, 1),
                                                        groups=16)),
    "depthwise-wide-odd": (8, 8, 9, 35, ConvGeometry((3, 3), (2, 2), (1, 1, 1, 1), groups=8)),
    # no padding: the output is narrower than the plane (no phase layout at its width)
    "depthwise-valid": (8, 8, 9, 20, ConvGeometry((3, 3), (1, 1), (0, 0, 0, 0), groups=8)),
    # more padding than the window needs, a stride of 3 and a multiplier of 2
    "depthwise-wide-pad": (6, 12, 8, 19, ConvGeometry((3, 3), (3, 3), (2, 3, 2, 3),
                                                      groups=6)),
}


def _conv_case(name: str, fmt: Format, seed: int, extreme: bool = False):
    c, o, h, w, geom = CONVS[name] if name in CONVS else WIDE_DEPTHWISE[name]
    rng = np.random.default_rng(seed)
    kg = geom.kernel[0] * geom.kernel[1] * c // geom.groups
    x = nasty(rng, (2, c, h, w), fmt, row_exp=(-145, 125) if extreme else (-30, 30))
    weights = nasty(rng, (o, kg), fmt, nonfinite=False, row_exp=(-20, 10))
    if fmt.is_fp32:
        wt = weights
    else:
        wt = quantize(weights, fmt)
    bias = rng.standard_normal(o).astype(np.float32)
    return x, wt, bias, geom


@pytest.fixture(params=["split-pixels", "split-channels"]
                + ([pytest.param("portable-kernels", marks=pytest.mark.slow)]
                   if _vnni.AVAILABLE or _fma.AVAILABLE else []))
def split(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a layer's work is cut between the threads: by output pixels (slices of
    output rows), or by output channels (every pixel at once, for small layers); and, on a
    CPU with 8-bit dot products or AVX-512, by pixels without them (the kernels every other
    CPU runs; a slow case, which CI runs)."""
    monkeypatch.setattr(gemm, "FEW_COLUMNS", 10**9 if request.param == "split-channels" else 0)
    if request.param == "portable-kernels":
        monkeypatch.setattr(gemm, "_vnni_ok", lambda fmt: False)
        monkeypatch.setattr(_fma, "AVAILABLE", False)
        monkeypatch.setattr(_bfp_rows, "AVAILABLE", False)
    return request.param


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=fid)
@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("extreme", [False, True], ids=["scales-normal", "scales-extreme"])
def test_conv2d_matches_reference(fmt: Format, name: str, extreme: bool, split: str) -> None:
    """``extreme``: block scales whose products leave fp32's normal range (the float64
    path of the accumulation), overflow to infinities and underflow to subnormals."""
    x, w, bias, geom = _conv_case(name, fmt, seed=len(name) + fmt.block_size, extreme=extreme)
    res = np.random.default_rng(1).standard_normal(
        conv2d_reference(x, w, None, geom, fmt).shape).astype(np.float32)
    with np.errstate(all="ignore"):
        for kw in ({}, {"residual": res, "relu": True}, {"clip": (0.0, 6.0)},
                   {"relu": True, "clip": (-1.0, 0.5)}, {"clip": (2.0, -2.0)}):
            ref = conv2d_reference(x, w, bias, geom, fmt, **kw)
            assert same_bits(conv2d(x, w, bias, geom, fmt, **kw), ref), (name, kw)


DEPTHWISE = [n for n, (c, _, _, _, g) in CONVS.items() if g.groups == c] + list(WIDE_DEPTHWISE)


@pytest.mark.parametrize("path", ["phase-layout", "phase-layout-a-row-at-a-time",
                                  "by-channels", "by-planes-a-row-at-a-time"])
@pytest.mark.parametrize("fmt", [FP32, *DIFF_FORMATS], ids=fid)
@pytest.mark.parametrize("name", DEPTHWISE)
@pytest.mark.parametrize("extreme", [False, True], ids=["scales-normal", "scales-extreme"])
def test_depthwise_paths_match_reference(fmt: Format, name: str, extreme: bool, path: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """One input channel per group (depthwise, and a channel multiplier of 2): along each
    channel's plane laid out in its stride phases at the output's width (whole, or an
    output row at a time), vectorized along the channels, or along each channel's padded
    plane, here one output row at a time (the small cases would otherwise take one of the
    kernels whole). A case the phase layout does not fit takes the padded planes."""
    monkeypatch.setattr(channelwise, "FMA_GROUPS", 10**9)  # their own tests below
    monkeypatch.setattr(_fma_rows, "depthwise_fits", lambda geom, out_h: False)
    monkeypatch.setattr(_bfp_rows, "fits", lambda geom, block, out_h: False)
    if path.startswith("phase-layout"):
        monkeypatch.setattr(channelwise, "CHANNEL_WIDTH", 0)
        if path.endswith("a-row-at-a-time"):
            monkeypatch.setattr(channelwise, "PLANE_COLUMNS", 1)
    elif path == "by-channels":
        monkeypatch.setattr(channelwise, "flat_layout", lambda *a: None)
        monkeypatch.setattr(channelwise, "CHANNEL_WIDTH", 10**9)
        monkeypatch.setattr(channelwise, "CHANNEL_GROUPS", 1)
    else:
        monkeypatch.setattr(channelwise, "flat_layout", lambda *a: None)
        monkeypatch.setattr(channelwise, "CHANNEL_WIDTH", 0)
        monkeypatch.setattr(channelwise, "PLANE_COLUMNS", 1)
    x, w, bias, geom = _conv_case(name, fmt, seed=len(name) + fmt.block_size, extreme=extreme)
    if fmt.is_fp32:  # a sum in K order per pixel whichever way it is vectorized
        x = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    res = np.random.default_rng(1).standard_normal(
        conv2d_reference(x, w, None, geom, fmt).shape).astype(np.float32)
    with np.errstate(all="ignore"):
        for kw in ({}, {"residual": res, "relu": True}, {"clip": (0.0, 6.0)}):
            ref = conv2d_reference(x, w, bias, geom, fmt, **kw)
            got = conv2d(x, w, bias, geom, fmt, **kw)
            if fmt.is_fp32:
                np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
            else:
                assert same_bits(got, ref), (name, kw)


BY_PIXELS = {
    # output channels 16 (a 1-vector tile), 40 (2 + 1, padded), 112 (4 + 2 + 1); planes
    # read in place (no padding) and copied (a 16x16 padded plane is 1 KiB: a vector more)
    "pixels-o16-pad": (8, 16, 14, 14, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1))),
    "pixels-o40-valid": (12, 40, 9, 11, ConvGeometry((3, 3), (1, 1), (0, 0, 0, 0))),
    "pixels-o112-stride2": (20, 112, 13, 10, ConvGeometry((3, 3), (2, 2), (1, 0, 1, 1))),
    "pixels-1x1-stride-2x1": (24, 64, 7, 7, ConvGeometry((1, 1), (2, 1), (0, 0, 0, 0))),
    "pixels-grouped": (16, 96, 8, 8, ConvGeometry((3, 3), (1, 1), (2, 2, 2, 2), (2, 2),
                                                  groups=2)),
}


@pytest.mark.skipif(not _fma.AVAILABLE, reason="no AVX-512 here")
@pytest.mark.parametrize("name", [*BY_PIXELS, *(n for n, (c, _, _, _, g) in CONVS.items()
                                                if g.groups < c)])
def test_fp32_conv_by_pixels_matches_reference(name: str, split: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 convolutions on the tiles of output-channel vectors by broadcast pixels (every
    tile width, pixel counts not a multiple of a tile, the input read in place or copied),
    with each epilogue, the threads sharing their output channels or their pixels in as
    many shares as they can."""
    monkeypatch.setattr(conv_pixels, "fits", lambda *a: _fma.AVAILABLE)
    monkeypatch.setitem(conv_shares.SHARE_MACS, "fma", 1)  # every share it can make
    c, o, h, w, geom = BY_PIXELS[name] if name in BY_PIXELS else CONVS[name]
    check_fp32_epilogues(c, o, h, w, geom, seed=len(name))


GROUPED_FMA = {
    # 8 outputs a group (a whole tile of 8 rows) on narrow and wide planes, 4 (a tile of
    # 4) at stride 2, 12 (two tiles of 8, the second padded) dilated, 3 (padded to 4) on
    # a 1x1 read in place, and 40 channels a group (K = 360: two chunks of K)
    "grouped-o8-narrow": (32, 32, 7, 7, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), groups=4)),
    "grouped-o8-wide": (16, 16, 20, 23, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), groups=2)),
    "grouped-o4-stride2": (24, 24, 13, 11, ConvGeometry((3, 3), (2, 2), (1, 0, 1, 1),
                                                        groups=6)),
    "grouped-o12-dilated": (12, 36, 11, 9, ConvGeometry((3, 3), (1, 1), (2, 2, 2, 2), (2, 2),
                                                        groups=3)),
    "grouped-o3-1x1": (10, 15, 6, 9, ConvGeometry((1, 1), groups=5)),
    "grouped-two-chunks": (80, 40, 9, 8, ConvGeometry((3, 3), (2, 1), (0, 1, 2, 1),
                                                      groups=2)),
}


@pytest.mark.skipif(not _fma.AVAILABLE, reason="no AVX-512 here")
@pytest.mark.parametrize("name", list(GROUPED_FMA))
def test_fp32_grouped_on_one_call_matches_reference(name: str, split: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 grouped convolutions with all groups in one call of the row tiles (8 or 4
    rows, narrow or wide, each group's rows padded to whole tiles), read in place at
    stride 1 or from their phases, with each epilogue, the threads sharing their rows
    of tiles or their pixels."""
    calls = []
    real = gemm._conv_grouped_fma
    monkeypatch.setattr(gemm, "_conv_grouped_fma", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setitem(conv_shares.SHARE_MACS, "fma", 1)  # every share it can make
    check_fp32_epilogues(*GROUPED_FMA[name], seed=len(name))
    assert bool(calls) == _fma.AVAILABLE  # the kernel ran (not in the portable split)


@pytest.mark.skipif(not _fma.AVAILABLE, reason="no AVX-512 here")
@pytest.mark.parametrize("name", [*DEPTHWISE, *FMA_DEPTHWISE])
def test_fp32_depthwise_on_channel_tiles_matches_reference(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 convolutions of one input channel per group on the channel-last fused
    multiply-add tiles (wide and narrow, whole and single pixels, channel counts padded
    to whole vectors), with each epilogue."""
    monkeypatch.setattr(channelwise, "FMA_GROUPS", 1)
    monkeypatch.setattr(channelwise, "FMA_WIDTH", 10**9)
    monkeypatch.setattr(_fma_rows, "depthwise_fits", lambda geom, out_h: False)
    c, o, h, w, geom = FMA_DEPTHWISE[name] if name in FMA_DEPTHWISE else \
        (CONVS[name] if name in CONVS else WIDE_DEPTHWISE[name])
    check_fp32_epilogues(c, o, h, w, geom, seed=len(name))


@pytest.mark.parametrize("fmt", MX_FORMATS, ids=fid)
@pytest.mark.parametrize("name", list(CONVS))
@pytest.mark.parametrize("extreme", [False, True], ids=["scales-normal", "scales-extreme"])
def test_mx_conv2d_matches_reference(fmt: Format, name: str, extreme: bool) -> None:
    """The MX minifloat formats' general path (numba quantizer, exact float64 or split
    block products) against the reference (numpy quantizer, Python-integer products)."""
    x, w, bias, geom = _conv_case(name, fmt, seed=len(name), extreme=extreme)
    with np.errstate(all="ignore"):
        for kw in ({}, {"relu": True, "clip": (-1.0, 0.5)}):
            ref = conv2d_reference(x, w, bias, geom, fmt, **kw)
            assert same_bits(conv2d(x, w, bias, geom, fmt, **kw), ref), (name, kw)
            away = conv2d(x, w, bias, geom, fmt, rounding=Rounding.NEAREST_AWAY, **kw)
            assert same_bits(away, conv2d_reference(x, w, bias, geom, fmt,
                                                    rounding=Rounding.NEAREST_AWAY, **kw))


@pytest.mark.parametrize("name", list(CONVS))
def test_conv2d_fp32_matches_reference(name: str, split: str,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """On the direct fp32 kernel wherever it can run, however few of its pixels are
    wanted (im2col and BLAS in the portable split, and where it cannot)."""
    monkeypatch.setattr(gemm, "FMA_USEFUL", 0.0)
    x, w, bias, geom = _conv_case(name, FP32, seed=3)
    x = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    ref = conv2d_reference(x, w, bias, geom, FP32)
    got = conv2d(x, w, bias, geom, FP32)
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


@pytest.mark.parametrize("fmt", DIFF_FORMATS + MX_FORMATS, ids=fid)
@pytest.mark.parametrize("rows", [1, 3, dense_products.GEMV_ROWS + 1, 70, 129, 300])
def test_products_match_reference(fmt: Format, rows: int) -> None:
    rng = np.random.default_rng(rows + fmt.block_size)
    a = nasty(rng, (rows, 150), fmt)  # default scales: far outside fp32's normal range
    w = quantize(nasty(rng, (21, 150), fmt, nonfinite=False), fmt)
    with np.errstate(all="ignore"):
        ref = bfp_matmul(quantize_reference(a, fmt), w, accumulate=accumulate_blocks_reference)
        assert same_bits(matmul(a, w, fmt), ref)
        assert same_bits(bfp_matmul(quantize(a, fmt), w), ref)
        assert same_bits(dense(a, w, None, fmt), ref)


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=fid)
@pytest.mark.parametrize("rows", [1, 2, dense_products.GEMV_ROWS])
@pytest.mark.parametrize("whole", [True, False], ids=["one-call", "general"])
def test_small_dense_layers_match_reference(fmt: Format, rows: int, whole: bool,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A small product of a few rows (a squeeze-excite layer) whole in one compiled call
    with its epilogue, or through the general steps: the reference's product, then each
    step of the epilogue, bit for bit (scales far outside fp32's normal range, NaN,
    infinities)."""
    from npusim.simulator.kernels import epilogue

    calls = []
    real = _fast_gemm.dense_rows
    monkeypatch.setattr(_fast_gemm, "dense_rows", lambda *a: calls.append(1) or real(*a))
    if not whole:
        monkeypatch.setattr(dense_products, "SMALL_MACS", 0)
    rng = np.random.default_rng(rows + fmt.block_size)
    a = nasty(rng, (rows, 40), fmt)
    w = quantize(nasty(rng, (12, 40), fmt, nonfinite=False, row_exp=(-20, 10)), fmt)
    bias = rng.standard_normal(12).astype(np.float32)
    res = rng.standard_normal((rows, 12)).astype(np.float32)
    with np.errstate(all="ignore"):
        product = bfp_matmul(quantize_reference(a, fmt), w,
                             accumulate=accumulate_blocks_reference)
        for kw in ({}, {"residual": res, "relu": True}, {"clip": (-1.0, 0.5)},
                   {"relu": True, "clip": (0.0, 6.0)}):
            ref = epilogue(product, bias, kw.get("residual"), kw.get("relu", False),
                           kw.get("clip"))
            assert same_bits(dense(a, w, bias, fmt, **kw), ref), kw
    assert bool(calls) == whole


@pytest.mark.parametrize("rows,o", [(dense_products.FP32_ROWS, 21), (301, 21), (70, 150)])
def test_fp32_dense_of_many_rows_shares_them(rows: int, o: int,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 products of many rows (a transformer's tokens), their rows (or, when the
    outputs outnumber them, the outputs) shared between the threads: the product within
    fp32 of float64's, each epilogue's fp32 steps on its sums bit for bit (NaN and
    infinities in the residual), leading axes kept."""
    from npusim.simulator.kernels import epilogue

    monkeypatch.setattr(conv_shares, "SHARE_MACS", dict.fromkeys(conv_shares.SHARE_MACS, 1))
    rng = np.random.default_rng(rows)
    a = rng.standard_normal((rows, 37)).astype(np.float32)
    w = rng.standard_normal((o, 37)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    res = rng.standard_normal((rows, o)).astype(np.float32)
    res[::5, 3], res[::7, 4] = np.nan, -np.inf
    bare = dense(a, w, None, FP32)
    np.testing.assert_allclose(bare, a.astype(np.float64) @ w.T.astype(np.float64),
                               rtol=1e-5, atol=1e-4)
    with np.errstate(all="ignore"):
        for kw in ({}, {"residual": res, "relu": True}, {"clip": (-1.0, 0.5)}):
            ref = epilogue(bare, bias, kw.get("residual"), kw.get("relu", False),
                           kw.get("clip"))
            assert same_bits(dense(a, w, bias, FP32, **kw), ref), kw
    three = dense(a.reshape(1, rows, 37), w, bias, FP32)
    assert three.shape == (1, rows, o) and same_bits(three[0], dense(a, w, bias, FP32))


@pytest.mark.parametrize("fmt", DIFF_FORMATS + MX_FORMATS, ids=fid)
@pytest.mark.parametrize("batch,shared", [(1, False), (6, False), (6, True)])
def test_activation_products_match_reference(fmt: Format, batch: int, shared: bool) -> None:
    """An MM_MUL's batch of products (attention's heads and windows) at once, each the
    reference's numbers: ``b[i].T`` quantized along K as weights are, ``a[i]``'s rows
    streamed through it; one ``b`` for every ``a[i]`` too."""
    from npusim.simulator.kernels import matmul_act

    rng = np.random.default_rng(batch + fmt.block_size + shared)
    a = nasty(rng, (batch, 11, 70), fmt)
    b = nasty(rng, (1 if shared else batch, 70, 13), fmt)
    with np.errstate(all="ignore"):
        got = matmul_act(a, b, fmt)
        for i in range(batch):
            w = quantize_reference(np.ascontiguousarray(b[0 if shared else i].T), fmt)
            ref = bfp_matmul(quantize_reference(a[i], fmt), w,
                             accumulate=accumulate_blocks_reference)
            assert same_bits(got[i], ref), i


@pytest.mark.parametrize("few", [0, 10**9])
def test_partial_slices_cover_every_column(monkeypatch: pytest.MonkeyPatch, few: int) -> None:
    """Many small GEMM slices give the same result as one."""
    monkeypatch.setattr(gemm, "FEW_COLUMNS", few)
    for fmt in (get_format("msfp16"), get_format("msfp9")):  # tiled, and BLAS partials
        x, w, bias, geom = _conv_case("3x3-pad", fmt, seed=9)
        with np.errstate(all="ignore"):
            whole = conv2d(x, w, bias, geom, fmt)
            monkeypatch.setattr(gemm, "PARTIAL_BYTES", 1)  # one output row per GEMM
            monkeypatch.setattr(gemm, "MIN_COLUMNS", 1)  # one pixel row per step
            monkeypatch.setattr(gemm, "TILE_COLUMNS", 1)
            assert same_bits(conv2d(x, w, bias, geom, fmt), whole)
            monkeypatch.undo()
            monkeypatch.setattr(gemm, "FEW_COLUMNS", few)


@pytest.mark.parametrize("fmt", [f for f in DIFF_FORMATS if f.block_size <= 32], ids=fid)
def test_zero_blocks_and_many_tiles_match_reference(fmt: Format, split: str) -> None:
    """A ReLU's all-zero blocks (their scale does not matter, and must not slow the rest),
    weight blocks of zeros, and a layer wide enough for several column tiles, K spans and
    a row tile of its own for the last output channels."""
    rng = np.random.default_rng(fmt.block_size)
    geom = ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1))
    x = np.maximum(nasty(rng, (1, 64, 24, 23), fmt, row_exp=(-8, 8)), 0)
    x[:, 8:40] = 0.0
    x[:, :, 5:9] = 0.0
    w = nasty(rng, (21, 9 * 64), fmt, nonfinite=False, row_exp=(-8, 4))
    w[3:7, 100:300] = 0.0
    w[12] = 0.0
    wq = quantize(w, fmt)
    bias = rng.standard_normal(21).astype(np.float32)
    with np.errstate(all="ignore"):
        assert same_bits(conv2d(x, wq, bias, geom, fmt, relu=True),
                         conv2d_reference(x, wq, bias, geom, fmt, relu=True))


def test_stochastic_rounding_uses_the_reference() -> None:
    fmt = get_format("msfp12")
    x, w, bias, geom = _conv_case("depthwise", fmt, seed=5)
    with np.errstate(all="ignore"):
        got = conv2d(x, w, bias, geom, fmt, rounding=Rounding.STOCHASTIC, seed=7)
        ref = conv2d_reference(x, w, bias, geom, fmt, rounding=Rounding.STOCHASTIC, seed=7)
        assert same_bits(got, ref)
        assert not same_bits(got, conv2d(x, w, bias, geom, fmt))


@numba.njit(cache=True)
def _both_quantizers(v, nb, mbits, emin, emax, q1, s1, q2, s2, scratch):  # pragma: no cover
    _fast_gemm._quantize_block(v, nb, mbits, emin, emax, q1, s1, scratch)
    _fast_gemm._quantize_block64(v, nb, mbits, emin, emax, q2, s2, scratch)


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=fid)
def test_fp32_quantizer_matches_float64_one(fmt: Format) -> None:
    """The activations' quantizer runs in fp32 where that gives the float64 result, and
    hands a block with a tiny nonzero maximum to the float64 one: both give the same bits
    on zeros, subnormals, huge values, infinities and NaNs, block by block."""
    rng = np.random.default_rng(fmt.block_size + fmt.mantissa_bits)
    b = fmt.block_size
    for trial in range(200):
        n = int(rng.integers(1, 40))
        nb = int(rng.integers(1, b + 1))
        with np.errstate(all="ignore"):
            v = (rng.standard_normal((b, n)) * 2.0 ** rng.integers(-160, 130, (b, n))
                 ).astype(np.float32)
        u = rng.random((b, n))
        v[u < 0.2] = 0.0
        v[(u > 0.2) & (u < 0.21)] = np.inf
        v[(u > 0.21) & (u < 0.215)] = np.nan
        v[:, rng.random(n) < 0.3] = 0.0
        v[:, rng.random(n) < 0.3] *= np.float32(2.0**-100)
        if trial % 2:  # the common case: no tiny block, so the fp32 path runs
            v = np.where(np.abs(v) < 2.0**-90, 0.0, v).astype(np.float32)
        q1, q2 = np.empty((b, n), np.float32), np.empty((b, n), np.float32)
        s1, s2 = np.empty(n, np.float32), np.empty(n, np.float32)
        _both_quantizers(v, nb, fmt.mantissa_bits, fmt.emin, fmt.emax, q1, s1, q2, s2,
                         np.empty((3, n)))
        assert same_bits(q1, q2) and same_bits(s1, s2), trial


@pytest.mark.parametrize("fmt", [FP32, *[f for f in DIFF_FORMATS if f.block_size <= 32]],
                         ids=fid)
@pytest.mark.parametrize("by", ["groups", "rows-of-each-group"])
def test_grouped_convolution_both_ways_of_sharing(fmt: Format, by: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The threads share a grouped convolution's groups (small groups, or as many groups
    as threads), or each group's rows and columns in turn (large groups)."""
    from npusim.simulator import threads

    if by == "rows-of-each-group":
        monkeypatch.setattr(gemm, "SMALL_GROUP", 0)
        monkeypatch.setattr(threads, "workers", lambda: 3)  # 2 groups: not a multiple
    x, w, bias, geom = _conv_case("groups-gemm", fmt, seed=3)
    if fmt.is_fp32:
        x = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)
    with np.errstate(all="ignore"):
        ref = conv2d_reference(x, w, bias, geom, fmt, relu=True)
        got = conv2d(x, w, bias, geom, fmt, relu=True)
    if fmt.is_fp32:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
    else:
        assert same_bits(got, ref)
