# SPDX-License-Identifier: Apache-2.0
"""What the convolution kernels' tests share: bit comparison, the fp32 and block-format
epilogue checks, the threads' forced split and the depthwise geometries two kernels'
tests run."""

from __future__ import annotations

import numpy as np
import pytest

from npusim.simulator import conv_shares
from npusim.simulator.kernels import ConvGeometry, conv2d, conv2d_reference
from npusim.simulator.numerics import FP32


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as fp32 bit patterns, any NaN matching any NaN."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b))
                and np.array_equal(a[~nan].view(np.int32), b[~nan].view(np.int32)))


@pytest.fixture(autouse=True)
def every_layer_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every product here is cut between the threads, however small (the rest of the
    suite runs the same shapes whole, on one thread)."""
    monkeypatch.setattr(conv_shares, "SHARE_MACS", dict.fromkeys(conv_shares.SHARE_MACS, 1))


def check_fp32_epilogues(c: int, o: int, h: int, w: int, geom, seed: int) -> None:
    """An fp32 convolution of two seeded images, with each epilogue, within the fp32
    tolerance of the reference."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c // geom.groups * geom.kernel[0] * geom.kernel[1])
                             ).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    res = rng.standard_normal(conv2d_reference(x, wt, None, geom, FP32).shape).astype(
        np.float32)
    for kw in ({}, {"residual": res, "relu": True}, {"clip": (0.0, 6.0)}):
        ref = conv2d_reference(x, wt, bias, geom, FP32, **kw)
        got = conv2d(x, wt, bias, geom, FP32, **kw)
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def check_block_epilogues(x: np.ndarray, wq, geom, fmt, rng, name: str) -> None:
    """A block-format convolution of ``x`` with quantized weights ``wq``, with each
    epilogue (a seeded bias and residual drawn from ``rng``), bit for bit with the
    reference."""
    bias = rng.standard_normal(wq.shape[0]).astype(np.float32)
    res = rng.standard_normal(conv2d_reference(x, wq, None, geom, fmt).shape).astype(
        np.float32)
    with np.errstate(all="ignore"):
        for kw in ({}, {"residual": res, "relu": True}, {"clip": (0.0, 6.0)},
                   {"relu": True, "clip": (-1.0, 0.5)}):
            ref = conv2d_reference(x, wq, bias, geom, fmt, **kw)
            assert same_bits(conv2d(x, wq, bias, geom, fmt, **kw), ref), (name, kw)


FMA_DEPTHWISE = {
    # 64 channels a wide tile, 16 a narrow one: 70 pads to 80 (one of each), 130 to 144
    "fma-70-5x5": (70, 70, 7, 7, ConvGeometry((5, 5), (1, 1), (2, 2, 2, 2), groups=70)),
    "fma-130-stride2": (130, 130, 13, 11, ConvGeometry((3, 3), (2, 2), (1, 0, 1, 1),
                                                       groups=130)),
    "fma-multiplier": (40, 80, 6, 9, ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1), groups=40)),
    "fma-dilated": (64, 64, 9, 9, ConvGeometry((3, 3), (1, 1), (2, 2, 2, 2), (2, 2),
                                               groups=64)),
}
