# SPDX-License-Identifier: Apache-2.0
"""The golden model of every number format of the device.

This module is the single numeric reference of npusim: the compiler's weight
quantizer, the simulator's executor and the RTL testbenches all call it, and
nothing else defines how a number is rounded or how a dot product is summed.
``docs/numerics.md`` gives the bit layouts and the exact definitions; the code
below is the normative version.

A block-floating-point (BFP) value is a block of ``block_size`` elements that
share one exponent ``e``. Element ``i`` stores a sign ``s_i`` and an unsigned
mantissa ``m_i`` of ``mantissa_bits`` bits (no hidden bit), and decodes to::

    x_i = (-1)**s_i * m_i * 2**(e - (mantissa_bits - 1))

An OCP MX minifloat format (MXFP8/6/4) shares an E8M0 scale ``2**e`` the same way, and
each element is a minifloat (:mod:`npusim.simulator.minifloat`) held as its exact value
``q_i`` in units of the element type's smallest subnormal ``2**u``, so that every format
decodes alike, ``x_i = q_i * 2**(e - scale_shift)`` with ``scale_shift = -u`` here and
``M - 1`` for BFP, and a block dot product is an exact integer sum.

Example:
    >>> import numpy as np
    >>> fmt = get_format("msfp12")
    >>> q = quantize(np.array([[1.0, -0.3, 0.02] + [0.0] * 13], np.float32), fmt)
    >>> dequantize(q)[0, :3].tolist()
    [1.0, -0.25, 0.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from npusim.simulator import _fast
from npusim.simulator.minifloat import E2M1, E2M3, E3M2, E4M3, E5M2, ElementType, grid_steps

STOCHASTIC_FRACTION_BITS = 16
"""Stochastic rounding adds a 16-bit random fraction to the magnitude truncated to 16
fraction bits, so the rounding is defined in integers and an RTL LFSR/hash can match it."""


class Rounding(StrEnum):
    """How a scaled magnitude becomes an integer mantissa (or a point of a minifloat grid)."""

    NEAREST_EVEN = "nearest_even"
    STOCHASTIC = "stochastic"
    NEAREST_AWAY = "nearest_away"
    """Nearest, ties away from zero: microsoft/microxcaling's default ``round="nearest"``
    (``floor(|a| + 0.5)``, mx/elemwise_ops.py ``_round_mantissa``)."""


@dataclass(frozen=True)
class Format:
    """A number format of the datapath.

    ``fp32`` has ``mantissa_bits == 0`` and means "no quantization". Every block
    format shares one exponent of ``exponent_bits`` bits per block of
    ``block_size`` elements; the all-ones exponent marks a block that held a NaN
    or an infinity (every element of it decodes to NaN), as OCP MX's E8M0 does.
    An MX minifloat format has an ``element`` type; its elements are minifloats.
    """

    name: str
    """Name used on the command line and in programs."""
    mantissa_bits: int
    """Magnitude bits of one element, sign excluded (BFP: the mantissa, no hidden bit;
    a minifloat: its exponent and mantissa fields)."""
    exponent_bits: int
    """Bits of the exponent shared by the block."""
    block_size: int
    """Elements sharing one exponent; blocks run along the reduction axis."""
    exponent_bias: int
    """Stored exponent = e + bias."""
    element: ElementType | None = None
    """The minifloat element type of an MXFP format; ``None`` for BFP formats and mxint8."""

    @property
    def is_fp32(self) -> bool:
        return self.mantissa_bits == 0

    @property
    def is_minifloat(self) -> bool:
        return self.element is not None

    @property
    def element_bits(self) -> int:
        """Bits of one stored element: sign + magnitude."""
        return 1 + self.mantissa_bits

    @property
    def max_mantissa(self) -> int:
        """The largest ``|q|``: ``2**M - 1``, or a minifloat's max normal in units."""
        if self.element is not None:
            return self.element.max_units
        return (1 << self.mantissa_bits) - 1

    @property
    def scale_shift(self) -> int:
        """An element decodes to ``q * 2**(e - scale_shift)``."""
        if self.element is not None:
            return -self.element.unit_exponent
        return self.mantissa_bits - 1

    @property
    def emax_elem(self) -> int:
        """OCP MX's ``emax_elem``: the shared exponent is ``floor(log2 amax) - emax_elem``
        (0 for BFP formats and for INT8)."""
        return 0 if self.element is None else self.element.emax

    @property
    def q_dtype(self) -> type:
        """The integer type of ``BfpTensor.q``."""
        return np.int8 if self.element is None else self.element.q_dtype

    @property
    def partial_bound(self) -> int:
        """A bound on ``|p|``, one block's integer dot product."""
        return self.block_size * self.max_mantissa**2

    @property
    def nan_exponent(self) -> int:
        """The stored exponent reserved for a non-finite block."""
        return (1 << self.exponent_bits) - 1

    @property
    def emin(self) -> int:
        return -self.exponent_bias

    @property
    def emax(self) -> int:
        return self.nan_exponent - 1 - self.exponent_bias

    @property
    def bits_per_element(self) -> float:
        """Average storage per element including the shared exponent."""
        if self.is_fp32:
            return 32.0
        return self.element_bits + self.exponent_bits / self.block_size


