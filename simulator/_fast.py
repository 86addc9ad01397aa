# SPDX-License-Identifier: Apache-2.0
"""numba kernels with the same contract as their numpy references in ``numerics``.

A differential test (``tests/simulator/test_numerics.py``) runs each against its
reference over every format; the simulator uses these by default. Kernels are
compiled on first call (and cached on disk), never at import.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, parallel=True)
def _accumulate(partials, a_scale, w_scale, out):  # pragma: no cover - compiled
    nblocks, rows, cols = partials.shape
    for n in numba.prange(rows):
        for o in range(cols):
            acc = np.float32(0.0)
            for j in range(nblocks):
                d = np.float32(np.float64(partials[j, n, o]) * a_scale[n, j] * w_scale[o, j])
                acc = np.float32(acc + d)
            out[n, o] = acc


def accumulate_blocks(partials: np.ndarray, a_scale: np.ndarray,
                      w_scale: np.ndarray) -> np.ndarray:
    """numba version of :func:`simulator.numerics.accumulate_blocks_reference`."""
    out = np.empty(partials.shape[1:], dtype=np.float32)
    _accumulate(np.ascontiguousarray(partials, dtype=np.float32),
                np.ascontiguousarray(a_scale, dtype=np.float64),
                np.ascontiguousarray(w_scale, dtype=np.float64), out)
    return out


ROWS_PER_STEP = 4
"""Activation rows per step of the fused kernel: each weight load feeds four FMAs."""


@numba.njit(cache=True, parallel=True)
def _bfp_gemm(aq, a_scale, wt, w_scale_t, out):  # pragma: no cover - compiled
    # aq [N, J*B] int8; wt [J, B, O] float32 mantissas; w_scale_t [J, O]; out [N, O].
    # The integer block dot is summed in fp32, exact: |p| < 2**24 for every format.
    nblocks, block, cols = wt.shape
    rows = aq.shape[0]
    steps = (rows + ROWS_PER_STEP - 1) // ROWS_PER_STEP
    for step in numba.prange(steps):
        n0 = step * ROWS_PER_STEP
        nr = min(ROWS_PER_STEP, rows - n0)
        acc = np.zeros((ROWS_PER_STEP, cols), np.float32)
        part = np.empty((ROWS_PER_STEP, cols), np.float32)
        a = np.zeros(ROWS_PER_STEP, np.float32)
        for j in range(nblocks):
            part[:, :] = 0.0
            base = j * block
            for b in range(block):
                for r in range(nr):
                    a[r] = np.float32(aq[n0 + r, base + b])
                a0, a1, a2, a3 = a[0], a[1], a[2], a[3]
                if a0 == 0.0 and a1 == 0.0 and a2 == 0.0 and a3 == 0.0:
                    continue
                for o in range(cols):
                    w = wt[j, b, o]
                    part[0, o] += a0 * w
                    part[1, o] += a1 * w
                    part[2, o] += a2 * w
                    part[3, o] += a3 * w
            for r in range(nr):
                sa = a_scale[n0 + r, j]
                for o in range(cols):
                    acc[r, o] = np.float32(acc[r, o] + np.float32(np.float64(part[r, o]) * sa
                                                                   * w_scale_t[j, o]))
        for r in range(nr):
            out[n0 + r, :] = acc[r]


def bfp_gemm(aq: np.ndarray, a_scale: np.ndarray, wt: np.ndarray,
             w_scale_t: np.ndarray) -> np.ndarray:
    """Fused block dot products and accumulation; same result as the reference path."""
    out = np.empty((aq.shape[0], wt.shape[2]), dtype=np.float32)
    _bfp_gemm(np.ascontiguousarray(aq), np.ascontiguousarray(a_scale, dtype=np.float64),
              wt, np.ascontiguousarray(w_scale_t, dtype=np.float64), out)
    return out


@numba.njit(cache=True, parallel=True)
def _quantize_rne(x, block, mbits, emin, emax, bias, nan_exp, q, exps):  # pragma: no cover
    rows, width = x.shape
    nblocks = width // block
    max_m = (1 << mbits) - 1
    for r in numba.prange(rows):
        for j in range(nblocks):
            amax = 0.0
            finite = True
            for b in range(block):
                v = np.float64(x[r, j * block + b])
                if math.isfinite(v):
                    amax = max(amax, abs(v))
                else:
                    finite = False
            if not finite:
                exps[r, j] = nan_exp
                for b in range(block):
                    q[r, j * block + b] = 0
                continue
            e = emin
            if amax > 0.0:
                e = math.frexp(amax)[1] - 1
                e = min(max(e, emin), emax)
            exps[r, j] = e + bias
            scale = math.ldexp(1.0, mbits - 1 - e)  # exact: a power of two in float64 range
            for b in range(block):
                v = np.float64(x[r, j * block + b])
                m = min(np.rint(abs(v) * scale), np.float64(max_m))
                mi = int(m)
                q[r, j * block + b] = -mi if v < 0 else mi


def quantize_rne(x2d: np.ndarray, block: int, mbits: int, emin: int, emax: int, bias: int,
                 nan_exp: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-even quantization of a padded ``[rows, nblocks * block]`` fp32 matrix."""
    rows, width = x2d.shape
    q = np.empty((rows, width), np.int8)
    exps = np.empty((rows, width // block), np.uint8)
    _quantize_rne(np.ascontiguousarray(x2d, dtype=np.float32), block, mbits, emin, emax, bias,
                  nan_exp, q, exps)
    return q, exps


@numba.njit(cache=True)
def _erf(x, out):  # pragma: no cover - compiled
    for k in range(x.size):
        out[k] = math.erf(x[k])


def erf(x: np.ndarray) -> np.ndarray:
    """Element-wise ``erf`` in float64 (numpy has none; scipy is not a dependency)."""
    x = np.ascontiguousarray(x, dtype=np.float64)
    out = np.empty(x.shape, np.float64)
    _erf(x.reshape(-1), out.reshape(-1))
    return out
