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

Example:
    >>> import numpy as np
    >>> fmt = get_format("msfp12")
    >>> q = quantize(np.array([[1.0, -0.3, 0.02] + [0.0] * 13], np.float32), fmt)
    >>> dequantize(q)[0, :3].tolist()
    [1.0, -0.25, 0.0]
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from npusim.simulator import _fast

STOCHASTIC_FRACTION_BITS = 16
"""Stochastic rounding adds a 16-bit random fraction to the magnitude truncated to 16
fraction bits, so the rounding is defined in integers and an RTL LFSR/hash can match it."""


class Rounding(StrEnum):
    """How a scaled magnitude becomes an integer mantissa."""

    NEAREST_EVEN = "nearest_even"
    STOCHASTIC = "stochastic"


@dataclass(frozen=True)
class Format:
    """A number format of the datapath.

    ``fp32`` has ``mantissa_bits == 0`` and means "no quantization". Every BFP
    format shares one exponent of ``exponent_bits`` bits per block of
    ``block_size`` elements; the all-ones exponent marks a block that held a NaN
    or an infinity (every element of it decodes to NaN), as OCP MX's E8M0 does.
    """

    name: str
    """Name used on the command line and in programs."""
    mantissa_bits: int
    """Magnitude bits of one element, sign excluded (no hidden bit)."""
    exponent_bits: int
    """Bits of the exponent shared by the block."""
    block_size: int
    """Elements sharing one exponent; blocks run along the reduction axis."""
    exponent_bias: int
    """Stored exponent = e + bias."""

    @property
    def is_fp32(self) -> bool:
        return self.mantissa_bits == 0

    @property
    def element_bits(self) -> int:
        """Bits of one stored element: sign + mantissa."""
        return 1 + self.mantissa_bits

    @property
    def max_mantissa(self) -> int:
        return (1 << self.mantissa_bits) - 1

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

FORMAT_NAMES: tuple[str, ...] = ("fp32", "msfp8", "msfp9", "msfp12", "msfp16", "mxint8")
"""Every format the device knows."""


def get_format(name: str, native_dim: int = 128) -> Format:
    """Return the format ``name``; ms-fp8/9 share an exponent across ``native_dim``.

    ms-fp8/ms-fp9 (Brainwave, ISCA 2018): sign + 2/3 mantissa bits, 5-bit exponent
    shared by a native-dimension vector. MSFP12/16 (NeurIPS 2020): sign + 3/7
    mantissa bits, 8-bit exponent per 16 elements. mxint8 (OCP MX v1.0): INT8
    elements with 6 fraction bits (exactly a 7-bit magnitude here) and an E8M0
    scale per 32 elements.
    """
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
    padded with zeros to whole blocks; ``exponents`` holds the stored (biased)
    shared exponents as uint8, one per block. Zero is always stored with sign 0.
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

    ``e = clamp(floor(log2(max |x|)), emin, emax)``; an all-zero block gets ``emin``.
    Non-finite blocks are not special-cased here (see :func:`quantize`).
    """
    amax = np.max(np.abs(np.where(np.isfinite(blocks), blocks, 0.0)), axis=-1)
    _, exp = np.frexp(amax.astype(np.float64))
    e = np.where(amax > 0, exp.astype(np.int64) - 1, fmt.emin)
    return np.clip(e, fmt.emin, fmt.emax)


def quantize(
    x: np.ndarray,
    fmt: Format,
    rounding: Rounding = Rounding.NEAREST_EVEN,
    seed: int = 0,
) -> BfpTensor:
    """Quantize ``x`` (float32) to ``fmt`` in blocks along its last axis.

    Same result as :func:`quantize_reference`; nearest-even runs a numba kernel.
    """
    if fmt.is_fp32:
        raise ValueError("fp32 is not a block format; nothing to quantize")
    x = np.asarray(x, dtype=np.float32)
    if Rounding(rounding) != Rounding.NEAREST_EVEN or x.shape[-1] == 0:
        return quantize_reference(x, fmt, rounding, seed)
    padded = _pad_last(x, fmt.block_size)
    q, exps = _fast.quantize_rne(padded.reshape(-1, padded.shape[-1]), fmt.block_size,
                                 fmt.mantissa_bits, fmt.emin, fmt.emax, fmt.exponent_bias,
                                 fmt.nan_exponent)
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
    ``a = |x| * 2**-(e - (M - 1))``, then rounded to nearest-even (or stochastically:
    ``m = (floor(a * 2**16) + r) >> 16`` with ``r`` from :func:`stochastic_bits`),
    and saturated to ``2**M - 1``. A block holding a NaN or an infinity stores the
    all-ones exponent and zero mantissas.
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
    scaled = np.ldexp(np.abs(blocks.astype(np.float64)), (fmt.mantissa_bits - 1 - e)[..., None])
    # anything at or above 2**M saturates; clamping first keeps the integers in range
    scaled = np.minimum(np.where(np.isfinite(scaled), scaled, 0.0), float(1 << fmt.mantissa_bits))
    if rounding == Rounding.NEAREST_EVEN:
        m = np.rint(scaled).astype(np.int64)
    else:
        truncated = np.floor(np.ldexp(scaled, STOCHASTIC_FRACTION_BITS)).astype(np.int64)
        r = stochastic_bits(truncated.size, seed).reshape(truncated.shape)
        m = (truncated + r) >> STOCHASTIC_FRACTION_BITS
    m = np.minimum(m, fmt.max_mantissa)
    m[nonfinite] = 0
    q = np.where(blocks < 0, -m, m).astype(np.int8)
    stored = (e + fmt.exponent_bias).astype(np.uint8)
    stored[nonfinite] = fmt.nan_exponent
    return BfpTensor(fmt, q.reshape(padded.shape), stored, length)


def block_scales(t: BfpTensor) -> np.ndarray:
    """``2**(e - (M - 1))`` per block as float64 (NaN for a non-finite block)."""
    fmt = t.fmt
    e = t.exponents.astype(np.int64) - fmt.exponent_bias
    scale = np.ldexp(1.0, e - (fmt.mantissa_bits - 1))
    return np.where(t.exponents == fmt.nan_exponent, np.nan, scale)


def dequantize(t: BfpTensor) -> np.ndarray:
    """Decode to float32 (exact: every BFP value is representable in fp32)."""
    b = t.fmt.block_size
    blocks = t.q.reshape(*t.q.shape[:-1], -1, b).astype(np.float64)
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

    ``partial`` is an exact integer (``|p| < 2**24``) and ``scale`` a power of two (or NaN
    for a non-finite block), so the float64 product is exact and it is rounded to fp32
    once, nearest-even: only underflow to a subnormal (or zero) and overflow to an
    infinity can round.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.asarray(partial, np.float64) * scale).astype(np.float32)


def accumulate_block(acc: np.ndarray, partial: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """One step of the accumulation across blocks: ``fp32(acc + block_product(...))``,
    an IEEE-754 binary32 addition rounded to nearest-even (subnormals kept)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.add(np.asarray(acc, np.float32), block_product(partial, scale),
                      dtype=np.float32)