FP32 = Format("fp32", 0, 0, 1, 0)

MX_ELEMENTS: dict[str, ElementType] = {
    "mxfp8_e4m3": E4M3, "mxfp8_e5m2": E5M2, "mxfp6_e3m2": E3M2, "mxfp6_e2m3": E2M3,
    "mxfp4_e2m1": E2M1,
}
"""The OCP MX v1.0 minifloat formats and their element types."""

FORMAT_NAMES: tuple[str, ...] = ("fp32", "msfp8", "msfp9", "msfp12", "msfp16", "mxint8",
                                 *MX_ELEMENTS)
"""Every format the device knows."""


def get_format(name: str, native_dim: int = 128) -> Format:
    """Return the format ``name``; ms-fp8/9 share an exponent across ``native_dim``.

    ms-fp8/ms-fp9 (Brainwave, ISCA 2018): sign + 2/3 mantissa bits, 5-bit exponent
    shared by a native-dimension vector. MSFP12/16 (NeurIPS 2020): sign + 3/7
    mantissa bits, 8-bit exponent per 16 elements. mxint8 (OCP MX v1.0): INT8
    elements with 6 fraction bits (exactly a 7-bit magnitude here) and an E8M0
    scale per 32 elements. mxfp8_e4m3 ... mxfp4_e2m1 (OCP MX v1.0): minifloat elements
    (:mod:`npusim.simulator.minifloat`) with an E8M0 scale per 32 elements.
    """
    if name in MX_ELEMENTS:
        el = MX_ELEMENTS[name]
        return Format(name, el.bits - 1, 8, 32, 127, el)
    if name == "fp32":
        return FP32
    if name in ("msfp8", "msfp9"):
        return Format(name, 2 if name == "msfp8" else 3, 5, native_dim, 15)
    if name in ("msfp12", "msfp16"):
        return Format(name, 3 if name == "msfp12" else 7, 8, 16, 127)
    if name == "mxint8":
        return Format(name, 7, 8, 32, 127)
    raise ValueError(f"unknown number format {name!r}; choose one of {', '.join(FORMAT_NAMES)}")


@dataclass(frozen=True, eq=False)
class BfpTensor:
    """A tensor quantized along its last axis.

    ``q`` holds the signed mantissas ``(-1)**s * m`` as int8 with the last axis
    padded with zeros to whole blocks (an MX minifloat format: each element's signed
    value in units of its smallest subnormal, as ``fmt.q_dtype``); ``exponents`` holds
    the stored (biased) shared exponents as uint8, one per block. Zero is always stored
    with sign 0.
    """

    fmt: Format
    q: np.ndarray
    exponents: np.ndarray
    length: int
    """Length of the last axis before padding."""

    def __post_init__(self) -> None:
        # immutable, like every IR value: caches (the decoded weight tiles) rely on it
        self.q.setflags(write=False)
        self.exponents.setflags(write=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.q.shape[:-1], self.length)


