# SPDX-License-Identifier: Apache-2.0
"""Tests for npusim.simulator.numerics: formats, quantization, rounding, packing, and the numba
quantizer against its reference. The block dot product is in ``test_numerics_matmul.py``.

Expected values are computed here from the documented definitions (``docs/numerics.md``)
with Python integers and ``fractions``, never by calling the code under test.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from numerics_cases import DIFF_FORMATS, MX_FORMATS, fid, nasty

from npusim.simulator.numerics import (
    FORMAT_NAMES,
    FP32,
    STOCHASTIC_FRACTION_BITS,
    BfpTensor,
    Format,
    Rounding,
    dequantize,
    fake_quantize,
    get_format,
    pack,
    packed_size,
    quantize,
    quantize_reference,
    stochastic_bits,
    unpack,
)

BFP_NAMES = tuple(n for n in FORMAT_NAMES
                  if n != "fp32" and not get_format(n).is_minifloat)
QUANTIZERS = {"fast": quantize, "reference": quantize_reference}
M32 = 0xFFFFFFFF


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


def test_format_names_are_fp32_the_bfp_and_the_mx_formats() -> None:
    assert FORMAT_NAMES[0] == "fp32"
    assert set(FORMAT_NAMES) == {"fp32", *EXPECTED_FORMATS, "mxfp8_e4m3", "mxfp8_e5m2",
                                 "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4_e2m1"}
    assert set(BFP_NAMES) == set(EXPECTED_FORMATS)


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
                                 get_format("msfp12"), get_format("mxint8")], ids=fid)
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


@pytest.mark.parametrize("fmt", DIFF_FORMATS[2:], ids=fid)
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


@pytest.mark.parametrize("fmt", DIFF_FORMATS[2:], ids=fid)
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


@pytest.mark.parametrize("fmt", DIFF_FORMATS[2:], ids=fid)
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


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=fid)
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


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=fid)
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


@pytest.mark.parametrize("fmt", DIFF_FORMATS + MX_FORMATS, ids=fid)
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
                                 get_format("mxint8")], ids=fid)
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


@pytest.mark.parametrize("fmt", [get_format("msfp12"), get_format("mxint8")], ids=fid)
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


@pytest.mark.parametrize("fmt", DIFF_FORMATS, ids=fid)
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


@pytest.mark.parametrize("fmt", DIFF_FORMATS + MX_FORMATS, ids=fid)
@pytest.mark.parametrize("rounding", list(Rounding))
@pytest.mark.parametrize("shape", [(5, 37), (3, 4, 129), (64, 300), (300,)])
def test_quantize_matches_reference(fmt: Format, rounding: Rounding,
                                    shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape) + fmt.block_size + fmt.mantissa_bits)
    x = nasty(rng, shape, fmt)
    x.reshape(-1)[x.size // 2] = np.nan
    fast = quantize(x, fmt, rounding, seed=5)
    ref = quantize_reference(x, fmt, rounding, seed=5)
    assert fast.shape == ref.shape == shape
    assert fast.q.dtype == ref.q.dtype == fmt.q_dtype
    assert fast.exponents.dtype == ref.exponents.dtype == np.uint8
    assert np.array_equal(fast.q, ref.q)
    assert np.array_equal(fast.exponents, ref.exponents)
    # the data reached the corners: NaN blocks, clamped and ordinary blocks, nonzero codes
    assert np.any(ref.exponents == fmt.nan_exponent)
    assert np.any(ref.q != 0) and np.any(ref.exponents != fmt.nan_exponent)
