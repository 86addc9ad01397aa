# SPDX-License-Identifier: Apache-2.0
"""fp32 grouped convolutions, all groups in one call, on the register tiles of
:mod:`npusim.simulator._fma`.

The input is laid out once in the planes of the stride's phases for every channel
(:func:`npusim.simulator._fma.phases`); a group's channels are ``cg`` consecutive rows of
that layout, so one table of row offsets ``koff`` (a group's ``(c, tap)`` rows) serves every
group, each from its own base ``g * gbytes``. Each group's output channels are padded to
whole row tiles of ``rows`` (8, or 4 for groups of at most 4 outputs: RegNet's groups of
8 fill a tile, ResNeXt's of 4 half a tile of 8), so that no tile mixes groups; a tile's
sums stay in registers through all of its group's ``K``, which is short (``cg`` times the
window). Narrow planes take tiles of one or two vectors of pixels (a 7x7 plane is 63
pixels at the phases' width: 4 vectors, against 6 for tiles of 3)."""

from __future__ import annotations

import numba
import numpy as np

from npusim.simulator._fma import LANES, _row_tile

_t8x3, _t8x1, _t4x6, _t4x2 = (_row_tile(r, v) for r, v in ((8, 3), (8, 1), (4, 6), (4, 2)))


def tile_rows(og: int) -> int:
    """Rows of a tile for groups of ``og`` output channels."""
    return 4 if og <= 4 else 8


@numba.njit(cache=True)
def tile_lanes(rows: int, wide: bool) -> int:  # pragma: no cover - compiled
    """Pixels of a tile of ``rows`` rows, wide or narrow."""
    return LANES * ((3 if wide else 1) if rows == 8 else (6 if wide else 2))


@numba.njit(cache=True, nogil=True)
def product(X, koff, gbytes, tpg, W, m0, m1, t0, t1, wide, kc, out):  # pragma: no cover
    """``out[(t - t0) * R + r, m - m0] = sum_k W[t, k, r] * X.flat[(g * gbytes + koff[k])
    / 4 + m]`` for the row tiles ``t0 <= t < t1`` (tile ``t`` of group ``g = t // tpg``,
    ``R = W.shape[2]`` rows) and the columns ``m0 <= m < m1`` in tiles of
    :func:`tile_lanes` pixels (``out`` as wide as those tiles; ``X`` readable that far);
    ``kc`` rows of ``K`` at a time (a tile's weights of a chunk stay in L1)."""
    nk, rows = W.shape[1], W.shape[2]
    xa, ka, wa = np.intp(X.ctypes.data), np.intp(koff.ctypes.data), np.intp(W.ctypes.data)
    oa, orow = np.intp(out.ctypes.data), np.intp(out.strides[0])
    step = tile_lanes(rows, wide)
    for k0 in range(0, nk, kc):
        n, kp = min(nk, k0 + kc) - k0, ka + k0 * 8
        for t in range(t0, t1):
            xg = xa + (t // tpg) * gbytes
            w = wa + (t * nk + k0) * rows * 4
            o = oa + (t - t0) * rows * orow - m0 * 4
            for i in range(m0, m1, step):
                if rows == 8:
                    if wide:
                        _t8x3(xg + i * 4, kp, w, n, o + i * 4, orow, k0)
                    else:
                        _t8x1(xg + i * 4, kp, w, n, o + i * 4, orow, k0)
                elif wide:
                    _t4x6(xg + i * 4, kp, w, n, o + i * 4, orow, k0)
                else:
                    _t4x2(xg + i * 4, kp, w, n, o + i * 4, orow, k0)


def pack(wf: np.ndarray, groups: int, taps: int) -> np.ndarray:
    """``W [G * tpg, K_g, R]`` of the float32 weights ``wf [O, K_g]`` (``K_g`` in
    ``(taps, C_g)`` order) of a convolution in ``groups`` groups: each group's ``K_g`` in
    ``(C_g, taps)`` order and its output channels padded with zeros to ``tpg`` whole row
    tiles of ``R = tile_rows(og)``."""
    o, k = wf.shape
    og = o // groups
    rows = tile_rows(og)
    tpg = -(-og // rows)
    w = np.zeros((groups, tpg * rows, k), np.float32)
    w[:, :og] = wf.reshape(groups, og, taps, k // taps).transpose(0, 1, 3, 2).reshape(
        groups, og, k)
    return np.ascontiguousarray(
        w.reshape(groups * tpg, rows, k).transpose(0, 2, 1))