def _lowbias32(x: np.ndarray) -> np.ndarray:
    """A 32-bit integer hash (Wellons' lowbias32): cheap in numpy and in RTL."""
    x = x.astype(np.uint32)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def stochastic_bits(count: int, seed: int) -> np.ndarray:
    """The random 16-bit fractions for elements ``0..count-1`` (row-major) of one tensor.

    ``r_i = lowbias32((i + seed * 0x9E3779B9) mod 2**32) >> 16``.
    """
    index = np.arange(count, dtype=np.uint64)
    mixed = (index + np.uint64((seed * 0x9E3779B9) & 0xFFFFFFFF)) & np.uint64(0xFFFFFFFF)
    return (_lowbias32(mixed) >> np.uint32(32 - STOCHASTIC_FRACTION_BITS)).astype(np.int64)


def _pad_last(x: np.ndarray, block: int) -> np.ndarray:
    pad = (-x.shape[-1]) % block
    if pad == 0:
        return x
    widths = [(0, 0)] * (x.ndim - 1) + [(0, pad)]
    return np.pad(x, widths)


def shared_exponents(blocks: np.ndarray, fmt: Format) -> np.ndarray:
    """Unbiased shared exponent of each block of ``blocks`` (``[..., nblocks, block]``).

    ``e = clamp(floor(log2(max |x|)) - emax_elem, emin, emax)``; an all-zero block gets
    ``emin``. Non-finite blocks are not special-cased here (see :func:`quantize`).
    """
    amax = np.max(np.abs(np.where(np.isfinite(blocks), blocks, 0.0)), axis=-1)
    _, exp = np.frexp(amax.astype(np.float64))
    e = np.where(amax > 0, exp.astype(np.int64) - 1 - fmt.emax_elem, fmt.emin)
    return np.clip(e, fmt.emin, fmt.emax)


def quantize(
    x: np.ndarray,
    fmt: Format,
    rounding: Rounding = Rounding.NEAREST_EVEN,
    seed: int = 0,
) -> BfpTensor:
    """Quantize ``x`` (float32) to ``fmt`` in blocks along its last axis.

    Same result as :func:`quantize_reference`; nearest-even (and, for the MX minifloat
    formats, nearest-away) runs a numba kernel.
    """
    if fmt.is_fp32:
        raise ValueError("fp32 is not a block format; nothing to quantize")
    x = np.asarray(x, dtype=np.float32)
    rounding = Rounding(rounding)
    fast = (Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY) if fmt.is_minifloat \
        else (Rounding.NEAREST_EVEN,)
    if rounding not in fast or x.shape[-1] == 0:
        return quantize_reference(x, fmt, rounding, seed)
    padded = _pad_last(x, fmt.block_size)
    flat = padded.reshape(-1, padded.shape[-1])
    if fmt.is_minifloat:
        q, exps = _fast.quantize_mx(flat, fmt.block_size, fmt.element.mantissa_bits,
                                    fmt.emax_elem, fmt.scale_shift, fmt.emin, fmt.emax,
                                    fmt.exponent_bias, fmt.nan_exponent, fmt.max_mantissa,
                                    rounding == Rounding.NEAREST_AWAY, fmt.q_dtype)
    else:
        q, exps = _fast.quantize_rne(flat, fmt.block_size, fmt.mantissa_bits, fmt.emin,
                                     fmt.emax, fmt.exponent_bias, fmt.nan_exponent)
    return BfpTensor(fmt, q.reshape(padded.shape),
                     exps.reshape(*padded.shape[:-1], -1), x.shape[-1])


