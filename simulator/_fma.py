# SPDX-License-Identifier: Apache-2.0
"""fp32 convolutions on the CPU's 512-bit fused multiply-adds, without im2col.

fp32 mode is a plain fp32 GEMM whose summation order is not bit-defined
(``docs/numerics.md``), so its convolutions may run as a direct kernel: the input is laid
out in the planes of the stride's phases (one copy, :func:`phases`), and tap ``t`` of
channel ``c`` of every output pixel ``m = oy * Wq + ox`` is then element
``offsets[t] + m`` of channel ``c``'s row, as in :func:`npusim.simulator.gemm._conv_planes`;
the output is made at the phases' width ``Wq`` and each row's last ``Wq - OW`` pixels are
dropped.

The operands, every array C-contiguous:

* ``X`` float32 ``[C, L]``: the phases of each channel, with room for the last tile's reach.
* ``koff`` int64 ``[K]``: the byte offset in ``X`` of row ``k = c * taps + t``
  (``(c * L + offsets[t]) * 4``): a channel's taps together, so that a chunk of ``K``
  reads few rows of ``X`` (the weights' own order is ``(t, c)``: :func:`pack_weights`
  reorders them).
* ``W`` float32 ``[R / ROWS, K, ROWS]``: the weights, a tile of ``ROWS`` output channels
  interleaved per ``k`` (rows padded with zeros to a multiple of ``ROWS``).
* ``out`` float32 ``[R, M]``: ``out[r, m] = sum_k W[r, k] * X.flat[koff[k] / 4 + m]``.

A tile of ``ROWS`` rows by ``COLUMNS`` pixels keeps its accumulators in 24 vector
registers through a chunk of ``K`` (broadcast weight times three vectors of pixels per
``k``); the chunks keep a tile's weights in L1 and its pixels in L2.

Compiled only where the CPU has AVX-512 (:data:`AVAILABLE`); elsewhere fp32 convolutions
take im2col and BLAS. ``NPUSIM_FMA=0`` turns it off.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from npusim.simulator.cpu import AVX512

ROWS = 8
"""Output channels per tile."""

LANES = 16
"""fp32 lanes of a vector register."""

VECTORS = 3
"""Vectors of pixels per tile: ``ROWS * VECTORS`` accumulators."""

COLUMNS = LANES * VECTORS
"""Pixels per tile."""

CHUNK_BYTES = 9 << 10
"""Bytes of a row tile's weights per chunk of ``K`` (they stay in L1 while the tile runs
over the chunk's columns)."""

AVAILABLE = os.environ.get("NPUSIM_FMA", "1") != "0" and AVX512
"""Whether the kernel may be compiled here."""

_I32, _F32 = ir.IntType(32), ir.FloatType()
_V16F = ir.VectorType(_F32, LANES)


def _splat(builder, value):
    undef = ir.Constant(_V16F, None)
    v = builder.insert_element(undef, value, ir.Constant(_I32, 0))
    return builder.shuffle_vector(v, undef, ir.Constant(ir.VectorType(_I32, LANES),
                                                        [0] * LANES))


@intrinsic
def _tile(typingctx, x, koff, w, nk, out, orow, accumulate):
    """One tile: ``ROWS`` rows of ``W`` against ``COLUMNS`` columns of ``X``, over ``nk``
    rows of ``K``. Byte addresses: ``x`` the tile's first column of ``X`` (row ``k`` at
    ``x + koff[k]``), ``koff`` the int64 table of the chunk's row offsets, ``w`` the row
    tile's packed weights of the chunk, ``out`` the tile's first output (rows ``orow``
    bytes apart); with ``accumulate``, the tile adds to what ``out`` holds."""
    sig = types.void(*([types.intp] * 7))

    def codegen(context, builder, signature, args):
        x, koff, w, nk, out, orow, accumulate = args
        intp = context.get_value_type(types.intp)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(_V16F, [_V16F, _V16F, _V16F]), "llvm.fma.v16f32")

        def const(n):
            return ir.Constant(intp, n)

        def at(addr, ty):
            return builder.inttoptr(addr, ty.as_pointer())

        def dst(r, v):
            return at(builder.add(out, builder.add(builder.mul(const(r), orow),
                                                   const(v * LANES * 4))), _V16F)

        zero = ir.Constant(_V16F, [0.0] * LANES)
        acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(VECTORS)]
               for _ in range(ROWS)]
        with builder.if_then(builder.icmp_signed("!=", accumulate, const(0))):
            for r in range(ROWS):
                for v in range(VECTORS):
                    builder.store(builder.load(dst(r, v), align=4), acc[r][v])
        with cgutils.for_range(builder, nk) as loop:
            k = loop.index
            base = builder.add(x, builder.load(at(builder.add(koff, builder.mul(k, const(8))),
                                                  intp)))
            xv = [builder.load(at(builder.add(base, const(v * LANES * 4)), _V16F), align=4)
                  for v in range(VECTORS)]
            wk = builder.add(w, builder.mul(k, const(ROWS * 4)))
            for r in range(ROWS):
                wv = _splat(builder, builder.load(at(builder.add(wk, const(r * 4)), _F32)))
                for v in range(VECTORS):
                    builder.store(builder.call(fma, [wv, xv[v], builder.load(acc[r][v])]),
                                  acc[r][v])
        for r in range(ROWS):
            for v in range(VECTORS):
                builder.store(builder.load(acc[r][v]), dst(r, v), align=4)
        return context.get_dummy_value()

    return sig, codegen


