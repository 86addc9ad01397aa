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

from npusim.simulator import threads


@numba.njit(cache=True)
def _accumulate(partials, a_scale, w_scale, out):  # pragma: no cover - compiled
    nblocks, rows, cols = partials.shape
    for n in range(rows):
        for o in range(cols):
            acc = np.float32(0.0)
            for j in range(nblocks):
                d = np.float32(np.float64(partials[j, n, o]) * a_scale[n, j] * w_scale[o, j])
                acc = np.float32(acc + d)
            out[n, o] = acc


def accumulate_blocks(partials: np.ndarray, a_scale: np.ndarray,
                      w_scale: np.ndarray) -> np.ndarray:
    """numba version of :func:`npusim.simulator.numerics.accumulate_blocks_reference`."""
    out = np.empty(partials.shape[1:], dtype=np.float32)
    _accumulate(np.ascontiguousarray(partials, dtype=np.float32),
                np.ascontiguousarray(a_scale, dtype=np.float64),
                np.ascontiguousarray(w_scale, dtype=np.float64), out)
    return out


@numba.njit(cache=True, nogil=True)
def _quantize_rne(x, block, mbits, emin, emax, bias, nan_exp, r0, r1, q,
                  exps):  # pragma: no cover - compiled
    width = x.shape[1]
    nblocks = width // block
    max_m = (1 << mbits) - 1
    for r in range(r0, r1):
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
    x2d = np.ascontiguousarray(x2d, dtype=np.float32)

    def share(r0: int, r1: int) -> None:
        _quantize_rne(x2d, block, mbits, emin, emax, bias, nan_exp, r0, r1, q, exps)

    threads.run(share, rows, grain=max(1, (1 << 18) // max(1, width)))
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
