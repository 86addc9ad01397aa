# SPDX-License-Identifier: Apache-2.0
"""The AVX-512 row-vector kernels (:mod:`npusim.simulator._fma_rows`,
:mod:`npusim.simulator._bfp_rows`, :mod:`npusim.simulator._fma_stem`,
:mod:`npusim.simulator._bfp_stem`) against the reference convolution: fp32 depthwise and
RGB stems within fp32's tolerance, block-format depthwise and RGB stems bit for bit,
every epilogue, the threads sharing the work."""

from __future__ import annotations

import numpy as np
import pytest
from conv_cases import (
    FMA_DEPTHWISE,
    check_block_epilogues,
    check_fp32_epilogues,
    every_layer_split,  # noqa: F401  (autouse: every product split)
)
from numerics_cases import DIFF_FORMATS, fid, nasty

from npusim.simulator import _bfp_rows, _bfp_stem, _fma, _fma_rows, _fma_stem
from npusim.simulator.kernels import ConvGeometry, conv2d, conv2d_reference
from npusim.simulator.numerics import FP32, Format, quantize

ROW_DEPTHWISE = {
    # output rows 15, 16 and 17 wide (a vector, one whole, one and a lane), 4 to 11 rows
    # (one call of ROWS, and the last group shifted up over rows already made), stride 2
    # in both directions or in the columns only, dilated, a multiplier of 2, more padding
    # than the window needs, 7x7
    "rows-15-5x5": (6, 6, 5, 15, ConvGeometry((5, 5), (1, 1), (2, 2, 2, 2), groups=6)),
    "rows-16-stride2": (5, 5, 8, 32, ConvGeometry((3, 3), (2, 2), (1, 1, 1, 1), groups=5)),
    "rows-17-uneven": (4, 4, 9, 17, ConvGeometry((3, 3), (1, 1), (0, 2, 1, 0), groups=4)),
    "rows-stride-1x2-5x5": (3, 6, 11, 37, ConvGeometry((5, 5), (1, 2), (2, 2, 2, 2),
                                                       groups=3)),
    "rows-dilated": (4, 4, 10, 21, ConvGeometry((3, 3), (2, 1), (2, 2, 2, 2), (2, 2),
                                                groups=4)),
    "rows-wide-pad": (2, 2, 4, 5, ConvGeometry((3, 3), (1, 1), (3, 4, 2, 5), groups=2)),
    "rows-7x7": (4, 4, 9, 14, ConvGeometry((7, 7), (1, 1), (3, 3, 3, 3), groups=4)),
    "rows-7x7-stride2": (3, 3, 12, 35, ConvGeometry((7, 7), (2, 2), (3, 2, 3, 2), groups=3)),
}


