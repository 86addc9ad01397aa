# SPDX-License-Identifier: Apache-2.0
"""The fp32 direct-convolution kernel (npusim.simulator._fma) against float64 sums: the
phase layout, the weights' order, chunks of K, row and column tiles, a 1x1 read in place
with its last tile past the input's end. fp32 mode's sums have no fixed order
(``docs/numerics.md``), so these compare with a tolerance; on a CPU without AVX-512 only
the gate is tested (the kernel is never compiled there)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from npusim.simulator import _fma, conv_shares, cpu, gemm
from npusim.simulator.kernels import ConvGeometry
from npusim.simulator.numerics import get_format

FP32 = get_format("fp32")

needs_fma = pytest.mark.skipif(not _fma.AVAILABLE, reason="the CPU has no AVX-512")


def close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * max(1.0, np.abs(want).max()))


@needs_fma
@pytest.mark.parametrize("rows,k,m,kc", [(8, 1, 48, 1), (16, 37, 96, 5), (24, 300, 144, 64),
                                         (8, 9, 480, 9)])
def test_product_is_the_matrix_product(rows: int, k: int, m: int, kc: int) -> None:
    """Rows of K at arbitrary offsets (koff), weights packed by row tile, every chunk size
    (the tiles add to what the earlier chunks left), a column range inside the output."""
    rng = np.random.default_rng(k)
    x = rng.standard_normal((k, 2 * m + 50)).astype(np.float32)
    shift = rng.integers(0, 50, k)
    koff = ((np.arange(k) * x.shape[1] + shift) * 4).astype(np.int64)
    wf = rng.standard_normal((rows, k)).astype(np.float32)
    w = _fma.pack_weights(wf, 1)
    cols = np.stack([x[i, shift[i] + m // 2:shift[i] + m // 2 + m] for i in range(k)])
    out = np.full((rows, m), np.nan, np.float32)
    _fma.product(x, koff, w, m // 2, m // 2 + m, 0, rows, kc, out)
    close(out, wf.astype(np.float64) @ cols.astype(np.float64))
    half = np.full((8, m), np.nan, np.float32)  # one row tile of several
    _fma.product(x, koff, w, m // 2, m // 2 + m, rows - 8, rows, kc, half)
    close(half, out[rows - 8:])


@needs_fma
@pytest.mark.parametrize("n", [47, 48, 100, 5])
def test_product_inplace_reads_nothing_past_the_input(n: int) -> None:
    """A 1x1 product read in place: the last tile, which would read past ``N``, reads a
    zero-padded copy; any range of columns."""
    rng = np.random.default_rng(n)
    x = rng.standard_normal((20, n)).astype(np.float32)
    wf = rng.standard_normal((16, 20)).astype(np.float32)
    w = _fma.pack_weights(wf, 1)
    for m0, m1 in ((0, n), (n // 3, n), (0, max(1, n // 2))):
        tiles = -(-(m1 - m0) // _fma.COLUMNS) * _fma.COLUMNS
        out = np.full((16, tiles), np.nan, np.float32)
        _fma.product_inplace(x, w, m0, m1, 0, 16, 7, out)
        close(out[:, :m1 - m0], wf.astype(np.float64) @ x[:, m0:m1].astype(np.float64))


def test_pack_weights_reorders_k_by_channel() -> None:
    """K in (taps, C) order becomes (C, taps), rows interleaved by tile, padded with 0."""
    wf = np.arange(10 * 6, dtype=np.float32).reshape(10, 6)  # 3 taps x 2 channels
    w = _fma.pack_weights(wf, 3)
    assert w.shape == (2, 6, _fma.ROWS)
    for r in range(10):
        for t in range(3):
            for c in range(2):
                assert w[r // _fma.ROWS, c * 3 + t, r % _fma.ROWS] == wf[r, t * 2 + c]
    assert not w[1, :, 10 - _fma.ROWS:].any()


def test_phases_lay_out_each_stride_phase() -> None:
    """Phase (py, px) of a padded plane at its place, rows of wq, zeros past the plane."""
    xp = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7) + 1
    hq, wq = 3, 3
    x = np.full((2, 6 * hq * wq + 6), np.nan, np.float32)
    _fma.phases(xp, 2, 3, hq, wq, 0, 2, x)
    for c in range(2):
        for py in range(2):
            for px in range(3):
                base = (py * 3 + px) * hq * wq
                got = x[c, base:base + hq * wq].reshape(hq, wq)
                want = np.zeros((hq, wq), np.float32)
                sub = xp[c, py::2, px::3]
                want[:sub.shape[0], :sub.shape[1]] = sub
                assert np.array_equal(got, want)
        assert not x[c, 6 * hq * wq:].any()


@needs_fma
@pytest.mark.parametrize("geom,hw", [
    (ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1)), (12, 13)),
    (ConvGeometry((3, 2), (2, 3), (2, 0, 1, 3), (2, 1)), (15, 17)),
    (ConvGeometry((1, 1)), (9, 11)),
    (ConvGeometry((1, 1), (2, 2)), (9, 11)),
    (ConvGeometry((7, 7), (2, 2), (3, 3, 3, 3)), (22, 22)),
])
def test_conv_fma_matches_blas(geom: ConvGeometry, hw: tuple[int, int],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole convolution on the kernel (any share of wanted pixels) against the same
    convolution on im2col and BLAS, with a bias and a residual, split between threads."""
    rng = np.random.default_rng(hw[0])
    x = rng.standard_normal((1, 19, *hw)).astype(np.float32)
    w = rng.standard_normal((21, 19 * geom.kernel[0] * geom.kernel[1])).astype(np.float32)
    bias = rng.standard_normal(21).astype(np.float32)
    monkeypatch.setattr(conv_shares, "SHARE_MACS", dict.fromkeys(conv_shares.SHARE_MACS, 1))
    monkeypatch.setattr(gemm, "FMA_USEFUL", 0.0)
    got = gemm.conv2d(x, w, geom, FP32, bias=bias, relu=True)
    monkeypatch.setattr(_fma, "AVAILABLE", False)
    close(got, gemm.conv2d(x, w, geom, FP32, bias=bias, relu=True))


def test_gate_follows_the_target_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled only for a CPU with AVX-512 (LLVM would split the vectors and spill
    elsewhere), as numba's named target CPU says."""
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "")
    assert not cpu.host_has("avx512f")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx512f")
    assert cpu.host_has("avx512f")
    assert not cpu.host_has("avx512f", "avx512dq")  # the block-format row kernel's need
    monkeypatch.setattr(_fma, "AVAILABLE", False)
    assert not gemm._fma_ok(ConvGeometry((3, 3)), (56, 56), (1, 58, 58))


@needs_fma
def test_one_weight_array_in_two_layouts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The packed weights are kept per array and per layout: the same [O, 18] array as a
    3x3 of two channels and as a 1x1 of eighteen gives each its own product."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 18)).astype(np.float32)
    monkeypatch.setattr(gemm, "FMA_USEFUL", 0.0)
    cases = [(rng.standard_normal((1, 2, 9, 9)).astype(np.float32),
              ConvGeometry((3, 3), (1, 1), (1, 1, 1, 1))),
             (rng.standard_normal((1, 18, 9, 9)).astype(np.float32), ConvGeometry((1, 1)))]
    got = [gemm.conv2d(x, w, geom, FP32) for x, geom in cases]
    monkeypatch.setattr(_fma, "AVAILABLE", False)
    for (x, geom), y in zip(cases, got):
        close(y, gemm.conv2d(x, w, geom, FP32))
