# SPDX-License-Identifier: Apache-2.0
"""The 8-bit dot-product kernels (npusim.simulator._vnni) against the block products of the
golden model, bit for bit: every block length the formats use, a short single block, scale
products outside fp32's normal range (the float64 rows), NaN scales, several column
chunks. On a CPU without AVX-512 VNNI only the gate is tested (the kernels are never
compiled there; ``tests/simulator/test_fast_gemm.py`` runs the portable ones)."""

from __future__ import annotations

import numba
import numpy as np
import pytest

from npusim.simulator import _fast_gemm, _vnni, cpu
from npusim.simulator.gemm import taps
from npusim.simulator.kernels import ConvGeometry

needs_vnni = pytest.mark.skipif(not _vnni.AVAILABLE, reason="the CPU has no AVX-512 VNNI")


def reference(xm: np.ndarray, wm: np.ndarray, sx: np.ndarray, sw: np.ndarray) -> np.ndarray:
    """``out[r, m] = sum_j fp32(P_j[r, m] * sw[r, j] * sx[j, m])`` in block order from 0, each
    step rounded once (Python-exact integer products, float64 scale products)."""
    nblocks = xm.shape[0]
    out = np.zeros((wm.shape[0], xm.shape[2]), np.float32)
    with np.errstate(all="ignore"):
        for j in range(nblocks):
            p = (wm[:, j].astype(np.int64) @ xm[j].astype(np.int64)).astype(np.float64)
            term = (p * (sw[:, j:j + 1].astype(np.float64) * sx[j][None].astype(np.float64)))
            out = (out.astype(np.float64) + term.astype(np.float32)).astype(np.float32)
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    nan = np.isnan(a)
    return bool(np.array_equal(nan, np.isnan(b))
                and np.array_equal(a[~nan].view(np.int32), b[~nan].view(np.int32)))


def run(xm, wm, sx, sw, quads):
    """The kernel's result for mantissas ``xm [J, B, M]``, ``wm [R, J, B]``."""
    nblocks, block, m = xm.shape
    rows = wm.shape[0]
    w, c, t = _vnni.pack_weights(wm.reshape(rows, -1).astype(np.int8), sw, block, quads)
    width = -(-m // _vnni.LANES) * _vnni.LANES
    x = np.full((nblocks, quads, width, 4), 128, np.uint8)
    x[:, :, :m] = (xm[:, :quads * 4] + 128).reshape(nblocks, quads, 4, m).transpose(0, 1, 3, 2)
    s = np.full((nblocks, width), np.nan, np.float32)
    s[:, :m] = sx
    out = np.empty((w.shape[0], width), np.float32)
    _vnni.product(x, w, c, t, s, 0, w.shape[0], out)
    return out[:rows, :m]


@needs_vnni
@pytest.mark.parametrize("block,nblocks,rows,cols", [
    (4, 3, 8, 16), (8, 5, 13, 40), (16, 9, 21, 33), (32, 4, 16, 70), (128, 2, 9, 17),
    (16, 256, 10, 80),  # K of 4096: the columns come in chunks of 32
])
@pytest.mark.parametrize("scales", ["normal", "extreme", "nan"])
def test_product_matches_reference(block: int, nblocks: int, rows: int, cols: int,
                                   scales: str) -> None:
    rng = np.random.default_rng(block + nblocks + rows)
    xm = rng.integers(-127, 128, (nblocks, block, cols))
    wm = rng.integers(-127, 128, (rows, nblocks, block))
    wm[rows // 2, 1] = 0
    lo, hi = (-20, 20) if scales != "extreme" else (-140, 110)
    sx = 2.0 ** rng.integers(lo, hi, (nblocks, cols))
    sw = 2.0 ** rng.integers(lo, hi, (rows, nblocks))
    if scales == "nan":
        sx[1, 3] = np.nan
        sw[rows - 1, 0] = np.nan
    sx, sw = sx.astype(np.float32), sw.astype(np.float32)
    assert same_bits(run(xm, wm, sx, sw, block // 4), reference(xm, wm, sx, sw))


@needs_vnni
def test_short_block_keeps_its_quads() -> None:
    """A single block of 128 (ms-fp8/9) over K = 27 is cut to 7 quads, its zero padding
    left out of the product."""
    rng = np.random.default_rng(0)
    xm = np.zeros((1, 128, 20), np.int64)
    wm = np.zeros((5, 1, 128), np.int64)
    xm[:, :27] = rng.integers(-3, 4, (1, 27, 20))
    wm[:, :, :27] = rng.integers(-3, 4, (5, 1, 27))
    sx = np.float32(2.0) ** rng.integers(-5, 5, (1, 20)).astype(np.float32)
    sw = np.float32(2.0) ** rng.integers(-5, 5, (5, 1)).astype(np.float32)
    assert same_bits(run(xm, wm, sx, sw, 7), reference(xm, wm, sx, sw))


@needs_vnni
@pytest.mark.parametrize("block,mbits", [(16, 7), (32, 7), (128, 2), (16, 3)])
def test_quantizer_layout_matches_the_float_one(block: int, mbits: int) -> None:
    """The quantizer of the kernel's layout gives the mantissas and scales of
    :func:`npusim.simulator._fast_gemm.im2col_quantize`, offset by 128, in quads."""
    rng = np.random.default_rng(block)
    geom = ConvGeometry((3, 3), (2, 1))
    xp = (rng.standard_normal((11, 9, 12)) * 2.0 ** rng.integers(-20, 20, (11, 1, 1))
          ).astype(np.float32)
    xp[2, 3, 4] = np.nan
    tp = taps(geom.kernel, 11, geom.dilations)
    emin, emax = (-127, 127) if mbits != 2 else (-15, 15)
    rows, ow = (1, 4), 10
    q, sa = _fast_gemm.im2col_quantize(xp, tp, rows, ow, geom.strides, block, mbits, emin,
                                       emax, short=block > 99)
    quads = -(-q.shape[1] // 4)  # a short block of 128 comes as its 99 rows: 25 quads
    x, s = _vnni.im2col_quantize(xp, tp, rows, ow, geom.strides, block, mbits, emin, emax,
                                 quads)
    n = (rows[1] - rows[0]) * ow
    assert x.shape == (q.shape[0], quads, 32, 4) and s.shape == (q.shape[0], 32)
    got = x.astype(np.int32).transpose(0, 1, 3, 2).reshape(q.shape[0], quads * 4, 32) - 128
    want = np.zeros_like(got)
    want[:, :min(q.shape[1], quads * 4), :n] = q[:, :quads * 4, :n]
    assert np.array_equal(got, want)
    assert same_bits(s[:, :n], sa[:, :n]) and np.isnan(s[:, n:]).all()


def test_gate_follows_the_target_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Off when asked, and when numba compiles for a named CPU without the instruction
    (LLVM could not lower it: the process would abort)."""
    vnni = ("avx512f", "avx512bw", "avx512vnni")
    monkeypatch.setattr(numba.config, "CPU_NAME", "generic")
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "")
    assert not cpu.host_has(*vnni)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx512f,+avx512bw")
    assert not cpu.host_has(*vnni)
    monkeypatch.setattr(numba.config, "CPU_FEATURES", "+avx512f,+avx512bw,+avx512vnni")
    assert cpu.host_has(*vnni)
    monkeypatch.setattr(_vnni, "AVAILABLE", False)
    assert not _vnni.supports(16, 7)
    monkeypatch.setattr(_vnni, "AVAILABLE", True)
    assert _vnni.supports(16, 7) and _vnni.supports(128, 2) and not _vnni.supports(16, 8)
    assert not _vnni.supports(6, 3)
