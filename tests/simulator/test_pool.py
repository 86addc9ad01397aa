# SPDX-License-Identifier: Apache-2.0
"""The numba pooling kernel against its numpy definitions, bit for bit."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from npusim.simulator import _fma_rows, kernels
from npusim.simulator.kernels import ConvGeometry

GEOMETRIES = [
    (k, s, p, d)
    for k, s, p, d in itertools.product([(2, 2), (3, 3), (3, 2), (1, 1), (5, 5)],
                                        [(1, 1), (2, 2), (2, 1), (3, 3)],
                                        [(0, 0, 0, 0), (1, 1, 1, 1), (0, 1, 2, 0)],
                                        [(1, 1), (2, 1)])
    if all(pad < kk for pad, kk in zip(p[:2], k))
]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    nan = np.isnan(b)
    return bool(a.shape == b.shape and np.array_equal(nan, np.isnan(a))
                and np.array_equal(a[~nan].view(np.int32), b[~nan].view(np.int32)))


@pytest.mark.parametrize("columns", [1, 4096], ids=["a-row-at-a-time", "whole-planes"])
@pytest.mark.parametrize("ceil_mode", [False, True], ids=["floor", "ceil"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (1, 2, 10, 37)], ids=["narrow", "wide"])
@pytest.mark.parametrize("max_rows", [True, False], ids=["max-on-row-vectors", "phases"])
def test_pools_match_their_definitions(ceil_mode: bool, columns: int, shape, max_rows: bool,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Every window shape, stride, padding (asymmetric too) and dilation; values over 60
    binades with a NaN and infinities; windows wholly in the padding or the overhang;
    output rows as wide as the plane's stride phases, or narrower (no right padding);
    max pooling on the AVX-512 row vectors where they run (planes of one vector of
    output pixels a row, and of several), or on the phase layout."""
    monkeypatch.setattr(kernels, "POOL_COLUMNS", columns)  # an output row at a time, or all
    monkeypatch.setattr(kernels, "POOL_OUTPUTS", 0)  # the kernel even for one output
    if not max_rows:
        monkeypatch.setattr(_fma_rows, "maxpool_fits", lambda geom, out_h: False)
    rng = np.random.default_rng(int(ceil_mode))
    x = (rng.standard_normal(shape) * 2.0 ** rng.integers(-30, 30, shape)).astype(np.float32)
    x[0, 0, 1, 2], x[-1, 1, 4, 4], x[-1, 1, 0, 0] = np.nan, np.inf, -np.inf
    x[0, 1, 5, 6:9] = [0.0, -0.0, 0.0]
    checked = 0
    with np.errstate(all="ignore"):
        for k, s, p, d in GEOMETRIES:
            geom = ConvGeometry(k, s, p, d)
            oh, ow = geom.output_hw(*shape[2:], ceil_mode)
            if oh <= 0 or ow <= 0:
                continue
            assert _same(kernels.maxpool(x, geom, ceil_mode),
                         kernels.maxpool_reference(x, geom, ceil_mode)), (k, s, p, d)
            for include in (False, True):
                assert _same(kernels.avgpool(x, geom, ceil_mode, include),
                             kernels.avgpool_reference(x, geom, ceil_mode, include)), \
                    (k, s, p, d, include)
            checked += 1
    assert checked > 100


def test_signed_zeros_pool_as_their_definitions() -> None:
    """The float64 sum of a window starts at +0.0, as numpy's reduction over it does: a
    window of -0.0 averages to +0.0. Max pooling of mixed zeros keeps numpy's pick."""
    x = np.full((1, 2, 6, 6), -0.0, np.float32)
    x[0, 1, ::2] = 0.0
    for pads in [(0, 0, 0, 0), (1, 1, 1, 1)]:
        for k in [(3, 3), (2, 2), (1, 1)]:
            geom = ConvGeometry(k, (1, 1), pads if k[0] > 1 else (0, 0, 0, 0))
            assert _same(kernels.avgpool(x, geom), kernels.avgpool_reference(x, geom))
            assert _same(kernels.maxpool(x, geom), kernels.maxpool_reference(x, geom))


@pytest.mark.parametrize("hw", [(1, 1), (1, 7), (2, 4), (3, 3), (1, 127), (8, 16), (1, 129),
                                (7, 7), (14, 14), (25, 40), (112, 112)])
def test_global_average_matches_numpy_mean(hw: tuple[int, int]) -> None:
    """numpy's float64 mean (from +0.0, pairwise in blocks of 128, eight running sums),
    rounded to fp32: signed zeros, NaN, infinities of both signs, values far apart in
    magnitude, a batch of two; the threads sharing the planes."""
    rng = np.random.default_rng(hw[0] * 1000 + hw[1])
    x = (rng.standard_normal((2, 9, *hw))
         * 10.0 ** rng.integers(-30, 30, (2, 9, 1, 1))).astype(np.float32)
    x[0, 0] = -0.0
    x[0, 1] = 0.0
    x[0, 2].flat[-1] = np.nan
    x[0, 3].flat[0] = np.inf
    x[0, 4].flat[0], x[0, 4].flat[-1] = np.inf, -np.inf
    x[1, 0].flat[::2] = 3e38
    x[1, 1] = -1e-45
    got = kernels.global_avgpool(x)
    with np.errstate(invalid="ignore"):  # inf - inf
        assert _same(got, kernels.global_avgpool_reference(x))
    assert got.shape == (2, 9, 1, 1)
