# SPDX-License-Identifier: Apache-2.0
"""The matrix unit's products of a few rows (a dense layer), with the golden result.

``a @ w.T`` for activations ``a [N, K]`` and quantized weights ``w [O, K]``: up to
``GEMV_ROWS`` rows, integer block products vectorized along the outputs from the weights
transposed (:func:`npusim.simulator._fast_gemm.gemv`); more rows, a 1x1 convolution over
N pixels (:mod:`npusim.simulator.gemm`). Two quantized operands (an activation product)
take the block partials by BLAS and their fused accumulation.
"""

from __future__ import annotations

import numpy as np

from npusim.simulator import _fast_gemm, threads
from npusim.simulator.conv_shares import grain
from npusim.simulator.gemm import _rows_per_step, conv2d, taps
from npusim.simulator.numerics import BfpTensor, block_scales
from npusim.simulator.weight_tiles import tiles as _tiles
from npusim.simulator.weight_tiles import weight_scales

GEMV_ROWS = 8
"""Products with at most this many activation rows read the int8 weights directly."""

SMALL_MACS = 1 << 18
"""A product of a few rows with at most this many multiply-adds runs whole in one
compiled call with its epilogue (:func:`small`): a squeeze-excite layer took 30-65 µs
inside a graph through the general path's steps, for under a microsecond of arithmetic."""


def small(a: np.ndarray, w: BfpTensor, bias: np.ndarray | None, residual: np.ndarray | None,
          relu: bool, clip: tuple[float, float] | None) -> np.ndarray | None:
    """``epilogue(a @ w.T)`` for fp32 ``a [N, K]`` and quantized ``w`` when the product is
    small (``N <= GEMV_ROWS``, at most ``SMALL_MACS``): the numbers of :func:`matmul` then
    :func:`npusim.simulator.kernels.epilogue`; else None."""
    n, k = a.shape
    o = w.q.shape[0]
    if n > GEMV_ROWS or n * o * k > SMALL_MACS or k != w.length:
        return None
    fmt = w.fmt
    tiles = _tiles(w)
    out = np.empty((n, o), np.float32)
    lo, hi = clip if clip is not None else (0.0, 0.0)
    _fast_gemm.dense_rows(np.ascontiguousarray(a, np.float32), tiles.transposed(w),
                          tiles.scales32(w, 1)[0], fmt.block_size, fmt.mantissa_bits,
                          fmt.emin, fmt.emax,
                          _NONE1 if bias is None else np.asarray(bias, np.float32),
                          _NONE2 if residual is None
                          else np.ascontiguousarray(residual, np.float32).reshape(n, o),
                          relu, clip is not None, np.float32(lo), np.float32(hi), out)
    return out


_NONE1, _NONE2 = np.zeros(0, np.float32), np.zeros((0, 0), np.float32)