def quantize_reference(
    x: np.ndarray,
    fmt: Format,
    rounding: Rounding = Rounding.NEAREST_EVEN,
    seed: int = 0,
) -> BfpTensor:
    """Quantize ``x`` (float32) to ``fmt`` in blocks along its last axis (plain numpy).

    This is the normative definition. For each block: ``e`` from
    :func:`shared_exponents`; each element's magnitude is scaled exactly,
    ``a = |x| * 2**(scale_shift - e)`` (BFP: ``2**-(e - (M - 1))``), then rounded to the
    format's grid and saturated to ``max_mantissa``. BFP and mxint8: the grid is the
    integers. A minifloat: the grid step is ``2**k`` units with
    ``k = max(floor(log2 a) - M_elem, 0)`` (:func:`npusim.simulator.minifloat.grid_steps`).
    ``t = a / 2**k`` is rounded to an integer nearest-even, nearest-away
    (``floor(t) + (frac(t) >= 1/2)``) or stochastically (``(floor(t * 2**16) + r) >> 16``
    with ``r`` from :func:`stochastic_bits`). A block holding a NaN or an infinity stores
    the all-ones exponent and zero elements.
    """
    if fmt.is_fp32:
        raise ValueError("fp32 is not a block format; nothing to quantize")
    rounding = Rounding(rounding)
    x = np.asarray(x, dtype=np.float32)
    length = x.shape[-1]
    padded = _pad_last(x, fmt.block_size)
    blocks = padded.reshape(*padded.shape[:-1], -1, fmt.block_size)
    e = shared_exponents(blocks, fmt)
    nonfinite = ~np.all(np.isfinite(blocks), axis=-1)
    scaled = np.ldexp(np.abs(blocks.astype(np.float64)), (fmt.scale_shift - e)[..., None])
    # anything at or above 2 * max saturates; clamping first keeps the integers in range
    scaled = np.minimum(np.where(np.isfinite(scaled), scaled, 0.0), 2.0 * fmt.max_mantissa)
    k = grid_steps(scaled, fmt.element.mantissa_bits) if fmt.is_minifloat \
        else np.zeros(scaled.shape, np.int64)
    t = np.ldexp(scaled, -k)
    if rounding == Rounding.NEAREST_EVEN:
        m = np.rint(t).astype(np.int64)
    elif rounding == Rounding.NEAREST_AWAY:
        fl = np.floor(t)
        m = (fl + (t - fl >= 0.5)).astype(np.int64)
    else:
        truncated = np.floor(np.ldexp(t, STOCHASTIC_FRACTION_BITS)).astype(np.int64)
        r = stochastic_bits(truncated.size, seed).reshape(truncated.shape)
        m = (truncated + r) >> STOCHASTIC_FRACTION_BITS
    m = np.minimum(m << k, fmt.max_mantissa)
    m[nonfinite] = 0
    q = np.where(blocks < 0, -m, m).astype(fmt.q_dtype)
    stored = (e + fmt.exponent_bias).astype(np.uint8)
    stored[nonfinite] = fmt.nan_exponent
    return BfpTensor(fmt, q.reshape(padded.shape), stored, length)


def block_scales(t: BfpTensor) -> np.ndarray:
    """``2**(e - scale_shift)`` per block as float64 (NaN for a non-finite block)."""
    fmt = t.fmt
    e = t.exponents.astype(np.int64) - fmt.exponent_bias
    scale = np.ldexp(1.0, e - fmt.scale_shift)
    return np.where(t.exponents == fmt.nan_exponent, np.nan, scale)


def dequantize(t: BfpTensor) -> np.ndarray:
    """Decode to float32 (exact: every value :func:`quantize` makes is an fp32 number; a
    minifloat element under a scale above any quantize makes can overflow to infinity)."""
    b = t.fmt.block_size
    blocks = t.q.reshape(*t.q.shape[:-1], -1, b).astype(np.float64)
    with np.errstate(over="ignore"):
        out = (blocks * block_scales(t)[..., None]).astype(np.float32)
    return out.reshape(t.q.shape)[..., : t.length]