@numba.njit(cache=True, nogil=True)
def product(X, koff, W, m0, m1, r0, r1, kc, out):  # pragma: no cover - compiled
    """``out[r - r0, m - m0]`` for rows ``r0 <= r < r1`` (multiples of ``ROWS``) and the
    tiles of columns ``m0 <= m < m1`` (``out`` at least as wide as those tiles), ``kc``
    rows of ``K`` at a time."""
    nk = koff.size
    xa, ka, wa = np.intp(X.ctypes.data), np.intp(koff.ctypes.data), np.intp(W.ctypes.data)
    oa, orow = np.intp(out.ctypes.data), np.intp(out.strides[0])
    for k0 in range(0, nk, kc):
        n = min(nk, k0 + kc) - k0
        for ra in range(r0, r1, ROWS):
            w = wa + ((ra // ROWS) * nk + k0) * ROWS * 4
            for i in range(m0, m1, COLUMNS):
                _tile(xa + i * 4, ka + k0 * 8, w, n, oa + (ra - r0) * orow + (i - m0) * 4,
                      orow, k0)


@numba.njit(cache=True, nogil=True)
def product_inplace(X, W, m0, m1, r0, r1, kc, out):  # pragma: no cover - compiled
    """:func:`product` of a 1x1 convolution's input ``X [C, N]`` read in place
    (``koff[c] = c * N * 4``): the tile that would read past ``N`` reads a zero-padded
    copy of its columns instead."""
    c, n = X.shape
    koff = np.arange(c, dtype=np.int64) * (n * 4)
    tiles = min(-(-(m1 - m0) // COLUMNS), max(0, n - m0) // COLUMNS)  # wholly inside
    full = m0 + tiles * COLUMNS
    product(X, koff, W, m0, full, r0, r1, kc, out)
    if full < m1:  # one more tile, past the end of X
        tail = np.zeros((c, COLUMNS), np.float32)
        tail[:, :n - full] = X[:, full:n]
        product(tail, koff // n * COLUMNS, W, 0, COLUMNS, r0, r1, kc, out[:, full - m0:])


def chunk(k: int) -> int:
    """Rows of ``K`` per chunk: ``CHUNK_BYTES`` of a row tile's weights, in chunks of
    about equal size."""
    per = max(1, CHUNK_BYTES // (ROWS * 4))
    return -(-k // -(-k // per))


def pack_weights(wf: np.ndarray, taps: int) -> np.ndarray:
    """``W [R / ROWS, K, ROWS]`` of float32 weights ``wf [O, K]``, ``K`` in ``(taps, C)``
    order, in ``(C, taps)`` order (rows padded with zeros)."""
    o, k = wf.shape
    rows = -(-o // ROWS) * ROWS
    w = np.zeros((rows, k), np.float32)
    w[:o] = wf.reshape(o, taps, k // taps).transpose(0, 2, 1).reshape(o, k)
    return np.ascontiguousarray(w.reshape(rows // ROWS, ROWS, k).transpose(0, 2, 1))


@numba.njit(cache=True, nogil=True)
def phases(xp, sy, sx, hq, wq, c0, c1, X):  # pragma: no cover - compiled
    """Channels ``c0...c1`` of the padded input ``xp [C, Hp, Wp]`` into ``X [C, L]``: phase
    ``(py, px)`` at ``(py * sx + px) * hq * wq``, ``hq`` rows of ``wq``; zeros where a
    phase is past the plane and after the phases."""
    _, hp, wp = xp.shape
    for c in range(c0, c1):
        row = X[c]
        for py in range(sy):
            for px in range(sx):
                base = (py * sx + px) * hq * wq
                for y in range(hq):
                    dst = row[base + y * wq:base + (y + 1) * wq]
                    yy = y * sy + py
                    if yy >= hp:
                        dst[:] = 0.0
                        continue
                    src = xp[c, yy]
                    n = max(0, min(wq, -(-(wp - px) // sx)))
                    for i in range(n):
                        dst[i] = src[i * sx + px]
                    dst[n:] = 0.0
        row[sy * sx * hq * wq:] = 0.0