def fp32_batched(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` in fp32 for ``a [batch, M, K]`` and ``b [batch or 1, K, N]``: one GEMM a
    batch, the threads sharing the batches (an attention layer's windows and heads: one
    product at a time from Python took Swin-T's 24 of them 63 ms)."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), np.float32)

    def share(i0: int, i1: int) -> None:
        np.matmul(a[i0:i1], b if b.shape[0] == 1 else b[i0:i1], out=out[i0:i1])

    threads.run(share, a.shape[0], grain=grain(a.shape[1] * a.shape[2] * b.shape[2], "blas"))
    return out


FP32_ROWS = 64
"""fp32 products of at least this many rows are shared between the threads (a
transformer's tokens): BLAS runs one thread per call in this process, so one call ran a
ConvNeXt's dense layers on one core, at about a third of onnxruntime's speed."""


def fp32(a: np.ndarray, w: np.ndarray, bias: np.ndarray | None, residual: np.ndarray | None,
         relu: bool, clip: tuple[float, float] | None) -> np.ndarray | None:
    """``epilogue(a @ w.T)`` for fp32 ``a [N, K]`` and ``w [O, K]`` when there are at least
    ``FP32_ROWS`` rows (else None): each thread a slice of rows (or of the outputs, when
    they outnumber the rows), its product by BLAS (fp32 sums have no fixed order) and
    the epilogue's fp32 steps on it in cache, those of
    :func:`npusim.simulator.kernels.epilogue`."""
    n, k = a.shape
    if n < FP32_ROWS:
        return None
    a = np.ascontiguousarray(a, np.float32)
    wt = np.asarray(w, np.float32).T
    o = wt.shape[1]
    out = np.empty((n, o), np.float32)
    b = None if bias is None else np.asarray(bias, np.float32)
    res = None if residual is None else np.asarray(residual, np.float32).reshape(n, o)

    def finish(y: np.ndarray, rows: slice, cols: slice) -> None:
        if b is not None:
            np.add(y, b[cols], out=y)
        if res is not None:
            np.add(y, res[rows, cols], out=y)
        if relu:
            np.maximum(y, np.float32(0), out=y)
        if clip is not None:
            np.minimum(np.maximum(y, np.float32(clip[0]), out=y), np.float32(clip[1]), out=y)

    if o > n:  # more weights than activations (ViT's 197 tokens by 768 x 3072): each
        def by_columns(c0: int, c1: int) -> None:  # thread reads its share of the weights
            y = out[:, c0:c1]
            np.matmul(a, wt[:, c0:c1], out=y)
            finish(y, slice(None), slice(c0, c1))

        threads.run(by_columns, o, grain=grain(n * k, "blas"))
        return out

    def by_rows(r0: int, r1: int) -> None:
        np.matmul(a[r0:r1], wt, out=out[r0:r1])
        finish(out[r0:r1], slice(r0, r1), slice(None))

    threads.run(by_rows, n, grain=grain(o * k, "blas"))
    return out


def _gemv(xq: np.ndarray, sa: np.ndarray, w: BfpTensor) -> np.ndarray:
    tiles = _tiles(w)
    wt, swt = tiles.transposed(w), tiles.scales32(w, 1)[0]
    o = w.q.shape[0]
    out = np.empty((xq.shape[0], o), np.float32)
    sa = np.ascontiguousarray(sa, np.float32)

    def share(o0: int, o1: int) -> None:
        _fast_gemm.gemv(xq, sa, wt, swt, o0, o1, out)

    threads.run(share, o, grain=grain(xq.shape[0] * w.q.shape[1], "direct"))
    return out


def _rows_product(q: np.ndarray, sa: np.ndarray, w: BfpTensor) -> np.ndarray:
    """``[N, O]`` from activations already as columns ``q [J, B, N]``, ``sa [J, N]``."""
    tiles = _tiles(w)
    mant, sw = tiles.mantissas(w, 1)[0], tiles.scales32(w, 1)[0]
    n = q.shape[2]
    out = np.empty((mant.shape[1], n), np.float32)
    step = _rows_per_step(mant.shape[0], mant.shape[1], 1)

    def share(n0: int, n1: int) -> None:
        for a in range(n0, n1, step):
            b = min(n1, a + step)
            _fast_gemm.accumulate_cols(np.matmul(mant, q[:, :, a:b]), sw,
                                       np.ascontiguousarray(sa[:, a:b]), out, a)

    threads.run(share, n, grain=grain(mant.shape[1] * w.q.shape[1]))
    return out.T


def matmul(a: np.ndarray, w: BfpTensor) -> np.ndarray:
    """``a @ w.T`` for fp32 ``a [N, K]`` and quantized ``w [O, K]``: ``[N, O]``."""
    fmt = w.fmt
    n, k = a.shape
    x = np.ascontiguousarray(a.T).reshape(k, 1, n)
    if n <= GEMV_ROWS:  # the mantissas as rows (an exact integer in each float32)
        q, sa = _fast_gemm.im2col_quantize(x, taps((1, 1), k, (1, 1)), (0, 1), n, (1, 1),
                                           fmt.block_size, fmt.mantissa_bits, fmt.emin,
                                           fmt.emax)
        return _gemv(q.transpose(2, 0, 1).reshape(n, -1), sa.T, w)
    # more rows: a 1x1 convolution over n pixels, whose kernels cut the work by output
    # rows or by pixels as the shape suits (a transformer's 197 x 768 -> 3072 in MSFP16
    # took 103 ms by pixels alone, 9 ms so), laid out as rows of up to ROW_PIXELS (the
    # quantizer reads each channel's row in one run) and zero pixels to fill the last
    from npusim.simulator.kernels import ConvGeometry

    h = -(-n // ROW_PIXELS)
    wd = -(-n // h)
    if h * wd == n:
        xp = x.reshape(1, k, h, wd)
    else:
        xp = np.zeros((1, k, h, wd), np.float32)
        xp.reshape(k, -1)[:, :n] = x.reshape(k, n)
    y = conv2d(xp, w, ConvGeometry((1, 1)), fmt)
    return y.reshape(w.q.shape[0], h * wd)[:, :n].T


ROW_PIXELS = 64
"""Pixels per row of a dense layer laid out as a convolution's plane."""


def matmul_quantized(a: BfpTensor, w: BfpTensor) -> np.ndarray:
    """``a @ w.T`` of two quantized operands (``a [N, K]``): ``[N, O]``."""
    n = a.q.shape[0]
    if n <= GEMV_ROWS:
        return _gemv(a.q, block_scales(a), w)
    b = a.fmt.block_size
    q = np.ascontiguousarray(a.q.reshape(n, -1, b).transpose(1, 2, 0), np.float32)
    sa = np.ascontiguousarray(block_scales(a).T, np.float32)
    return _rows_product(q, sa, w)


def matmul_batched(a: BfpTensor, w: BfpTensor) -> np.ndarray:
    """``a[i] @ w[i].T`` for quantized ``a [batch, M, K]`` and ``w [batch or 1, N, K]``:
    ``[batch, M, N]``, each the numbers of :func:`matmul_quantized`. An attention of many
    small heads or windows (Swin-T: 192 products of 49 x 32 x 49) is a few numpy calls
    and one compiled pass, not a product at a time."""
    batch, m, kp = a.q.shape
    shared, n = w.q.shape[0], w.q.shape[1]
    b = a.fmt.block_size
    j = kp // b
    q = np.ascontiguousarray(a.q.reshape(batch, m, j, b).transpose(0, 2, 3, 1), np.float32)
    sa = np.ascontiguousarray(block_scales(a).transpose(0, 2, 1), np.float32)  # [batch, J, M]
    mant = np.ascontiguousarray(w.q.reshape(shared, n, j, b).transpose(0, 2, 1, 3), np.float32)
    sw = np.ascontiguousarray(weight_scales(w).transpose(0, 2, 1), np.float32)  # [.., J, N]
    out = np.empty((batch, n, m), np.float32)

    def share(i0: int, i1: int) -> None:
        partials = np.matmul(mant if shared == 1 else mant[i0:i1], q[i0:i1])  # [.., J, N, M]
        _fast_gemm.accumulate_batch(partials, sw if shared == 1 else sw[i0:i1], sa[i0:i1],
                                    out[i0:i1])

    threads.run(share, batch, grain=grain(m * n * kp))
    return out.transpose(0, 2, 1)