@pytest.mark.skipif(not _fma.AVAILABLE, reason="no AVX-512 here")
@pytest.mark.parametrize("name", [*ROW_DEPTHWISE, *FMA_DEPTHWISE])
def test_fp32_depthwise_on_row_vectors_matches_reference(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 convolutions of one input channel per group on the vectors of output rows
    read in place, the epilogue in the registers or (with a residual) after, with the
    threads sharing the channels; NaN and infinities pass the ReLU and the clip."""
    calls = []
    real = _fma_rows.depthwise
    monkeypatch.setattr(_fma_rows, "depthwise", lambda *a: calls.append(1) or real(*a))
    c, o, h, w, geom = ROW_DEPTHWISE[name] if name in ROW_DEPTHWISE else FMA_DEPTHWISE[name]
    check_fp32_epilogues(c, o, h, w, geom, seed=len(name))
    x = np.random.default_rng(2).standard_normal((1, c, h, w)).astype(np.float32)
    for value, step in ((np.inf, 7), (-np.inf, 11), (np.nan, 13)):  # some windows only
        x.reshape(-1)[::step] = value
    wt = np.ones((o, geom.kernel[0] * geom.kernel[1]), np.float32)
    with np.errstate(all="ignore"):
        for kw in ({"relu": True}, {"clip": (0.0, 6.0)}, {"relu": True, "clip": (-1.0, 1.0)}):
            np.testing.assert_allclose(conv2d(x, wt, None, geom, FP32, **kw),
                                       conv2d_reference(x, wt, None, geom, FP32, **kw),
                                       rtol=1e-5, atol=1e-5)  # NaN where NaN, inf where inf
    assert calls  # the kernel ran


STEMS = {
    # outputs 16 (one call), 20 and 33 (a short last call), 7 (one short call); rows of
    # 112 (stride 2 on 224: MobileNet's), 64, and narrow ones below the kernel's width
    "stem-224-s2": (3, 32, 224, 224, ConvGeometry((3, 3), (2, 2), (1, 1, 1, 1))),
    "stem-o20-s1": (3, 20, 30, 64, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1))),
    "stem-o33-uneven": (3, 33, 40, 131, ConvGeometry((3, 3), (2, 2), (0, 1, 1, 0))),
    "stem-o7-1x2-dilated": (3, 7, 9, 40, ConvGeometry((3, 3), (1, 2), (2, 2, 2, 2), (2, 1))),
    "stem-o16-valid-narrow": (3, 16, 17, 35, ConvGeometry((3, 3), (2, 2), (0, 0, 0, 0))),
}


@pytest.mark.skipif(not _fma.AVAILABLE, reason="no AVX-512 here")
@pytest.mark.parametrize("name", list(STEMS))
def test_fp32_stem_on_row_vectors_matches_reference(name: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """fp32 convolutions of three channels with a 3x3 window on vectors of output rows
    read in place, 16 outputs a call (short calls store only theirs), the epilogue in the
    registers or (with a residual) after; narrow rows too (the kernel's width floor off);
    NaN and infinities pass the ReLU and the clip."""
    calls = []
    real = _fma_stem.conv
    monkeypatch.setattr(_fma_stem, "conv", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(_fma_stem, "WIDTH", 0)
    c, o, h, w, geom = STEMS[name]
    check_fp32_epilogues(c, o, h, w, geom, seed=len(name))
    x = np.random.default_rng(3).standard_normal((1, c, h, w)).astype(np.float32)
    for value, step in ((np.inf, 7), (-np.inf, 11), (np.nan, 13)):  # some windows only
        x.reshape(-1)[::step] = value
    wt = np.ones((o, 9 * c), np.float32)
    with np.errstate(all="ignore"):
        for kw in ({"relu": True}, {"clip": (0.0, 6.0)}):
            np.testing.assert_allclose(conv2d(x, wt, None, geom, FP32, **kw),
                                       conv2d_reference(x, wt, None, geom, FP32, **kw),
                                       rtol=1e-5, atol=1e-5)
    assert calls
    if o % _fma_stem.OUTPUTS:  # a call reads whole groups: the caller pads with zeros
        out = np.empty((o, 4), np.float32)  # (the garbage past a short one was subnormal
        with pytest.raises(ValueError, match="whole groups"):  # values: 14x slower)
            real(x[0], wt, 1, 1, 1, 1, 0, 0, 2, 2, 0, 2, np.zeros(o, np.float32),
                 np.float32(0), np.float32(0), 0, out)


ROW_FORMATS = [f for f in DIFF_FORMATS if f.block_size in _bfp_rows.BLOCKS
               or f.block_size >= 49]
"""The block formats :func:`_bfp_rows.depthwise` takes every window of."""


@pytest.mark.skipif(not _bfp_rows.AVAILABLE, reason="no AVX-512 DQ here")
@pytest.mark.parametrize("fmt", ROW_FORMATS, ids=fid)
@pytest.mark.parametrize("name", list(ROW_DEPTHWISE))
@pytest.mark.parametrize("values", ["finite", "nasty", "extreme"])
def test_block_depthwise_on_row_vectors_matches_reference(
        fmt: Format, name: str, values: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Block-format convolutions of one input channel per group on the vectors of output
    rows, each pixel's window quantized in its lane, bit for bit with every epilogue:
    finite values of moderate scale (every channel on the kernel, one with all-zero
    weights); with NaN, infinities, zeros and subnormals (a channel with a window the
    kernel cannot quantize, here at least the first, reruns on the general kernel); with
    block scales far outside fp32's normal range (products it cannot make exactly, blocks
    too small for its multipliers)."""
    made, reruns = [], []
    real = _bfp_rows.depthwise

    def spy(*args):
        real(*args)
        o0, o1, bad = args[15], args[16], args[-1]
        made.append(o1 - o0)
        reruns.append(int(bad[o0:o1].sum()))

    monkeypatch.setattr(_bfp_rows, "depthwise", spy)
    c, o, h, w, geom = ROW_DEPTHWISE[name]
    rng = np.random.default_rng(len(name) + fmt.block_size)
    if values == "finite":
        x = (rng.standard_normal((2, c, h, w))
             * 2.0 ** rng.integers(-30, 30, (2, c, h, w))).astype(np.float32)
    else:
        x = nasty(rng, (2, c, h, w), fmt, row_exp=(-145, 125) if values == "extreme"
                  else (-30, 30))
        x[0, 0, 0, 0] = np.nan
    weights = nasty(rng, (o, geom.kernel[0] * geom.kernel[1]), fmt, nonfinite=False,
                    row_exp=(-20, 10))
    weights[1] = 0.0
    if values == "extreme":  # blocks too small for the kernel's multipliers, whose scale
        # products with large weight scales are still normal numbers
        x[1, 0] = (rng.standard_normal((h, w)) * 2.0**-124).astype(np.float32)
        weights[0] *= np.float32(2.0**25)
    check_block_epilogues(x, quantize(weights, fmt), geom, fmt, rng, name)
    assert sum(made) == 8 * o  # two images, four epilogues
    assert (sum(reruns) == 0) == (values == "finite")


BLOCK_STEMS = {
    # outputs 8 (one group), 20 and 33 (a short last group), 3; stride 2 on 224x224
    # (MobileNet's), stride 1, uneven padding, dilation, narrow rows
    "stem-224-s2": (8, 224, 224, ConvGeometry((3, 3), (2, 2), (1, 1, 1, 1))),
    "stem-o20-s1": (20, 18, 64, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1))),
    "stem-o33-uneven": (33, 21, 131, ConvGeometry((3, 3), (2, 2), (0, 1, 1, 0))),
    "stem-o3-dilated": (3, 9, 40, ConvGeometry((3, 3), (1, 2), (2, 2, 2, 2), (2, 1))),
}
STEM_FORMATS = [f for f in DIFF_FORMATS if f.block_size == 16 or f.block_size >= 27]


