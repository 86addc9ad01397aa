# SPDX-License-Identifier: Apache-2.0
"""The device's operations on whole tensors, built on the golden numerics.

The simulator's executor runs each instruction as one call here, and the
compiler's graph interpreter evaluates IR nodes with the same calls, so a
program and its graph agree bit for bit by construction; the tests check that
the program path (packing, memory plan, aliasing) keeps it so.

Activations are NCHW float32. A convolution is an im2col GEMM whose reduction
axis K is ordered ``(kh, kw, c)`` with the channel fastest, and the BFP blocks
run along that axis (see ``docs/numerics.md``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from npusim.simulator import (
    _fast,
    _fast_phases,
    _fma,
    _fma_rows,
    gemm,
    phase_layout,
    threads,
)
from npusim.simulator import dense as dense_layers
from npusim.simulator.numerics import (
    BfpTensor,
    Format,
    Rounding,
    accumulate_blocks_reference,
    bfp_matmul,
    matmul,
    quantize,
    quantize_reference,
)
from npusim.simulator.vector import (  # noqa: F401  (the vector unit's kernels, re-exported)
    ALU,
    PAD_MODES,
    UNARY_FUNCTIONS,
    alu,
    gather,
    move,
    move_span,
    norm,
    pad2d,
    reduce,
    resize,
    sigmoid_and_product,
    unary,
)


@dataclass(frozen=True)
class ConvGeometry:
    """Shape of a 2-D convolution or pooling window (ONNX semantics)."""

    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    """top, left, bottom, right"""
    dilations: tuple[int, int] = (1, 1)
    groups: int = 1
    input_dilation: tuple[int, int] = (1, 1)
    """(h, w): zeros between input pixels, ``in_dil - 1`` (a transposed convolution)"""

    def dilated_hw(self, h: int, w: int) -> tuple[int, int]:
        """Extent of the input with ``input_dilation`` applied."""
        return (h - 1) * self.input_dilation[0] + 1, (w - 1) * self.input_dilation[1] + 1

    def output_hw(self, h: int, w: int, ceil_mode: bool = False) -> tuple[int, int]:
        h, w = self.dilated_hw(h, w)
        rnd = (lambda a, b: -(-a // b)) if ceil_mode else (lambda a, b: a // b)
        eff_h = (self.kernel[0] - 1) * self.dilations[0] + 1
        eff_w = (self.kernel[1] - 1) * self.dilations[1] + 1
        oh = rnd(h + self.pads[0] + self.pads[2] - eff_h, self.strides[0]) + 1
        ow = rnd(w + self.pads[1] + self.pads[3] - eff_w, self.strides[1]) + 1
        if ceil_mode:  # ONNX: the last window must start inside the (left-padded) input
            if (oh - 1) * self.strides[0] >= h + self.pads[0]:
                oh -= 1
            if (ow - 1) * self.strides[1] >= w + self.pads[1]:
                ow -= 1
        return oh, ow


def _windows(x: np.ndarray, g: ConvGeometry, fill: float, out_hw: tuple[int, int]) -> np.ndarray:
    """Strided view ``[B, OH, OW, KH, KW, C]`` of the padded NHWC input."""
    b, c, h, w = x.shape
    oh, ow = out_hw
    kh, kw = g.kernel
    need_h = (oh - 1) * g.strides[0] + (kh - 1) * g.dilations[0] + 1
    need_w = (ow - 1) * g.strides[1] + (kw - 1) * g.dilations[1] + 1
    pad_b = max(need_h - h - g.pads[0], 0)
    pad_r = max(need_w - w - g.pads[1], 0)
    xp = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (g.pads[0], pad_b), (g.pads[1], pad_r), (0, 0)),
                constant_values=fill)
    sb, sh, sw, sc = xp.strides
    return np.lib.stride_tricks.as_strided(
        xp, (b, oh, ow, kh, kw, c),
        (sb, sh * g.strides[0], sw * g.strides[1], sh * g.dilations[0], sw * g.dilations[1], sc),
        writeable=False)


def _weight_rows(w: np.ndarray | BfpTensor, start: int, stop: int,
                 squeeze: bool = False) -> np.ndarray | BfpTensor:
    """Rows ``start:stop`` of the leading axis (``squeeze``: the single row, its axis dropped)."""
    if isinstance(w, BfpTensor):
        q, e = w.q[start:stop], w.exponents[start:stop]
        if squeeze:
            q, e = q[0], e[0]
        return BfpTensor(w.fmt, q, e, w.length)
    return w[start] if squeeze else w[start:stop]


def epilogue(y: np.ndarray, bias: np.ndarray | None, residual: np.ndarray | None,
             relu: bool, clip: tuple[float, float] | None = None) -> np.ndarray:
    """After the reduction: ``+ bias``, ``+ residual``, then ReLU, then the clip
    ``min(max(y, lo), hi)`` (exact, a NaN stays), each rounded to fp32."""
    if bias is not None:
        y = y + bias.astype(np.float32)
    if residual is not None:
        y = y + residual
    if relu:
        y = np.maximum(y, np.float32(0))
    if clip is not None:
        y = np.minimum(np.maximum(y, np.float32(clip[0])), np.float32(clip[1]))
    return y.astype(np.float32, copy=False)


def conv2d(x: np.ndarray, weight: np.ndarray | BfpTensor, bias: np.ndarray | None,
           geom: ConvGeometry, fmt: Format, residual: np.ndarray | None = None,
           relu: bool = False, rounding: Rounding = Rounding.NEAREST_EVEN,
           seed: int = 0, clip: tuple[float, float] | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """Convolution on the matrix unit; ``weight`` is ``[O, KH*KW*C/groups]``.

    The numbers are :func:`conv2d_reference`'s; nearest-even rounding runs the fast
    kernels of :mod:`npusim.simulator.gemm`, other roundings of those formats the
    reference itself. The MX minifloat formats run the reference's im2col GEMM with
    the numba quantizer and block products (:func:`numerics.bfp_matmul`). The fast
    kernels write into ``out`` when it is given (see :func:`npusim.simulator.gemm.conv2d`);
    the other paths return a new array, so the caller compares the result with ``out``.
    """
    if geom.input_dilation != (1, 1):
        x = _input_dilated(np.asarray(x, np.float32), geom)
        geom = dataclasses.replace(geom, input_dilation=(1, 1))
    if fmt.is_minifloat:
        return _im2col_conv(x, weight, bias, geom, fmt, residual, relu, rounding, seed, clip,
                            quantize, None)
    if (not fmt.is_fp32 and Rounding(rounding) != Rounding.NEAREST_EVEN) \
            or not gemm.supported(fmt):
        return conv2d_reference(x, weight, bias, geom, fmt, residual, relu, rounding, seed,
                                clip)
    return gemm.conv2d(x, weight, geom, fmt, bias, residual, relu, clip, out)


def _input_dilated(x: np.ndarray, geom: ConvGeometry) -> np.ndarray:
    """``x`` zero-stuffed by ``geom.input_dilation``, as the matrix unit's address
    generator does: the zeros stream through the array like any other pixel, and the BFP
    blocks and the accumulation order are those of an ordinary convolution over it."""
    if geom.input_dilation == (1, 1):
        return x
    dh, dw = geom.input_dilation
    stuffed = np.zeros((*x.shape[:2], *geom.dilated_hw(*x.shape[2:])), np.float32)
    stuffed[:, :, ::dh, ::dw] = x
    return stuffed


def conv2d_reference(x: np.ndarray, weight: np.ndarray | BfpTensor, bias: np.ndarray | None,
                     geom: ConvGeometry, fmt: Format, residual: np.ndarray | None = None,
                     relu: bool = False, rounding: Rounding = Rounding.NEAREST_EVEN,
                     seed: int = 0, clip: tuple[float, float] | None = None) -> np.ndarray:
    """The definition of the matrix unit's convolution, in plain numpy.

    An im2col GEMM per group: the patches ``[pixels, K]``, K ordered (kh, kw, c) within
    the group, are quantized along K (:func:`numerics.quantize_reference`) and multiplied
    by the group's weights (:func:`numerics.bfp_matmul` with the reference
    accumulation); in fp32, one fp32 GEMM per group.
    """
    return _im2col_conv(x, weight, bias, geom, fmt, residual, relu, rounding, seed, clip,
                        quantize_reference, accumulate_blocks_reference)


def _im2col_conv(x, weight, bias, geom: ConvGeometry, fmt: Format, residual, relu: bool,
                 rounding, seed: int, clip, quantizer, accumulate) -> np.ndarray:
    """:func:`conv2d_reference` with a given quantizer and block accumulation (the
    reference's, or the fast kernels with the same result)."""
    x = _input_dilated(np.asarray(x, np.float32), geom)
    geom = dataclasses.replace(geom, input_dilation=(1, 1))
    b, c, h, w_ = x.shape
    o = weight.shape[0]
    oh, ow = geom.output_hw(h, w_)
    g = geom.groups
    cg, og = c // g, o // g
    n = b * oh * ow
    patches = _windows(x, geom, 0.0, (oh, ow)).reshape(n, *geom.kernel, g, cg)
    a = np.ascontiguousarray(patches.transpose(3, 0, 1, 2, 4)).reshape(g, n, -1)
    qa = None if fmt.is_fp32 else quantizer(a, fmt, rounding, seed)
    cols = []
    for grp in range(g):
        wg = _weight_rows(weight, grp * og, (grp + 1) * og)
        if qa is None:
            cols.append(np.matmul(a[grp], np.asarray(wg, np.float32).T))
        else:
            cols.append(bfp_matmul(_weight_rows(qa, grp, grp + 1, squeeze=True), wg,
                                   accumulate=accumulate))
    y = np.concatenate(cols, axis=1).reshape(b, oh, ow, o).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(epilogue(y, bias[:, None, None] if bias is not None else None,
                                         residual, relu, clip))


def dense(x: np.ndarray, weight: np.ndarray | BfpTensor, bias: np.ndarray | None, fmt: Format,
          residual: np.ndarray | None = None, relu: bool = False,
          rounding: Rounding = Rounding.NEAREST_EVEN, seed: int = 0,
          clip: tuple[float, float] | None = None) -> np.ndarray:
    """``x @ weight.T + bias`` on the matrix unit for ``x`` ``[..., K]``."""
    lead = x.shape[:-1]
    if fmt.is_fp32 and not isinstance(weight, BfpTensor):
        y = dense_layers.fp32(x.reshape(-1, x.shape[-1]), weight, bias, residual, relu, clip)
        if y is not None:
            return y.reshape(*lead, -1)
    if (isinstance(weight, BfpTensor) and weight.fmt == fmt
            and Rounding(rounding) == Rounding.NEAREST_EVEN and gemm.supported(fmt)):
        y = dense_layers.small(x.reshape(-1, x.shape[-1]), weight, bias,
                         None if residual is None else residual.reshape(-1, weight.shape[0]),
                         relu, clip)
        if y is not None:
            return y.reshape(*lead, -1)
    y = matmul(x.reshape(-1, x.shape[-1]), weight, fmt, rounding, seed)
    return epilogue(y.reshape(*lead, -1), bias, residual, relu, clip)


def matmul_act(a: np.ndarray, b: np.ndarray, fmt: Format,
               rounding: Rounding = Rounding.NEAREST_EVEN, seed: int = 0) -> np.ndarray:
    """``a @ b`` of two activations on the matrix unit: ``a`` ``[batch, M, K]``, ``b``
    ``[batch or 1, K, N]`` -> ``[batch, M, N]`` fp32.

    ``b`` is the stationary operand: each ``b[i].T`` is quantized along K at run time,
    exactly as the compiler quantizes weights, and ``a``'s rows stream through it
    (:func:`numerics.matmul`), so the numerics are a dense layer's.
    """
    if fmt.is_fp32:  # one fp32 GEMM per batch (their sums have no fixed order), the
        return dense_layers.fp32_batched(a, b)  # batches shared between the threads
    if Rounding(rounding) == Rounding.NEAREST_EVEN and gemm.supported(fmt):
        wt = np.ascontiguousarray(np.swapaxes(b, 1, 2), np.float32)  # the whole batch at
        return dense_layers.matmul_batched(quantize(np.asarray(a, np.float32), fmt),
                                           quantize(wt, fmt))  # once, the same numbers
    out = np.empty((a.shape[0], a.shape[1], b.shape[2]), np.float32)
    for i in range(a.shape[0]):
        w = np.ascontiguousarray(b[i if b.shape[0] > 1 else 0].T, np.float32)
        out[i] = matmul(a[i], quantize(w, fmt, rounding, seed), fmt, rounding, seed)
    return out


POOL_OUTPUTS = 4
"""A pooling with at most this many outputs per plane (a window over the whole plane)
runs the numpy definition over every plane at once: the kernel's work per plane would be
mostly its own set-up."""


def maxpool(x: np.ndarray, geom: ConvGeometry, ceil_mode: bool = False) -> np.ndarray:
    """The vector unit's max pooling: :func:`maxpool_reference`'s numbers, by a numba
    kernel over each plane laid out in its stride phases (:func:`_pool_phases`)."""
    oh, ow = geom.output_hw(x.shape[2], x.shape[3], ceil_mode)
    if _fma.AVAILABLE and _fma_rows.maxpool_fits(geom, oh) and ow > 0:
        return _maxpool_rows(x, geom, (oh, ow))
    if oh * ow <= POOL_OUTPUTS:
        return maxpool_reference(x, geom, ceil_mode)
    return _pool_phases(x, geom, (oh, ow), average=False)


def _maxpool_rows(x: np.ndarray, geom: ConvGeometry, out_hw: tuple[int, int]) -> np.ndarray:
    """Max pooling of ``x [N, C, H, W]`` on :func:`npusim.simulator._fma_rows.maxpool`
    (vectors of output rows read in place); the threads share the planes."""
    n, c, h, w = x.shape
    oh, ow = out_hw
    planes = np.ascontiguousarray(x, np.float32).reshape(n * c, h, w)
    out = np.empty((n * c, oh * ow), np.float32)
    (k, _), (sy, sx), (dy, dx) = geom.kernel, geom.strides, geom.dilations

    def share(p0: int, p1: int) -> None:
        _fma_rows.maxpool(planes, k, sy, sx, dy, dx, *geom.pads[:2], oh, ow, p0, p1, out)

    threads.run(share, n * c, grain=max(1, (1 << 16) // (oh * ow * k * k)))
    return out.reshape(n, c, oh, ow)


def avgpool(x: np.ndarray, geom: ConvGeometry, ceil_mode: bool = False,
            count_include_pad: bool = False) -> np.ndarray:
    """The vector unit's average pooling: :func:`avgpool_reference`'s numbers, by a numba
    kernel over each plane laid out in its stride phases (:func:`_pool_phases`)."""
    oh, ow = geom.output_hw(x.shape[2], x.shape[3], ceil_mode)
    if oh * ow <= POOL_OUTPUTS:
        return avgpool_reference(x, geom, ceil_mode, count_include_pad)
    return _pool_phases(x, geom, (oh, ow), average=True, include_pad=count_include_pad)


def _pool_counts(hw: tuple[int, int], geom: ConvGeometry, out_hw: tuple[int, int],
                 include_pad: bool) -> np.ndarray:
    """Each average window's count ``[OH * OW]`` float64: its taps inside the input (or,
    with ``include_pad``, inside the declared padding; never the ceil-mode overhang), the
    product of its rows' and its columns' (as :func:`avgpool_reference` counts them)."""
    def axis(n: int, out: int, k: int, s: int, d: int, lo: int, hi: int) -> np.ndarray:
        pos = np.arange(out)[:, None] * s - lo + np.arange(k)[None] * d
        inside = (pos >= -lo) & (pos < n + hi) if include_pad else (pos >= 0) & (pos < n)
        return inside.sum(axis=1).astype(np.float64)
    pt, pl, pb, pr = geom.pads
    rows = axis(hw[0], out_hw[0], geom.kernel[0], geom.strides[0], geom.dilations[0], pt, pb)
    cols = axis(hw[1], out_hw[1], geom.kernel[1], geom.strides[1], geom.dilations[1], pl, pr)
    return (rows[:, None] * cols[None]).reshape(-1)


POOL_COLUMNS = 4096
"""Elements of the output rows (at the layout's pitch) pooled per step."""


def _pool_phases(x: np.ndarray, geom: ConvGeometry, out_hw: tuple[int, int], average: bool,
                 include_pad: bool = False) -> np.ndarray:
    """Max or average pooling of ``x [N, C, H, W]``, a plane at a time laid out in its
    stride phases (:func:`npusim.simulator.phase_layout.flat_layout`, wide: every tap of every
    output row is one run), by :func:`npusim.simulator._fast_phases.pool_flat`; the
    threads share the planes."""
    n, c, h, w = x.shape
    oh, ow = out_hw
    planes = np.ascontiguousarray(x, np.float32).reshape(n * c, h, w)
    out = np.empty((n * c, oh * ow), np.float32)
    if oh * ow == 0 or n * c == 0:
        return out.reshape(n, c, oh, ow)
    lay = phase_layout.flat_layout((h, w), dataclasses.replace(geom, groups=1), out_hw,
                                   POOL_COLUMNS, wide=True)
    count = _pool_counts((h, w), geom, out_hw, include_pad) if average else np.ones(1)
    fill = 0.0 if average else -np.inf

    def share(p0: int, p1: int) -> None:
        _fast_phases.pool_flat(planes, np.full(lay.planes * lay.length, fill, np.float32),
                               lay.start, *lay.strides, lay.offs, lay.masks, lay.mk, oh, ow,
                               lay.pitch, average, count, p0, p1, lay.rows, out)

    per_plane = max(1, oh * ow * geom.kernel[0] * geom.kernel[1])
    threads.run(share, n * c, grain=max(1, (1 << 16) // per_plane))
    return out.reshape(n, c, oh, ow)


def maxpool_reference(x: np.ndarray, geom: ConvGeometry, ceil_mode: bool = False
                      ) -> np.ndarray:
    """The definition of max pooling: the largest value of each window (a NaN wins),
    padding and the ceil-mode overhang as -inf."""
    oh, ow = geom.output_hw(x.shape[2], x.shape[3], ceil_mode)
    win = _windows(x, geom, -np.inf, (oh, ow))
    return np.ascontiguousarray(win.max(axis=(3, 4)).transpose(0, 3, 1, 2))


def avgpool_reference(x: np.ndarray, geom: ConvGeometry, ceil_mode: bool = False,
                      count_include_pad: bool = False) -> np.ndarray:
    """The definition of average pooling: the window's sum in float64 (in window order,
    padding as 0) divided by the count of its taps inside the input (with
    ``count_include_pad``, inside the declared padding; never the ceil-mode overhang),
    rounded once to fp32."""
    oh, ow = geom.output_hw(x.shape[2], x.shape[3], ceil_mode)
    win = _windows(x.astype(np.float64), geom, 0.0, (oh, ow))
    total = win.sum(axis=(3, 4))
    ones = np.ones((1, 1) + x.shape[2:], np.float64)
    if count_include_pad:  # padding counts, the ceil-mode overhang does not
        h, w = x.shape[2:]
        ones = np.pad(ones, ((0, 0), (0, 0), (geom.pads[0], geom.pads[2]),
                             (geom.pads[1], geom.pads[3])), constant_values=1.0)
        g2 = ConvGeometry(geom.kernel, geom.strides, (0, 0, 0, 0), geom.dilations)
        count = _windows(ones, g2, 0.0, (oh, ow)).sum(axis=(3, 4))
    else:
        count = _windows(ones, geom, 0.0, (oh, ow)).sum(axis=(3, 4))
    return np.ascontiguousarray((total / count).astype(np.float32).transpose(0, 3, 1, 2))


def global_avgpool(x: np.ndarray) -> np.ndarray:
    """:func:`global_avgpool_reference`'s bits, from a compiled pass over the float32
    planes (numpy's pairwise float64 sum, without its float64 copy of the input)."""
    n, c, h, w = x.shape
    flat = np.ascontiguousarray(x, np.float32).reshape(n * c, h * w)
    return _fast.mean_rows(flat).reshape(n, c, 1, 1)


def global_avgpool_reference(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64).mean(axis=(2, 3), keepdims=True).astype(np.float32)


def relu(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``max(x, 0)`` as numpy computes it (a NaN stays), into ``out`` if given."""
    return np.maximum(x, np.float32(0), out=out)


def max_step(running: np.ndarray, x: np.ndarray) -> np.ndarray:
    """One step of max pooling in the vector unit: ``np.maximum`` (a NaN wins)."""
    return np.maximum(running, x)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Computed in float64 and rounded once to fp32 (:func:`softmax_reference`'s bits):
    over the last axis, a slice of rows at a time, the slices shared between the threads;
    each row's maximum, shift, sum (numpy's pairwise order) and division compiled, its
    exp numpy's own."""
    x = np.asarray(x)
    if axis not in (-1, x.ndim - 1) or x.ndim == 0 or x.size < SOFTMAX_SLICE:
        return softmax_reference(x, axis)
    cols = x.shape[-1]
    rows = np.ascontiguousarray(x).reshape(-1, cols)
    out = np.empty(rows.shape, np.float32)
    step = max(1, SOFTMAX_SLICE // max(1, cols))

    def share(r0: int, r1: int) -> None:
        z = np.empty((min(step, r1 - r0), cols), np.float64)
        for a in range(r0, r1, step):
            b = min(r1, a + step)
            zs = z[:b - a]
            _fast.softmax_shift(rows[a:b], zs)  # the max and the shift compiled,
            np.exp(zs, out=zs)  # numpy's own exp (its bits), then the sums and the
            _fast.softmax_scale(zs, out[a:b])  # division compiled

    threads.run(share, rows.shape[0], grain=step)
    return out.reshape(x.shape)


SOFTMAX_SLICE = 1 << 12
"""Elements of a softmax's slice of rows (their float64 temporaries stay in cache); a
smaller softmax runs the reference."""


def softmax_reference(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """:func:`softmax` by numpy's float64 operations on the whole array."""
    z = x.astype(np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return (z / z.sum(axis=axis, keepdims=True)).astype(np.float32)


def global_maxpool(x: np.ndarray) -> np.ndarray:
    return x.max(axis=(2, 3), keepdims=True)