def block_partials(a: BfpTensor, w: BfpTensor) -> np.ndarray:
    """Exact integer dot products per block: ``[J, N, O]`` (float32 holding integers).

    ``|p| <= block * (2**M - 1)**2 < 2**24`` for every format, so an fp32 GEMM of
    the integer mantissas is exact whatever its internal summation order.
    """
    b = a.fmt.block_size
    n, kp = a.q.shape
    o = w.q.shape[0]
    av = a.q.astype(np.float32).reshape(n, kp // b, b).transpose(1, 0, 2)
    wv = w.q.astype(np.float32).reshape(o, kp // b, b).transpose(1, 2, 0)
    return np.matmul(av, wv)


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
    from npusim.simulator import gemm  # the fast kernels build on this module

    if not gemm.supported(a.fmt):
        return accumulate_blocks(block_partials(a, w), block_scales(a), block_scales(w))
    return gemm.matmul_quantized(a, w)


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
    from npusim.simulator import gemm

    if Rounding(rounding) == Rounding.NEAREST_EVEN and gemm.supported(fmt):
        return gemm.matmul(a, w)
    return bfp_matmul(quantize(a, fmt, rounding, seed), w)


# --- packing into the program's weight section --------------------------------------


_PACK_CHUNK = 1 << 20
"""Elements packed or unpacked at a time (a multiple of 8, so chunks end on a byte)."""


def pack(t: BfpTensor) -> bytes:
    """Pack elements as ``element_bits``-bit sign-magnitude codes, MSB first.

    Layout: the exponents (one byte each, row-major), then the element codes
    ``(s << M) | m`` bit-packed big-endian in row-major order, zero-padded to a byte.
    """
    fmt = t.fmt
    q = t.q.ravel()
    shifts = np.arange(fmt.element_bits - 1, -1, -1, dtype=np.uint8)
    parts = [t.exponents.astype(np.uint8).tobytes()]
    for start in range(0, q.size, _PACK_CHUNK):
        qc = q[start:start + _PACK_CHUNK].astype(np.int16)
        codes = (np.where(qc < 0, 1 << fmt.mantissa_bits, 0) | np.abs(qc)).astype(np.uint8)
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
    """Inverse of :func:`pack` for an unpadded ``shape``."""
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
    q = np.empty(count, np.int8)
    for start in range(0, count, _PACK_CHUNK):
        n = min(_PACK_CHUNK, count - start)
        chunk = payload[start * eb // 8:-(-(start + n) * eb // 8)]
        bits = np.unpackbits(chunk)[:n * eb].reshape(n, eb)
        codes = (bits * weights).sum(axis=1, dtype=np.uint16)
        m = (codes & fmt.max_mantissa).astype(np.int16)
        q[start:start + n] = np.where(codes >> fmt.mantissa_bits, -m, m)
    return BfpTensor(fmt, q.reshape(*shape[:-1], blocks * fmt.block_size), exps, shape[-1])


accumulate_blocks = _fast.accumulate_blocks