@pytest.mark.skipif(not _bfp_stem.AVAILABLE, reason="no AVX-512 DQ here")
@pytest.mark.parametrize("fmt", STEM_FORMATS, ids=fid)
@pytest.mark.parametrize("name", list(BLOCK_STEMS))
@pytest.mark.parametrize("values", ["finite", "nasty"])
def test_block_stem_on_row_vectors_matches_reference(
        fmt: Format, name: str, values: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Block-format convolutions of three channels with a 3x3 window on vectors of an
    output row, each pixel's window quantized once in its lane, every output's products
    from it, bit for bit with every epilogue (narrow rows too: the kernel's width floor
    off): finite values of moderate scale all on the kernel; with NaN, infinities, zeros
    and subnormals, or weight scales far outside fp32's, the layer on the general path."""
    outcomes = []
    real = _bfp_stem.conv
    monkeypatch.setattr(_bfp_stem, "conv", lambda *a: outcomes.append(real(*a)) or outcomes[-1])
    monkeypatch.setattr(_bfp_stem, "WIDTH", 0)
    o, h, w, geom = BLOCK_STEMS[name]
    rng = np.random.default_rng(len(name) + fmt.block_size)
    weights = nasty(rng, (o, 27), fmt, nonfinite=False, row_exp=(-20, 10))
    if values == "finite":
        x = (rng.standard_normal((2, 3, h, w))
             * 2.0 ** rng.integers(-30, 30, (2, 3, h, w))).astype(np.float32)
    else:
        x = nasty(rng, (2, 3, h, w), fmt, row_exp=(-30, 30))
        x[0, 0, 0, 0] = np.nan
    check_block_epilogues(x, quantize(weights, fmt), geom, fmt, rng, name)
    assert outcomes  # the kernel ran; on finite values nothing went to the general path
    assert (not any(outcomes)) == (values == "finite")
    if o % _bfp_stem.OUTPUTS:  # a call reads whole groups: the caller pads them
        with pytest.raises(ValueError, match="whole groups"):
            real(x[0], np.zeros((o, 27), np.float32), np.ones((o, 2), np.float32), 1, 1, 1, 1,
                 0, 0, 2, 2, 0, 1, 16, np.zeros(3, np.int32), np.float32(1),
                 np.zeros(o, np.float32), np.float32(0), np.float32(0), 0,
                 np.empty((o, 4), np.float32))