def fake_quantize(x: np.ndarray, fmt: Format, rounding: Rounding = Rounding.NEAREST_EVEN,
                  seed: int = 0) -> np.ndarray:
    """``dequantize(quantize(x))``, or ``x`` itself in fp32."""
    if fmt.is_fp32:
        return np.asarray(x, dtype=np.float32)
    return dequantize(quantize(x, fmt, rounding, seed))


# --- the block dot product and the accumulation order -------------------------------


def accumulate_blocks_reference(partials: np.ndarray, a_scale: np.ndarray,
                                w_scale: np.ndarray) -> np.ndarray:
    """Sum block products in the device's order (plain numpy reference).

    ``partials[j, n, o]`` is the exact integer dot product of block ``j`` of row
    ``n`` of the activations with block ``j`` of row ``o`` of the weights;
    ``a_scale[n, j]`` and ``w_scale[o, j]`` are the blocks' scales. Each block
    product ``p * a_scale * w_scale`` is rounded once to fp32 (nearest-even), then
    added to an fp32 accumulator that starts at +0.0, block 0 first::

        for n, o:
            acc = 0.0f
            for j in 0..J-1:
                acc = fp32(acc + fp32(partials[j, n, o] * a_scale[n, j] * w_scale[o, j]))
    """
    acc = np.zeros(partials.shape[1:], dtype=np.float32)
    for j in range(partials.shape[0]):
        acc = accumulate_block(acc, partials[j], a_scale[:, j, None] * w_scale[None, :, j])
    return acc


def block_product(partial: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """One block product as the accumulator receives it: ``fp32(partial * scale)``.

    ``partial`` is an exact integer and ``scale`` a power of two (or NaN for a non-finite
    block), so the product is exact and it is rounded to fp32 once, nearest-even. Float
    partials (``|p| < 2**53``, see :func:`block_partials`) make the exact product in
    float64; Python-integer partials (mxfp8_e5m2's) are rounded by
    :func:`round_exact_f32`.
    """
    partial = np.asarray(partial)
    if partial.dtype == object:
        scale = np.broadcast_to(scale, partial.shape)
        return np.frompyfunc(round_exact_f32, 2, 1)(partial, scale).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.asarray(partial, np.float64) * scale).astype(np.float32)


def round_exact_f32(p: int, scale: float) -> np.float32:
    """``fp32(p * scale)`` for an integer ``p`` of any size and a power of two ``scale``
    (or NaN), rounded once to nearest-even: subnormals kept, overflow to infinity."""
    if math.isnan(scale):
        return np.float32(np.nan)
    p = int(p)
    if p == 0:
        return np.float32(0.0)
    k = math.frexp(scale)[1] - 1  # scale == 2**k
    mag = abs(p)
    lsb = max(mag.bit_length() - 1 + k - 23, -149)  # fp32's last place at |p| * 2**k
    if lsb > k:  # drop lsb - k bits, ties to even
        q, rest = divmod(mag, 1 << (lsb - k))
        half = 1 << (lsb - k - 1)
        mag, k = q + (rest > half or (rest == half and q & 1)), lsb
    with np.errstate(over="ignore"):
        out = np.float32(math.ldexp(mag, k))  # exact, or past fp32's range: inf
    return -out if p < 0 else out


