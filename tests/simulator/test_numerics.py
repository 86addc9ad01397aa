# SPDX-License-Identifier: Apache-2.0
"""Tests for simulator.numerics (the golden BFP numerics) and its numba kernels.

Expected values are computed here from the documented definitions (``docs/numerics.md``)
with Python integers and ``fractions``, never by calling the code under test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from simulator.numerics import (
    FORMAT_NAMES,
    FP32,
    STOCHASTIC_FRACTION_BITS,
    BfpTensor,
    Format,
    Rounding,
    accumulate_blocks,
    accumulate_blocks_reference,
    bfp_matmul,
    dequantize,
    fake_quantize,
    get_format,
    matmul,
    pack,
    packed_size,
    quantize,
    quantize_reference,
    stochastic_bits,
    unpack,
)

BFP_NAMES = tuple(n for n in FORMAT_NAMES if n != "fp32")
#: Every BFP format, with the ms-fp8/9 exponent shared over several native dimensions.
DIFF_FORMATS = [get_format(n, d) for n in ("msfp8", "msfp9") for d in (8, 16, 128)] + [
    get_format(n) for n in ("msfp12", "msfp16", "mxint8")
]
QUANTIZERS = {"fast": quantize, "reference": quantize_reference}
M32 = 0xFFFFFFFF


def _fid(fmt: Format) -> str:
    return f"{fmt.name}-b{fmt.block_size}"


def _decode(sign: int, m: int, e: int, mbits: int) -> Fraction:
    """The documented element value ``(-1)**s * m * 2**(e - (M - 1))``, exactly."""
    return (-1) ** sign * Fraction(m) * Fraction(2) ** (e - (mbits - 1))


def _rne(v: Fraction) -> int:
    """Round a non-negative rational to the nearest integer, ties to even."""
    fl = v.numerator // v.denominator
    rest = v - fl
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and fl % 2 == 1):
        return fl + 1
    return fl


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & M32
    x ^= x >> 15
    x = (x * 0x846CA68B) & M32
    x ^= x >> 16
    return x


def _stochastic_r(i: int, seed: int) -> int:
    return _lowbias32((i + seed * 0x9E3779B9) % 2**32) >> 16


# --- format definitions ---------------------------------------------------------------

#: name -> (mantissa bits, exponent bits, block size (None: native_dim), bias)
EXPECTED_FORMATS = {
    "msfp8": (2, 5, None, 15),
    "msfp9": (3, 5, None, 15),
    "msfp12": (3, 8, 16, 127),
    "msfp16": (7, 8, 16, 127),
    "mxint8": (7, 8, 32, 127),
}


def test_format_names_are_fp32_and_the_bfp_formats() -> None:
    assert FORMAT_NAMES[0] == "fp32"
    assert set(FORMAT_NAMES) == {"fp32", *EXPECTED_FORMATS}


@pytest.mark.parametrize("name", sorted(EXPECTED_FORMATS))
@pytest.mark.parametrize("native_dim", [16, 128, 400])
def test_format_fields(name: str, native_dim: int) -> None:
    mbits, ebits, block, bias = EXPECTED_FORMATS[name]
    fmt = get_format(name, native_dim)
    assert fmt.name == name
    assert (fmt.mantissa_bits, fmt.exponent_bits, fmt.exponent_bias) == (mbits, ebits, bias)
    assert fmt.block_size == (native_dim if block is None else block)
    assert not fmt.is_fp32
    assert fmt.element_bits == mbits + 1
    assert fmt.max_mantissa == 2**mbits - 1
    assert fmt.nan_exponent == 2**ebits - 1
    assert fmt.emin == -bias
    assert fmt.emax == 2**ebits - 2 - bias
    assert fmt.bits_per_element == pytest.approx(mbits + 1 + ebits / fmt.block_size)


def test_exponent_ranges_by_name() -> None:
    m8 = get_format("msfp8")
    assert (m8.emin, m8.emax, m8.nan_exponent, m8.block_size) == (-15, 15, 31, 128)
    for name in ("msfp12", "msfp16", "mxint8"):
        f = get_format(name)
        assert (f.emin, f.emax, f.nan_exponent) == (-127, 127, 255)
    assert get_format("msfp12").bits_per_element == 4.5
    assert get_format("mxint8").bits_per_element == 8.25


def test_fp32_format() -> None:
    assert get_format("fp32") is FP32
    assert FP32.is_fp32 and FP32.bits_per_element == 32.0
    with pytest.raises(ValueError, match="fp32"):
        quantize(np.ones(4, np.float32), FP32)
    with pytest.raises(ValueError, match="fp32"):
        quantize_reference(np.ones(4, np.float32), FP32)
    x = np.array([0.1, -3.0], np.float32)
    assert np.array_equal(fake_quantize(x, FP32), x)


def test_unknown_format_names_itself() -> None:
    with pytest.raises(ValueError, match="'msfp7'"):
        get_format("msfp7")


# --- every bit pattern of every format ------------------------------------------------


def _exponents_to_check(fmt: Format) -> list[int]:
    return sorted({fmt.emin, fmt.emin + 1, -1, 0, 1, fmt.emax - 1, fmt.emax})


def _all_codes(fmt: Format) -> list[tuple[int, int]]:
    return [(s, m) for s in (0, 1) for m in range(2**fmt.mantissa_bits)]


def _expected_pack(t: BfpTensor) -> bytes:
    """Exponent bytes, then ``(s << M) | m`` codes MSB first, zero-padded to a byte."""
    mbits = t.fmt.mantissa_bits
    bits = "".join(
        format(((1 << mbits) if v < 0 else 0) | abs(int(v)), f"0{mbits + 1}b")
        for v in t.q.ravel()
    )
    bits += "0" * (-len(bits) % 8)
    body = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))
    return bytes(int(e) for e in t.exponents.ravel()) + body


@pytest.mark.parametrize("name", BFP_NAMES)
def test_every_code_decodes_round_trips_and_packs(name: str) -> None:
    fmt = get_format(name)
    mbits, block = fmt.mantissa_bits, fmt.block_size
    codes = _all_codes(fmt)
    assert len(codes) == 2**fmt.element_bits
    signed = np.array([-m if s else m for s, m in codes], np.int8)
    for e in _exponents_to_check(fmt):
        values = [_decode(s, m, e, mbits) for s, m in codes]
        # one block per code: the code, then an anchor 2**e (mantissa 2**(M-1)) fixing e
        q = np.zeros((len(codes), block), np.int8)
        q[:, 0] = signed
        q[:, 1] = 2 ** (mbits - 1)
        exps = np.full((len(codes), 1), e + fmt.exponent_bias, np.uint8)
        t = BfpTensor(fmt, q, exps, block)

        # (a) dequantize is the documented formula, exactly
        out = dequantize(t)
        assert out.dtype == np.float32
        got = [Fraction(float(v)) for v in out[:, 0]]
        assert got == values, f"{name} e={e}"
        assert all(Fraction(float(v)) == Fraction(2) ** e for v in out[:, 1])
        assert not np.any(out[:, 2:])

        # (b) quantizing the exact value in a block whose max has exponent e gives the code back
        x = np.zeros((len(codes), block), np.float32)
        x[:, 0] = [float(v) for v in values]
        x[:, 1] = 2.0**e
        assert [Fraction(float(v)) for v in x[:, 0]] == values  # exact in fp32
        for kind, qz in QUANTIZERS.items():
            r = qz(x, fmt)
            assert np.array_equal(r.q, q), f"{kind} {name} e={e}"
            assert np.array_equal(r.exponents, exps), f"{kind} {name} e={e}"

        # (c) pack / unpack
        data = pack(t)
        assert len(data) == packed_size((len(codes), block), fmt)
        assert data == _expected_pack(t)
        u = unpack(data, (len(codes), block), fmt)
        assert np.array_equal(u.q, q) and np.array_equal(u.exponents, exps)
        assert u.length == block and u.fmt == fmt


@pytest.mark.parametrize("fmt", [get_format("msfp8", 8), get_format("msfp9", 8),
                                 get_format("msfp12"), get_format("mxint8")], ids=_fid)
def test_pack_round_trip_partial_blocks(fmt: Format) -> None:
    rng = np.random.default_rng(11)
    shape = (3, 2, 2 * fmt.block_size + 5)
    t = quantize(rng.standard_normal(shape).astype(np.float32), fmt)
    assert t.shape == shape
    data = pack(t)
    assert len(data) == packed_size(shape, fmt) and data == _expected_pack(t)
    u = unpack(data, shape, fmt)
    assert np.array_equal(u.q, t.q) and np.array_equal(u.exponents, t.exponents)
    assert u.shape == shape
    with pytest.raises(ValueError, match="bytes"):
        unpack(data + b"\0", shape, fmt)


def test_packed_size_by_hand() -> None:
    # msfp8 at native_dim 8: 2 rows x 2 blocks -> 4 exponent bytes, 32 codes x 3 bits = 12 bytes
    assert packed_size((2, 13), get_format("msfp8", 8)) == 4 + 12
    # mxint8: one block of 32 -> 1 + 32 bytes
    assert packed_size((1, 1), get_format("mxint8")) == 1 + 32


def test_negative_zero_code_unpacks_to_canonical_zero() -> None:
    fmt = get_format("msfp12")
    data = bytes([127]) + bytes([0b1000_0000]) + bytes(7)  # first code: s=1, m=0
    u = unpack(data, (1, 16), fmt)
    assert np.all(u.q == 0)
    assert not np.any(np.signbit(dequantize(u)))
    assert pack(u) == bytes([127]) + bytes(8)


# --- nearest-even rounding, saturation, clamping, special values ----------------------


@pytest.mark.parametrize("fmt", DIFF_FORMATS[2:], ids=_fid)
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_ties_round_to_even(fmt: Format, kind: str) -> None:
    mbits = fmt.mantissa_bits
    ulp = Fraction(1, 2 ** (mbits - 1))  # e = 0
    ks = range(2**mbits)
    x = np.zeros((len(ks), fmt.block_size), np.float32)
    x[:, 0] = 1.0
    ties = [float((k + Fraction(1, 2)) * ulp) for k in ks]
    x[:, 1] = ties
    x[:, 2] = np.negative(ties)
    x[:, 3] = np.nextafter(np.float32(ties), np.float32(0))
    x[:, 4] = np.nextafter(np.float32(ties), np.float32(2))
    t = QUANTIZERS[kind](x, fmt)
    even = np.array([min(k + (k % 2), fmt.max_mantissa) for k in ks])
    assert np.all(t.exponents == fmt.exponent_bias)
    assert np.array_equal(t.q[:, 1], even)
    assert np.array_equal(t.q[:, 2], -even)
    assert np.array_equal(t.q[:, 3], list(ks))
    assert np.array_equal(t.q[:, 4], [min(k + 1, fmt.max_mantissa) for k in ks])


def test_ties_msfp12_by_hand() -> None:
    x = np.zeros(16, np.float32)
    x[:9] = [1.0, 0.125, 0.375, 0.625, 0.875, 1.125, 1.375, 1.625, 1.875]
    for qz in QUANTIZERS.values():
        t = qz(x, get_format("msfp12"))
        assert t.q[:9].tolist() == [4, 0, 2, 2, 4, 4, 6, 6, 7]
        assert dequantize(t)[:9].tolist() == [1.0, 0.0, 0.5, 0.5, 1.0, 1.0, 1.5, 1.5, 1.75]


@pytest.mark.parametrize("fmt", DIFF_FORMATS[2:], ids=_fid)
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_saturation(fmt: Format, kind: str) -> None:
    mx, half = fmt.max_mantissa, 2 ** (fmt.mantissa_bits - 1)
    # a rounding carry out of the top bit saturates instead of bumping the exponent
    x = np.zeros(fmt.block_size, np.float32)
    x[:3] = [np.nextafter(np.float32(2), np.float32(0)), -1.0, 1.0]
    t = QUANTIZERS[kind](x, fmt)
    assert t.exponents.tolist() == [fmt.exponent_bias]
    assert t.q[:3].tolist() == [mx, -half, half]
    # at emax: beyond-range values (5-bit formats) and fp32 max saturate to +-(2**M - 1)
    big = np.float32(np.finfo(np.float32).max)
    x[:4] = [big, -big, 2.0**fmt.emax, -(2.0**fmt.emax) * 1.5]
    t = QUANTIZERS[kind](x, fmt)
    assert t.exponents.tolist() == [fmt.emax + fmt.exponent_bias]
    assert t.q[:4].tolist() == [mx, -mx, half, -min(mx, 3 * half // 2)]


@pytest.mark.parametrize("fmt", DIFF_FORMATS[2:], ids=_fid)
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_exponent_clamps_at_emin(fmt: Format, kind: str) -> None:
    m = fmt.mantissa_bits
    # multiples of half an ulp at emin, and a value far below it: the block max is < 2**emin
    vals = [k * 2.0 ** (fmt.emin - m) for k in range(5)] + [2.0 ** (fmt.emin - m - 2)]
    x = np.zeros((2, fmt.block_size), np.float32)
    x[0, : len(vals)] = vals
    x[1, : len(vals)] = np.negative(vals)
    t = QUANTIZERS[kind](x, fmt)
    assert np.all(t.exponents == 0)
    assert t.q[0, :6].tolist() == [0, 0, 1, 2, 2, 0]
    assert t.q[1, :6].tolist() == [0, 0, -1, -2, -2, 0]
    ulp = 2.0 ** (fmt.emin - m + 1)
    assert dequantize(t)[0, :6].tolist() == [0.0, 0.0, ulp, 2 * ulp, 2 * ulp, 0.0]


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=_fid)
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_nearest_even_matches_rational_oracle(fmt: Format, kind: str) -> None:
    """Random finite data against the definition evaluated in exact rationals."""
    rng = np.random.default_rng(fmt.block_size + fmt.mantissa_bits)
    b = fmt.block_size
    x = rng.standard_normal((4, 2 * b + 3)) * 2.0 ** rng.integers(-20, 20, (4, 1))
    x[3] *= 2.0**-130  # clamps at emin for every format
    x = x.astype(np.float32)
    t = QUANTIZERS[kind](x, fmt)
    xp = np.zeros(t.q.shape, np.float32)
    xp[:, : x.shape[1]] = x
    for row in range(4):
        for j in range(t.q.shape[1] // b):
            block = [Fraction(float(v)) for v in xp[row, j * b:(j + 1) * b]]
            amax = max(abs(v) for v in block)
            e = fmt.emin if amax == 0 else math.frexp(float(amax))[1] - 1
            e = min(max(e, fmt.emin), fmt.emax)
            assert int(t.exponents[row, j]) == e + fmt.exponent_bias
            for i, v in enumerate(block):
                m = min(_rne(abs(v) * Fraction(2) ** (fmt.mantissa_bits - 1 - e)), fmt.max_mantissa)
                assert int(t.q[row, j * b + i]) == (-m if v < 0 else m), (row, j, i)


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=_fid)
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_zero_and_negative_zero(fmt: Format, kind: str) -> None:
    b = fmt.block_size
    x = np.zeros((2, 2 * b + 1), np.float32)
    x[1, :] = -0.0
    x[1, b] = -(2.0 ** (fmt.emin - fmt.mantissa_bits - 3))  # rounds to zero
    t = QUANTIZERS[kind](x, fmt)
    assert np.all(t.q == 0) and np.all(t.exponents == 0)
    assert t.exponents.shape == (2, 3)
    assert not np.any(np.signbit(dequantize(t)))
    assert pack(t) == bytes(len(pack(t)))


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=_fid)
@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_nonfinite_blocks(fmt: Format, rounding: Rounding, kind: str) -> None:
    b = fmt.block_size
    rng = np.random.default_rng(5)
    clean = rng.standard_normal((3, 3 * b - 1)).astype(np.float32)
    x = clean.copy()
    x[0, b] = np.nan
    x[1, 3 * b - 2] = np.inf  # last valid element of the padded last block
    x[2, 3] = -np.inf
    bad = np.zeros((3, 3), bool)
    bad[0, 1] = bad[1, 2] = bad[2, 0] = True
    clean[np.repeat(bad, b, axis=1)[:, : 3 * b - 1]] = 0.0
    t = QUANTIZERS[kind](x, fmt, rounding, seed=9)
    ref = QUANTIZERS[kind](clean, fmt, rounding, seed=9)
    assert np.array_equal(t.exponents == fmt.nan_exponent, bad)
    qb = t.q.reshape(3, 3, b)
    assert np.all(qb[bad] == 0)
    good = ~bad
    assert np.array_equal(qb[good], ref.q.reshape(3, 3, b)[good])
    assert np.array_equal(t.exponents[good], ref.exponents[good])
    out = dequantize(t)
    mask = np.repeat(bad, b, axis=1)[:, : 3 * b - 1]
    assert np.all(np.isnan(out[mask]))
    assert np.all(np.isfinite(out[~mask]))
    assert np.array_equal(out[~mask], dequantize(ref)[~mask])


# --- stochastic rounding ---------------------------------------------------------------


def _exact_scaled(x: np.ndarray, t: BfpTensor) -> np.ndarray:
    """``|x| * 2**(M - 1 - e)`` per element of the padded tensor (exact in float64)."""
    fmt = t.fmt
    b = fmt.block_size
    xp = np.zeros(t.q.shape, np.float64)
    xp[..., : t.length] = np.abs(x)
    e = t.exponents.astype(np.int64) - fmt.exponent_bias
    return np.ldexp(xp, np.repeat(fmt.mantissa_bits - 1 - e, b, axis=-1))


def test_stochastic_bits_formula() -> None:
    count = 70_000
    for seed in (0, 1, 42, -5, 2**40 + 3):
        r = stochastic_bits(count, seed)
        assert r.shape == (count,) and r.dtype == np.int64
        assert r.min() >= 0 and r.max() < 2**STOCHASTIC_FRACTION_BITS
        for i in (0, 1, 2, 255, 65_536, count - 1):
            assert int(r[i]) == _stochastic_r(i, seed), (seed, i)
    assert STOCHASTIC_FRACTION_BITS == 16


@pytest.mark.parametrize("fmt", [get_format("msfp9", 8), get_format("msfp12"),
                                 get_format("mxint8")], ids=_fid)
def test_stochastic_is_the_documented_integer_formula(fmt: Format) -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((3, fmt.block_size + 5)) * 4).astype(np.float32)
    seed = 7
    t = quantize(x, fmt, Rounding.STOCHASTIC, seed)
    a = _exact_scaled(x, t).ravel()
    expected = []
    for i, ai in enumerate(a):  # i runs over the padded tensor, row-major
        fl = int(np.floor(ai * 2**16))
        expected.append(min((fl + _stochastic_r(i, seed)) >> 16, fmt.max_mantissa))
    assert np.array_equal(np.abs(t.q.astype(np.int64)).ravel(), expected)


@pytest.mark.parametrize("fmt", [get_format("msfp12"), get_format("mxint8")], ids=_fid)
def test_stochastic_truncates_to_16_fraction_bits(fmt: Format) -> None:
    """Elements placed exactly at the carry boundary of ``floor(a * 2**16) + r``."""
    b, seed = fmt.block_size, 7
    x = np.zeros((2, b), np.float32)
    x[:, 0] = 1.0  # e = 0
    k = np.arange(b) % 2
    for row in range(2):
        r = np.array([_stochastic_r(row * b + i, seed) for i in range(b)])
        # row 0: a * 2**16 = k * 2**16 + (2**16 - 1 - r) + 0.75 -> floor + r stays below the carry
        # row 1: a * 2**16 = k * 2**16 + (2**16 - r)            -> floor + r carries exactly
        frac = (2**16 - 1 - r + 0.75) if row == 0 else (2**16 - r).astype(np.float64)
        a = k + frac / 2**16
        x[row, 1:] = (a / 2 ** (fmt.mantissa_bits - 1))[1:]
        assert np.array_equal(x[row, 1:].astype(np.float64) * 2 ** (fmt.mantissa_bits - 1), a[1:])
    t = quantize(x, fmt, Rounding.STOCHASTIC, seed)
    assert np.all(t.exponents == fmt.exponent_bias)
    assert np.array_equal(t.q[0, 1:], k[1:])
    assert np.array_equal(t.q[1, 1:], k[1:] + 1)


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=_fid)
def test_stochastic_floor_or_ceil(fmt: Format) -> None:
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((8, 3 * fmt.block_size)) * 3).astype(np.float32)
    t = quantize(x, fmt, Rounding.STOCHASTIC, seed=12)
    assert np.array_equal(t.q, quantize(x, fmt, Rounding.STOCHASTIC, seed=12).q)
    assert not np.array_equal(t.q, quantize(x, fmt, Rounding.STOCHASTIC, seed=13).q)
    assert np.array_equal(t.exponents, quantize(x, fmt).exponents)
    a = _exact_scaled(x, t)
    m = np.abs(t.q.astype(np.int64))
    lo = np.minimum(np.floor(a), fmt.max_mantissa)
    hi = np.minimum(np.ceil(a), fmt.max_mantissa)
    assert np.all((m == lo) | (m == hi))
    frac = a != np.floor(a)
    assert np.any(m[frac] == lo[frac]) and np.any(m[frac] == hi[frac]) and np.any(frac)
    assert np.array_equal(np.sign(t.q), np.where(m == 0, 0, np.sign(x)))


def test_stochastic_is_unbiased() -> None:
    fmt = get_format("msfp12")  # e = 0: one ulp is 0.25
    vals = np.array([0.3, 0.1, 1.3, 0.5, 0.77, 1.6, -0.3, 0.01], np.float32)
    x = np.zeros((8192, 16), np.float32)
    x[:, 0] = 1.0
    x[:, 1:9] = vals
    t = quantize(x, fmt, Rounding.STOCHASTIC, seed=2024)
    assert np.all(t.exponents == 127)
    exact = np.abs(vals.astype(np.float64)) * 4
    mean = np.abs(t.q[:, 1:9].astype(np.float64)).mean(axis=0)
    # std of one sample <= 0.5, so 4 sigma over 8192 samples is ~0.022
    np.testing.assert_allclose(mean, exact, atol=0.025)
    assert np.all(t.q[:, 7] <= 0)


# --- differential: numba kernels against the numpy references -----------------------


def _nasty(rng: np.random.Generator, shape: tuple[int, ...], fmt: Format,
           nonfinite: bool = True, row_exp: tuple[int, int] = (-145, 125)) -> np.ndarray:
    """Random values with exact ties, zeros, -0, subnormals, huge values, NaN and Inf."""
    m = fmt.mantissa_bits
    n = int(np.prod(shape))
    normal = rng.standard_normal(n) * 2.0 ** rng.integers(-12, 12, n)
    ties = rng.integers(-(2 ** (m + 2)), 2 ** (m + 2), n) / 2 * 2.0 ** rng.integers(-6, 6, n)
    kind = rng.choice(3, n, p=[0.5, 0.4, 0.1])
    x = np.where(kind == 0, normal, np.where(kind == 1, ties, 0.0))
    # one scale per 32 elements along the last axis: blocks straddle scales at small sizes
    chunks = np.repeat(rng.integers(*row_exp, shape[:-1] + (-(-shape[-1] // 32),)), 32, -1)
    with np.errstate(over="ignore"):  # chunks scaled past fp32 range become +-inf
        x = (x.reshape(shape) * 2.0 ** chunks[..., : shape[-1]]).astype(np.float32).ravel()
    specials = [-0.0, 1e-45, -1e-45, 2.0**-140]
    if nonfinite:
        specials += [3.4e38, -3.4e38, np.nan, np.inf, -np.inf]
    pick = rng.random(n) < 0.01
    x[pick] = rng.choice(np.array(specials, np.float32), int(pick.sum()))
    return x.reshape(shape)


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=_fid)
@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("shape", [(5, 37), (3, 4, 129), (64, 300), (300,)])
def test_quantize_matches_reference(fmt: Format, rounding: Rounding,
                                    shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape) + fmt.block_size + fmt.mantissa_bits)
    x = _nasty(rng, shape, fmt)
    x.reshape(-1)[x.size // 2] = np.nan
    fast = quantize(x, fmt, rounding, seed=5)
    ref = quantize_reference(x, fmt, rounding, seed=5)
    assert fast.shape == ref.shape == shape
    assert fast.q.dtype == ref.q.dtype == np.int8
    assert fast.exponents.dtype == ref.exponents.dtype == np.uint8
    assert np.array_equal(fast.q, ref.q)
    assert np.array_equal(fast.exponents, ref.exponents)
    # the data reached the corners: NaN blocks, clamped and ordinary blocks, nonzero codes
    assert np.any(ref.exponents == fmt.nan_exponent)
    assert np.any(ref.q != 0) and np.any(ref.exponents != fmt.nan_exponent)


def _matmul_operands(fmt: Format, n: int, o: int, k: int, seed: int
                     ) -> tuple[BfpTensor, BfpTensor]:
    rng = np.random.default_rng(seed)
    a = _nasty(rng, (n, k), fmt, nonfinite=False, row_exp=(-20, 20))
    w = _nasty(rng, (o, k), fmt, nonfinite=False, row_exp=(-20, 20))
    a[0, 3] = np.nan
    w[1, k - 1] = np.inf
    with np.errstate(over="ignore"):  # row 1 overflows the fp32 accumulator
        a[1, :] *= np.float32(2.0**90)
    return quantize(a, fmt), quantize(w, fmt)


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=_fid)
@pytest.mark.parametrize("nok", [(5, 7, 37), (17, 33, 300)])
def test_bfp_matmul_kernels_agree(fmt: Format, nok: tuple[int, int, int]) -> None:
    qa, qw = _matmul_operands(fmt, *nok, seed=sum(nok) + fmt.block_size)
    with np.errstate(over="ignore", invalid="ignore"):
        fused = bfp_matmul(qa, qw)
        ref = bfp_matmul(qa, qw, accumulate=accumulate_blocks_reference)
        fast = bfp_matmul(qa, qw, accumulate=accumulate_blocks)
    assert fused.dtype == ref.dtype == fast.dtype == np.float32
    assert fused.shape == nok[:2]
    assert np.array_equal(fused, ref, equal_nan=True)
    assert np.array_equal(fast, ref, equal_nan=True)
    assert np.all(np.isnan(ref[0])) and np.all(np.isnan(ref[:, 1]))
    assert np.isfinite(ref).sum() > ref.size // 2


# --- the accumulation order -------------------------------------------------------------


def _loop_matmul(a: BfpTensor, w: BfpTensor) -> np.ndarray:
    """The docstring's pseudo-code: exact integer block dots, fp32 per block, fp32 sum."""
    fmt = a.fmt
    b = fmt.block_size

    def scale(stored: int) -> float:
        if stored == fmt.nan_exponent:
            return float("nan")
        return 2.0 ** (stored - fmt.exponent_bias - (fmt.mantissa_bits - 1))

    out = np.zeros((a.q.shape[0], w.q.shape[0]), np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for n in range(a.q.shape[0]):
            for o in range(w.q.shape[0]):
                acc = np.float32(0.0)
                for j in range(a.q.shape[1] // b):
                    sl = slice(j * b, (j + 1) * b)
                    p = int(np.dot(a.q[n, sl].astype(np.int64), w.q[o, sl].astype(np.int64)))
                    sa, sw = scale(int(a.exponents[n, j])), scale(int(w.exponents[o, j]))
                    d = np.float32(p * sa * sw)  # exact in float64, then one fp32 rounding
                    acc = np.float32(acc + d)
                out[n, o] = acc
    return out


def test_accumulation_is_sequential_fp32_by_block() -> None:
    fmt = get_format("msfp12")
    a = np.zeros((1, 48), np.float32)
    a[0, [0, 16, 32]] = 1.0
    w = np.zeros((1, 48), np.float32)
    w[0, 0] = 1.0
    w[0, [16, 32]] = 2.0**-24  # each block product is half an fp32 ulp of 1.0
    qa, qw = quantize(a, fmt), quantize(w, fmt)
    products = [np.float32(1.0), np.float32(2.0**-24), np.float32(2.0**-24)]
    in_float64 = np.float32(sum(float(p) for p in products))
    reversed_fp32 = np.float32(np.float32(products[2] + products[1]) + products[0])
    assert in_float64 == reversed_fp32 == np.float32(1 + 2.0**-23)
    for acc in (None, accumulate_blocks_reference, accumulate_blocks):
        assert bfp_matmul(qa, qw, accumulate=acc).tolist() == [[1.0]]  # ties to even, twice
    assert matmul(a, qw, fmt).tolist() == [[1.0]]
    assert _loop_matmul(qa, qw).tolist() == [[1.0]]


def test_accumulator_starts_at_positive_zero() -> None:
    fmt = get_format("msfp12")
    a = np.zeros((1, 16), np.float32)
    w = np.zeros((1, 16), np.float32)
    a[0, 0], w[0, 0] = -(2.0**-100), 2.0**-100  # the product -2**-200 rounds to -0.0 in fp32
    qa, qw = quantize(a, fmt), quantize(w, fmt)
    for acc in (None, accumulate_blocks_reference, accumulate_blocks):
        y = bfp_matmul(qa, qw, accumulate=acc)
        assert y[0, 0] == 0.0 and not np.signbit(y[0, 0])


def test_each_block_product_is_rounded_to_fp32() -> None:
    fmt = get_format("msfp12")
    a = np.zeros((1, 32), np.float32)
    w = np.zeros((1, 32), np.float32)
    a[0, 0] = a[0, 16] = 2.0**-75
    w[0, 0], w[0, 16] = 1.5 * 2.0**-73, 2.0**-75
    qa, qw = quantize(a, fmt), quantize(w, fmt)
    # block 0: 24 * 2**-77 * 2**-75 = 3 * 2**-149 (a subnormal); block 1: 16 * 2**-154 = 2**-150,
    # which rounds to +0.0 on its own (a tie to even); added unrounded it would make a tie
    # 3.5 * 2**-149 that rounds to 4 * 2**-149
    for acc in (None, accumulate_blocks_reference, accumulate_blocks):
        assert bfp_matmul(qa, qw, accumulate=acc)[0, 0] == np.float32(3 * 2.0**-149)
    assert _loop_matmul(qa, qw)[0, 0] == np.float32(3 * 2.0**-149)


@pytest.mark.parametrize("fmt", [get_format("msfp8", 16), get_format("msfp9", 128),
                                 get_format("msfp12"), get_format("msfp16"),
                                 get_format("mxint8")], ids=_fid)
def test_bfp_matmul_equals_python_loop(fmt: Format) -> None:
    rng = np.random.default_rng(21)
    k = 8 * fmt.block_size + 5
    # block magnitudes spread widely, so the order and precision of the sum matter
    nb = -(-k // fmt.block_size)

    def spread(rows: int) -> np.ndarray:
        e = rng.integers(-20, 21, (rows, nb))
        return np.repeat(2.0**e, fmt.block_size, axis=1)[:, :k]

    a = (rng.standard_normal((4, k)) * spread(4)).astype(np.float32)
    w = (rng.standard_normal((6, k)) * spread(6)).astype(np.float32)
    qa, qw = quantize(a, fmt), quantize(w, fmt)
    y = bfp_matmul(qa, qw)
    assert np.array_equal(y, _loop_matmul(qa, qw))
    # the same block products summed in float64 and rounded once differ somewhere
    b = fmt.block_size
    parts = np.einsum("njb,ojb->jno", qa.q.reshape(4, -1, b).astype(np.float64),
                      qw.q.reshape(6, -1, b).astype(np.float64))
    sa = np.ldexp(1.0, qa.exponents.astype(int) - fmt.exponent_bias - fmt.mantissa_bits + 1)
    sw = np.ldexp(1.0, qw.exponents.astype(int) - fmt.exponent_bias - fmt.mantissa_bits + 1)
    d = (parts * sa.T[:, :, None] * sw.T[:, None, :]).astype(np.float32).astype(np.float64)
    assert np.any(d.sum(axis=0).astype(np.float32) != y)


# --- matmul --------------------------------------------------------------------------------


def test_fp32_matmul_is_an_fp32_gemm() -> None:
    rng = np.random.default_rng(8)
    a = rng.random((6, 50), np.float32)
    w = rng.random((7, 50), np.float32)
    y = matmul(a, w, FP32)
    assert y.dtype == np.float32 and y.shape == (6, 7)
    np.testing.assert_allclose(y, np.matmul(a, w.T), rtol=1e-5, atol=0)
    np.testing.assert_allclose(y, a.astype(np.float64) @ w.T.astype(np.float64), rtol=1e-5,
                               atol=0)


def test_matmul_operand_checks() -> None:
    fmt = get_format("msfp12")
    a = np.ones((2, 20), np.float32)
    with pytest.raises(ValueError, match="quantized"):
        matmul(a, quantize(a, fmt), FP32)
    with pytest.raises(ValueError, match="msfp12"):
        matmul(a, a, fmt)
    with pytest.raises(ValueError, match="formats differ"):
        bfp_matmul(quantize(a, fmt), quantize(a, get_format("msfp16")))
    with pytest.raises(ValueError, match="reduction lengths"):
        bfp_matmul(quantize(a, fmt), quantize(np.ones((2, 40), np.float32), fmt))


@pytest.mark.parametrize("rounding", list(Rounding))
def test_bfp_matmul_quantizes_activations_along_k(rounding: Rounding) -> None:
    fmt = get_format("msfp16")
    rng = np.random.default_rng(10)
    a = rng.standard_normal((3, 40)).astype(np.float32)
    qw = quantize(rng.standard_normal((5, 40)).astype(np.float32), fmt)
    y = matmul(a, qw, fmt, rounding, seed=4)
    assert np.array_equal(y, bfp_matmul(quantize(a, fmt, rounding, 4), qw))
    assert not np.array_equal(y, matmul(a, dequantize(qw), FP32))


def test_worked_example_in_docs() -> None:
    """The msfp12 example of docs/numerics.md, number for number."""
    fmt = get_format("msfp12")
    x = np.zeros((1, 19), np.float32)
    x[0, :8] = [0.8, -0.3, 0.02, 2.7, -1.4, 0.0, 0.51, 0.125]
    x[0, 16:] = [0.001, -0.0007, 0.0003]
    w = np.zeros((1, 19), np.float32)
    w[0, :8] = 0.5
    w[0, 16:] = 1000.0
    qa, qw = quantize(x, fmt), quantize(w, fmt)
    assert qa.exponents.tolist() == [[128, 117]] and qw.exponents.tolist() == [[126, 136]]
    assert qa.q[0, :8].tolist() == [2, -1, 0, 5, -3, 0, 1, 0]
    assert qa.q[0, 16:19].tolist() == [4, -3, 1] and qw.q[0, 16:19].tolist() == [7, 7, 7]
    assert bfp_matmul(qa, qw).tolist() == [[1.4375]]
    assert pack(qa).hex(" ") == "80 75 29 05 b0 10 00 00 00 00 4b 10 00 00 00 00 00 00"
