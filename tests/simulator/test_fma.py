# SPDX-License-Identifier: Apache-2.0
"""The fp32 direct-convolution kernel (npusim.simulator._fma) against float64 sums: the
phase layout, the weights' order, chunks of K, row and column tiles; and its 1x1 tiles
read in place and written into the planes with the epilogue
(npusim.simulator._fma_pointwise). fp32 mode's sums have no fixed order
(``docs/numerics.md``), so these compare with a tolerance (the epilogue's steps on them,
bit for bit); on a CPU without AVX-512 only the gate is tested (the kernel is never
compiled there)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from npusim.simulator import _fma, _fma_pointwise, conv_shares, cpu, gemm
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


def _epilogue(s, bias=None, res=None, relu=False, clip=None):
    """numpy's fp32 steps of the epilogue on bare sums ``s [O, N]``."""
    v = s.copy()
    if bias is not None:
        v = v + bias[:, None]
    if res is not None:
        v = v + res
    if relu:
        v = np.where(v <= 0, np.float32(0), v)
    if clip is not None:
        v = np.where(v < clip[0], clip[0], v)
        v = np.where(v > clip[1], clip[1], v)
    return v.astype(np.float32)


@needs_fma
@pytest.mark.parametrize("c,o,n,kc", [(20, 16, 47, 7), (3, 21, 48, 3), (70, 9, 500, 32),
                                      (16, 96, 1000, 16), (1, 8, 5, 1)])
def test_pointwise_writes_the_output_with_its_epilogue_and_nothing_else(
        c: int, o: int, n: int, kc: int) -> None:
    """A 1x1 product read in place straight into the planes: the sums within fp32 of
    float64's over any chunks of K, any rows and pixels; each epilogue the bits of numpy's
    steps on those sums (NaN and infinities in the residual); nothing written past the
    output's rows or pixels, in memory between its rows."""
    rng = np.random.default_rng(c * n)
    x = rng.standard_normal((c, n)).astype(np.float32)
    wf = rng.standard_normal((o, c)).astype(np.float32)
    w = _fma.pack_weights(wf, 1)
    rows = w.shape[0] * _fma.ROWS
    bias = np.zeros(rows, np.float32)
    bias[:o] = rng.standard_normal(o)
    res = rng.standard_normal((o, n)).astype(np.float32)
    res.flat[::7] = np.nan
    res.flat[1::11] = np.inf
    res.flat[2::13] = -np.inf
    none = np.empty((0, 0), np.float32)

    def run(flags, r=none, lo=0.0, hi=0.0, m=(0, n), rr=(0, rows)):
        big = np.full((o + 2, n + 40), np.nan, np.float32)  # rows 1...o, pixels 5...n + 5
        out = big[1:o + 1, 5:n + 5]
        if flags & _fma_pointwise.RESIDUAL:  # the residual's rows as far apart as out's
            rb = np.empty_like(big)
            rb[1:o + 1, 5:n + 5] = r
            r = rb[1:o + 1, 5:n + 5]
        _fma_pointwise.conv(x, w, *m, *rr, kc, 2 * _fma.COLUMNS, out, bias, r,
                            np.float32(lo), np.float32(hi), flags)
        outside = np.ones(big.shape, bool)
        outside[1 + rr[0]:1 + min(o, rr[1]), 5 + m[0]:5 + m[1]] = False
        assert np.isnan(big[outside]).all()
        return out[:, m[0]:m[1]]

    sums = run(0)
    close(sums, wf.astype(np.float64) @ x.astype(np.float64))
    same = [(_fma_pointwise.BIAS, {}, dict(bias=bias[:o])),
            (_fma_pointwise.BIAS | _fma_pointwise.RESIDUAL | _fma_pointwise.RELU,
             dict(r=res), dict(bias=bias[:o], res=res, relu=True)),
            (_fma_pointwise.RESIDUAL | _fma_pointwise.CLIP, dict(r=res, lo=-0.5, hi=6.0),
             dict(res=res, clip=(np.float32(-0.5), np.float32(6.0))))]
    for flags, args, steps in same:
        want = _epilogue(sums, **steps)
        assert np.array_equal(run(flags, **args).view(np.uint32), want.view(np.uint32))
    if n > _fma.COLUMNS:  # a range of pixels from a tile's start, one row tile
        m0 = _fma.COLUMNS
        got = run(0, m=(m0, n), rr=(rows - _fma.ROWS, rows))
        assert np.array_equal(got[rows - _fma.ROWS:], sums[rows - _fma.ROWS:, m0:])


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