def accumulate_block(acc: np.ndarray, partial: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """One step of the accumulation across blocks: ``fp32(acc + block_product(...))``,
    an IEEE-754 binary32 addition rounded to nearest-even (subnormals kept)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.add(np.asarray(acc, np.float32), block_product(partial, scale),
                      dtype=np.float32)


def block_partials(a: BfpTensor, w: BfpTensor) -> np.ndarray:
    """Exact integer dot products per block: ``[J, N, O]``.

    float32 holding integers when ``|p| < 2**24`` (every BFP format, mxint8, MXFP6/4: an
    fp32 GEMM of the integers is exact whatever its internal summation order), float64
    when ``|p| < 2**53`` (mxfp8_e4m3), else Python integers (mxfp8_e5m2, whose products
    span 2**-32 .. 2**32 of the block scales: up to 72 bits).
    """
    b = a.fmt.block_size
    n, kp = a.q.shape
    o = w.q.shape[0]
    bound = a.fmt.partial_bound
    dtype = np.float32 if bound < 2**24 else np.float64
    if bound >= 2**53:  # 16-bit halves: exact float64 GEMMs, joined as Python integers
        ah, al = (_block_operands(a, b, part).transpose(1, 0, 2) for part in (0, 1))
        wh, wl = (_block_operands(w, b, part).transpose(1, 2, 0) for part in (0, 1))
        hi, lo = np.matmul(ah, wh), np.matmul(al, wl)
        mid = np.matmul(ah, wl) + np.matmul(al, wh)
        hi, mid, lo = (x.astype(np.int64).astype(object) for x in (hi, mid, lo))
        return hi * 2**32 + mid * 2**16 + lo
    av = a.q.astype(dtype).reshape(n, kp // b, b).transpose(1, 0, 2)
    wv = w.q.astype(dtype).reshape(o, kp // b, b).transpose(1, 2, 0)
    return np.matmul(av, wv)


def _block_operands(t: BfpTensor, block: int, part: int) -> np.ndarray:
    """The high (``part`` 0, ``q >> 16``) or low (1, ``q & 0xFFFF``) halves of ``t.q`` as
    float64 ``[rows, J, B]``: ``q = hi * 2**16 + lo``, and every half-product sum over a
    block is an integer below 2**38, exact in float64."""
    q = t.q.astype(np.int64)
    half = q >> 16 if part == 0 else q & 0xFFFF
    return half.astype(np.float64).reshape(q.shape[0], -1, block)


def bfp_matmul(a: BfpTensor, w: BfpTensor, accumulate=None) -> np.ndarray:
    """``a @ w.T`` for ``a`` ``[N, K]`` and ``w`` ``[O, K]``, both quantized along K.

    The result is float32 ``[N, O]``, defined by :func:`accumulate_blocks_reference`.
    ``accumulate`` may name a faster kernel with the same signature and result.
    """
    if a.fmt != w.fmt:
        raise ValueError(f"operand formats differ: {a.fmt.name} and {w.fmt.name}")
    if a.length != w.length:
        raise ValueError(f"reduction lengths differ: {a.length} and {w.length}")
    if accumulate is not None:
        return accumulate(block_partials(a, w), block_scales(a), block_scales(w))
    from npusim.simulator import dense, gemm  # the fast kernels build on this module

    if not gemm.supported(a.fmt):
        return _fast.matmul_exact(a.q, w.q, a.fmt.block_size, block_scales(a),
                                  block_scales(w), wide=a.fmt.partial_bound >= 2**53)
    return dense.matmul_quantized(a, w)


def matmul(a: np.ndarray, w: np.ndarray | BfpTensor, fmt: Format,
           rounding: Rounding = Rounding.NEAREST_EVEN, seed: int = 0) -> np.ndarray:
    """The device's matrix product ``a @ w.T`` (``a`` ``[N, K]`` fp32, ``w`` ``[O, K]``).

    In fp32 it is one fp32 GEMM; in a BFP format the activations are quantized
    along K here and ``w`` must already be quantized (weights are quantized once,
    by the compiler).
    """
    a = np.ascontiguousarray(a, dtype=np.float32)
    if fmt.is_fp32:
        if isinstance(w, BfpTensor):
            raise ValueError("fp32 matmul got quantized weights")
        # [O, K] @ [K, N] is the faster orientation for OpenBLAS at batch 1
        return np.matmul(np.asarray(w, dtype=np.float32), a.T).T
    if not isinstance(w, BfpTensor):
        raise ValueError(f"{fmt.name} matmul needs weights quantized by the compiler")
    if w.fmt != fmt:
        raise ValueError(f"operand formats differ: {fmt.name} and {w.fmt.name}")
    if a.shape[-1] != w.length:
        raise ValueError(f"reduction lengths differ: {a.shape[-1]} and {w.length}")
    from npusim.simulator import dense, gemm

    if Rounding(rounding) == Rounding.NEAREST_EVEN and gemm.supported(fmt):
        return dense.matmul(a, w)
    return bfp_matmul(quantize(a, fmt, rounding, seed), w)


# --- packing into the program's weight section --------------------------------------


_PACK_CHUNK = 1 << 20
"""Elements packed or unpacked at a time (a multiple of 8, so chunks end on a byte)."""


def pack(t: BfpTensor) -> bytes:
    """Pack elements as ``element_bits``-bit sign-magnitude codes, MSB first.

    Layout: the exponents (one byte each, row-major), then the element codes
    ``(s << M) | c`` bit-packed big-endian in row-major order, zero-padded to a byte.
    ``c`` is the mantissa ``m`` of a BFP element, or a minifloat's magnitude code (its
    exponent and mantissa fields: the OCP layout ``S.E...E.M...M``).
    """
    fmt = t.fmt
    q = t.q.ravel()
    shifts = np.arange(fmt.element_bits - 1, -1, -1, dtype=np.uint8)
    parts = [t.exponents.astype(np.uint8).tobytes()]
    for start in range(0, q.size, _PACK_CHUNK):
        qc = q[start:start + _PACK_CHUNK].astype(np.int64)
        mag = np.abs(qc)
        if fmt.is_minifloat:
            mag = fmt.element.codes_of_units(mag)
        codes = (np.where(qc < 0, 1 << fmt.mantissa_bits, 0) | mag).astype(np.uint8)
        bits = (codes[:, None] >> shifts) & 1
        parts.append(np.packbits(bits.ravel()).tobytes())
    return b"".join(parts)


def packed_size(shape: tuple[int, ...], fmt: Format) -> int:
    """Bytes :func:`pack` produces for an unpadded ``shape`` quantized along its last axis."""
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    blocks = -(-shape[-1] // fmt.block_size)
    elements = rows * blocks * fmt.block_size
    return rows * blocks + -(-elements * fmt.element_bits // 8)


def unpack(data: bytes, shape: tuple[int, ...], fmt: Format) -> BfpTensor:
    """Inverse of :func:`pack` for an unpadded ``shape``; a minifloat code of an infinity
    or a NaN is refused (a block that held one is stored as a NaN scale and zero codes)."""
    if len(data) != packed_size(shape, fmt):
        raise ValueError(f"packed tensor has {len(data)} bytes, expected {packed_size(shape, fmt)}")
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    blocks = -(-shape[-1] // fmt.block_size)
    nexp = rows * blocks
    exps = np.frombuffer(data, np.uint8, nexp).reshape(*shape[:-1], blocks).copy()
    count = nexp * fmt.block_size
    eb = fmt.element_bits
    payload = np.frombuffer(data, np.uint8, offset=nexp)
    weights = (1 << np.arange(eb - 1, -1, -1)).astype(np.uint8)
    q = np.empty(count, fmt.q_dtype)
    mask = (1 << fmt.mantissa_bits) - 1
    for start in range(0, count, _PACK_CHUNK):
        n = min(_PACK_CHUNK, count - start)
        chunk = payload[start * eb // 8:-(-(start + n) * eb // 8)]
        bits = np.unpackbits(chunk)[:n * eb].reshape(n, eb)
        codes = (bits * weights).sum(axis=1, dtype=np.uint16)
        m = (codes & mask).astype(np.int64)
        if fmt.is_minifloat:
            el = fmt.element
            if np.any(m > el.max_code):
                bad = int(codes[m > el.max_code][0])
                raise ValueError(f"{fmt.name} element code {bad:#04x} is an infinity or a "
                                 "NaN; a packed tensor holds finite elements only")
            m = el.units_table[m]
        q[start:start + n] = np.where(codes >> fmt.mantissa_bits, -m, m)
    return BfpTensor(fmt, q.reshape(*shape[:-1], blocks * fmt.block_size), exps, shape[-1])


accumulate_blocks = _fast.accumulate_blocks
