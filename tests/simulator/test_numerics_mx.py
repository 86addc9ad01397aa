# SPDX-License-Identifier: Apache-2.0
"""The OCP Microscaling (MX) v1.0 formats of npusim.simulator.numerics.

Every element code of every minifloat type is decoded here from the spec's bit layout
(sign, exponent field, mantissa field, bias, subnormals, special codes) and compared with
the module's tables; every finite code must come back from quantization under several
E8M0 scales; and the spec's conversion (Algorithm 1 of OCP MX v1.0, section 6.3: shared
exponent ``floor(log2(max |V_i|)) - emax_elem``, elements ``V_i / X`` rounded to the
element type with normal numbers clamped to its largest magnitude) is written out below
element by element in Python fractions and compared bit for bit with both quantizers, for
ties to even and ties away. Nothing here calls the code under test to make an expectation.
"""

from __future__ import annotations

import bisect
from fractions import Fraction

import numpy as np
import pytest
from numerics_cases import MX_FORMATS, fid, nasty

from npusim.simulator import minifloat
from npusim.simulator.numerics import (
    BfpTensor,
    Format,
    Rounding,
    block_scales,
    dequantize,
    get_format,
    pack,
    packed_size,
    quantize,
    quantize_reference,
    unpack,
)

QUANTIZERS = {"fast": quantize, "reference": quantize_reference}
TIES = [Rounding.NEAREST_EVEN, Rounding.NEAREST_AWAY]

#: The element types as OCP MX v1.0 tables them (section 5.3, and OFP8 for the FP8 types):
#: exponent bits, mantissa bits, bias, emax_elem, max normal, min normal, min subnormal.
SPEC = {
    "mxfp8_e4m3": (4, 3, 7, 8, 448, Fraction(1, 2**6), Fraction(1, 2**9)),
    "mxfp8_e5m2": (5, 2, 15, 15, 57344, Fraction(1, 2**14), Fraction(1, 2**16)),
    "mxfp6_e3m2": (3, 2, 3, 4, 28, Fraction(1, 4), Fraction(1, 16)),
    "mxfp6_e2m3": (2, 3, 1, 2, Fraction(15, 2), 1, Fraction(1, 8)),
    "mxfp4_e2m1": (2, 1, 1, 2, 6, 1, Fraction(1, 2)),
}


def spec_value(name: str, code: int) -> Fraction | str:
    """The value of an element code from the bit layout: ``s.E.M``, IEEE-style with
    subnormals; E4M3's S.1111.111 is NaN; E5M2's S.11111.00 is infinity and S.11111.xx
    (xx != 0) NaN; FP6 and FP4 have neither."""
    ebits, mbits, bias = SPEC[name][:3]
    sign = code >> (ebits + mbits)
    e, m = (code >> mbits) & ((1 << ebits) - 1), code & ((1 << mbits) - 1)
    if name == "mxfp8_e4m3" and e == 15 and m == 7:
        return "nan"
    if name == "mxfp8_e5m2" and e == 31:
        return ("-inf" if sign else "inf") if m == 0 else "nan"
    if e == 0:
        mag = Fraction(m, 2**mbits) * Fraction(2) ** (1 - bias)
    else:
        mag = (1 + Fraction(m, 2**mbits)) * Fraction(2) ** (e - bias)
    return -mag if sign else mag


def finite_magnitudes(name: str) -> list[tuple[Fraction, int]]:
    """``(value, code)`` of every finite non-negative code, ascending."""
    ebits, mbits = SPEC[name][:2]
    out = [(spec_value(name, c), c) for c in range(1 << (ebits + mbits))]
    return sorted((v, c) for v, c in out if isinstance(v, Fraction))


def _floor_log2(v: Fraction) -> int:
    e = v.numerator.bit_length() - v.denominator.bit_length()
    while Fraction(2) ** e > v:
        e -= 1
    while Fraction(2) ** (e + 1) <= v:
        e += 1
    return e


def spec_quantize_block(name: str, block: list[float], rounding: Rounding
                        ) -> tuple[int, list[int]]:
    """Algorithm 1 of the spec for one block: ``(E8M0 byte, element values in units of the
    smallest subnormal)``. A NaN or an infinity makes the scale NaN (0xFF) and npusim
    stores zero elements; an all-zero block keeps the smallest scale (byte 0)."""
    emax, max_normal, min_sub = SPEC[name][3], Fraction(SPEC[name][4]), SPEC[name][6]
    if any(not np.isfinite(v) for v in block):
        return 0xFF, [0] * len(block)
    vals = [Fraction(v) for v in block]
    amax = max(abs(v) for v in vals)
    if amax == 0:
        return 0, [0] * len(block)
    shared = min(max(_floor_log2(amax) - emax, -127), 127)
    x = Fraction(2) ** shared
    table = finite_magnitudes(name)
    mags = [v for v, _ in table]
    units = []
    for v in vals:
        r = abs(v) / x
        if r >= max_normal:  # "clamping normal numbers": the largest magnitude, sign kept
            p = max_normal
        else:
            i = bisect.bisect_left(mags, r)
            if mags[i] == r:
                p = r
            else:
                (lo, lo_code), (hi, _) = table[i - 1], table[i]
                if r - lo != hi - r:
                    p = lo if r - lo < hi - r else hi
                elif rounding == Rounding.NEAREST_AWAY:
                    p = hi
                else:  # ties to the code whose last bit is 0
                    p = lo if lo_code % 2 == 0 else hi
        u = p / min_sub
        assert u.denominator == 1
        units.append(-int(u) if v < 0 else int(u))
    return shared + 127, units


# --- the element types and the formats ------------------------------------------------


@pytest.mark.parametrize("name", list(SPEC))
def test_every_code_decodes_as_the_bit_layout_says(name: str) -> None:
    el = get_format(name).element
    ebits, mbits, bias, emax, max_normal, min_normal, min_sub = SPEC[name]
    assert (el.exponent_bits, el.mantissa_bits, el.bias, el.emax) == (ebits, mbits, bias, emax)
    assert el.bits == 1 + ebits + mbits
    table = el.decode_table()
    assert table.shape == (2**el.bits,)
    for code in range(2**el.bits):
        want = spec_value(name, code)
        got = float(table[code])
        if want == "nan":
            assert np.isnan(got), hex(code)
        elif want in ("inf", "-inf"):
            assert got == float(want), hex(code)
        else:
            assert Fraction(got) == want, hex(code)
    finite = [v for v, _ in finite_magnitudes(name)]
    assert finite[-1] == max_normal == Fraction(el.max_normal)
    assert finite[1] == min_sub and Fraction(2) ** el.unit_exponent == min_sub
    assert min(v for v in finite if v >= min_normal) == min_normal
    assert el.max_units == max_normal / min_sub
    # special values: E4M3 has one NaN per sign, E5M2 two infinities and six NaNs
    nans = int(np.isnan(table).sum())
    infs = int(np.isinf(table).sum())
    assert (nans, infs) == {"mxfp8_e4m3": (2, 0), "mxfp8_e5m2": (6, 2)}.get(name, (0, 0))


@pytest.mark.parametrize("name", list(SPEC))
def test_mx_format_fields(name: str) -> None:
    fmt = get_format(name, native_dim=128)
    el = fmt.element
    assert fmt.is_minifloat and not fmt.is_fp32
    assert (fmt.block_size, fmt.exponent_bits, fmt.exponent_bias) == (32, 8, 127)
    assert (fmt.emin, fmt.emax, fmt.nan_exponent) == (-127, 127, 255)  # E8M0
    assert fmt.element_bits == el.bits
    assert fmt.bits_per_element == el.bits + 8 / 32
    assert fmt.scale_shift == -el.unit_exponent and fmt.emax_elem == el.emax
    assert np.iinfo(fmt.q_dtype).max >= fmt.max_mantissa == el.max_units
    # one block: a scale byte and 32 codes
    assert packed_size((2, 33), fmt) == 2 * 2 + -(-2 * 64 * el.bits // 8)


# --- every code under several E8M0 scales ---------------------------------------------


def _codes_of(data: bytes, fmt: Format, count: int, nexp: int) -> list[int]:
    """The element codes of a packed tensor, read MSB first after the scale bytes."""
    bits = "".join(format(b, "08b") for b in data[nexp:])
    w = fmt.element_bits
    return [int(bits[i * w:(i + 1) * w], 2) for i in range(count)]


@pytest.mark.parametrize("name", list(SPEC))
def test_every_code_round_trips_under_every_scale(name: str) -> None:
    fmt = get_format(name)
    el = fmt.element
    table = finite_magnitudes(name)
    codes = [(c, v) for v, c in table] + [(c | 1 << (el.bits - 1), -v) for v, c in table if v]
    for e in sorted({-127, -126, -60, -1, 0, 1, 60, 127 - el.emax}):
        x = np.zeros((len(codes), 32), np.float32)
        x[:, 0] = [float(v * Fraction(2) ** e) for _, v in codes]
        x[:, 1] = 2.0 ** (el.emax + e)  # the block maximum's binade fixes the scale at 2**e
        assert [Fraction(float(v)) for v in x[:, 0]] == [v * Fraction(2) ** e
                                                          for _, v in codes]
        units = [int(v / Fraction(2) ** el.unit_exponent) for _, v in codes]
        for kind, qz in QUANTIZERS.items():
            for rounding in TIES:
                t = qz(x, fmt, rounding)
                assert t.q.dtype == fmt.q_dtype
                assert t.q[:, 0].tolist() == units, (kind, rounding, e)
                assert np.all(t.exponents == e + 127), (kind, rounding, e)
        t = quantize(x, fmt)
        assert [Fraction(float(v)) for v in dequantize(t)[:, 0]] == [
            v * Fraction(2) ** e for _, v in codes]
        data = pack(t)
        got = _codes_of(data, fmt, x.size, len(codes))
        assert got[::32] == [c for c, _ in codes], e  # the spec's codes, S.E.M
        u = unpack(data, x.shape, fmt)
        assert np.array_equal(u.q, t.q) and np.array_equal(u.exponents, t.exponents)


@pytest.mark.parametrize("name", list(SPEC))
def test_e8m0_extremes_and_nan_scale_decode(name: str) -> None:
    fmt = get_format(name)
    el = fmt.element
    q = np.zeros((3, 32), fmt.q_dtype)
    q[:, 0] = 1  # the smallest subnormal
    q[:, 1] = -el.max_units
    t = BfpTensor(fmt, q, np.array([[0], [254], [255]], np.uint8), 32)
    scales = block_scales(t)
    assert scales[0, 0] == 2.0 ** (-127 + el.unit_exponent)
    assert scales[1, 0] == 2.0 ** (127 + el.unit_exponent)
    assert np.isnan(scales[2, 0])
    out = dequantize(t)
    assert Fraction(float(out[0, 0])) == Fraction(2) ** (-127 + el.unit_exponent)
    assert Fraction(float(out[0, 1])) == -Fraction(el.max_normal) * Fraction(2) ** -127
    assert Fraction(float(out[1, 0])) == Fraction(2) ** (127 + el.unit_exponent)
    assert out[1, 1] == -np.inf  # max normal * 2**127 is past fp32: the decode overflows
    assert np.all(np.isnan(out[2]))


def test_unpack_refuses_infinity_and_nan_codes() -> None:
    for name, code in (("mxfp8_e4m3", 0x7F), ("mxfp8_e4m3", 0xFF), ("mxfp8_e5m2", 0x7C),
                       ("mxfp8_e5m2", 0xFE)):
        fmt = get_format(name)
        data = bytes([127, code]) + bytes(31)
        with pytest.raises(ValueError, match=f"{code:#04x}"):
            unpack(data, (1, 32), fmt)
    fmt = get_format("mxfp8_e4m3")  # negative zero is accepted and stored as +0
    u = unpack(bytes([127, 0x80]) + bytes(31), (1, 32), fmt)
    assert np.all(u.q == 0) and pack(u) == bytes([127]) + bytes(32)


# --- the spec's conversion, written out -------------------------------------------------


def _adversarial(name: str, rng: np.random.Generator) -> np.ndarray:
    """Blocks of ties, near-ties, overflow, underflow, fp32 subnormals and extremes."""
    el = get_format(name).element
    mags = [v for v, _ in finite_magnitudes(name)]
    mids = [(a + b) / 2 for a, b in zip(mags, mags[1:])]
    over = [Fraction(el.max_normal) + k * (Fraction(2) ** (el.emax + 1) - Fraction(el.max_normal))
            / 4 for k in (1, 2, 3)]  # between max normal and the next binade
    blocks = []
    for e in (-127, -126, -3, 0, 5, 127 - el.emax):
        x2 = Fraction(2) ** e
        pool = [float(m * x2) for m in mids + over]
        pool += [float(np.nextafter(np.float32(float(m * x2)), np.float32(0))) for m in mids]
        pool += [float(np.nextafter(np.float32(float(m * x2)), np.float32(np.inf)))
                 for m in mids]
        pool += [float(mags[1] * x2 / 2), float(mags[1] * x2 / 4), float(mags[1] * x2 * 3 / 4)]
        pool = [v for v in pool if np.isfinite(np.float32(v))]
        for start in range(0, len(pool), 31):
            vals = [2.0 ** (el.emax + e)] + pool[start:start + 31]
            b = np.zeros(32, np.float32)
            b[: len(vals)] = vals
            b[rng.random(32) < 0.5] *= -1
            blocks.append(b)
    f32 = np.array([0x00000001, 0x807FFFFF, 0x00400000, 0x7F7FFFFF, 0xFF7FFFFF, 0x00800000,
                    0x80000000, 0x3F800000], np.uint32).view(np.float32)
    blocks.append(np.resize(f32, 32))
    blocks.append(np.resize(f32[:3], 32))  # subnormals only: the scale clamps at 2**-127
    blocks.append(np.zeros(32, np.float32))
    blocks.append(np.full(32, -0.0, np.float32))
    nonfinite = rng.standard_normal(32).astype(np.float32)
    nonfinite[7] = np.inf
    blocks.append(nonfinite)
    return np.stack(blocks)


@pytest.mark.parametrize("name", list(SPEC))
@pytest.mark.parametrize("rounding", TIES)
@pytest.mark.parametrize("kind", QUANTIZERS)
def test_quantize_is_the_spec_algorithm(name: str, rounding: Rounding, kind: str) -> None:
    fmt = get_format(name)
    rng = np.random.default_rng(len(name) + len(rounding))
    random = nasty(rng, (24, 70), fmt, row_exp=(-150, 120))
    adversarial = _adversarial(name, rng)
    for x in (random, adversarial):
        t = QUANTIZERS[kind](x, fmt, rounding)
        xp = np.zeros(t.q.shape, np.float32)
        xp[:, : x.shape[1]] = x
        for row in range(xp.shape[0]):
            for j in range(xp.shape[1] // 32):
                block = [float(v) for v in xp[row, j * 32:(j + 1) * 32]]
                stored, units = spec_quantize_block(name, block, rounding)
                assert int(t.exponents[row, j]) == stored, (row, j, block)
                assert t.q[row, j * 32:(j + 1) * 32].tolist() == units, (row, j, block)
    t = quantize_reference(adversarial, fmt, rounding)
    assert np.any(t.q != 0) and np.any(t.exponents == 255) and np.any(t.exponents == 0)


def test_ties_even_and_away_differ_as_the_spec_and_microxcaling_say() -> None:
    """E2M1 by hand: 0.25 (between 0 and 0.5), 1.25, 2.5 and 5.0 are ties; even goes to
    the even code, away (microxcaling's ``round="nearest"``) to the larger magnitude."""
    fmt = get_format("mxfp4_e2m1")
    x = np.zeros(32, np.float32)
    x[:6] = [4.0, 0.25, 1.25, 2.5, 5.0, -0.75]  # amax 4: shared exponent 2 - 2 = 0
    even = quantize(x, fmt, Rounding.NEAREST_EVEN)
    away = quantize(x, fmt, Rounding.NEAREST_AWAY)
    assert even.exponents.tolist() == away.exponents.tolist() == [127]
    assert dequantize(even)[:6].tolist() == [4.0, 0.0, 1.0, 2.0, 4.0, -1.0]
    assert dequantize(away)[:6].tolist() == [4.0, 0.5, 1.5, 3.0, 6.0, -1.0]
    assert np.array_equal(quantize_reference(x, fmt, Rounding.NEAREST_AWAY).q, away.q)


def test_saturation_clamps_normal_numbers() -> None:
    """Values past the largest normal clamp to it (OCP MX 6.3): E4M3 never makes its NaN
    code and E5M2 never an infinity from finite inputs."""
    for name, top in (("mxfp8_e4m3", 448.0), ("mxfp8_e5m2", 57344.0), ("mxfp6_e3m2", 28.0),
                      ("mxfp6_e2m3", 7.5), ("mxfp4_e2m1", 6.0)):
        fmt = get_format(name)
        x = np.zeros(32, np.float32)
        x[:3] = [np.nextafter(np.float32(2.0 ** (fmt.emax_elem + 1)), np.float32(0)), -top,
                 top * 1.03]
        for rounding in TIES:
            t = quantize(x, fmt, rounding)
            assert t.exponents.tolist() == [127], name
            assert dequantize(t)[:3].tolist() == [top, -top, top], name
            assert max(_codes_of(pack(t), fmt, 32, 1)) & ((1 << fmt.mantissa_bits) - 1) \
                == fmt.element.max_code


def test_mxint8_is_the_spec_int8() -> None:
    """MXINT8: INT8 elements k * 2**-6 (two's complement), emax_elem 0, E8M0 scale. The
    conversion clamps to the largest magnitude 127/64 with its sign, so the code -128
    (-2.0) is never made: -1.99 * X rounds to -128/64 and clamps to -127/64."""
    fmt = get_format("mxint8")
    assert (fmt.block_size, fmt.exponent_bias, fmt.emax_elem, fmt.scale_shift) == (32, 127, 0, 6)
    x = np.zeros((1, 32), np.float32)
    x[0, :4] = [-1.995, 1.0, 1 / 64, -0.5 / 64]  # amax in [1, 2): X = 1
    for qz in QUANTIZERS.values():
        for rounding in TIES:
            t = qz(x, fmt, rounding)
            assert t.exponents.tolist() == [[127]]
            tie = 0 if rounding == Rounding.NEAREST_EVEN else -1
            assert t.q[0, :4].tolist() == [-127, 64, 1, tie]
    ks = np.arange(-127, 128)
    x = np.zeros((ks.size, 32), np.float32)
    x[:, 0] = ks / 64 * 2.0**-20
    x[:, 1] = 2.0**-20
    t = quantize(x, fmt)
    assert t.q[:, 0].tolist() == ks.tolist() and np.all(t.exponents == 127 - 20)


# --- numba against numpy ---------------------------------------------------------------


@pytest.mark.parametrize("fmt", MX_FORMATS, ids=fid)
@pytest.mark.parametrize("rounding", TIES)
def test_numba_quantizer_matches_numpy_on_adversarial_blocks(fmt: Format,
                                                             rounding: Rounding) -> None:
    rng = np.random.default_rng(3)
    x = _adversarial(fmt.name, rng)
    with np.errstate(over="ignore"):
        huge = (rng.standard_normal((4, 32)) * 2.0**127).astype(np.float32)
    tiny = (rng.standard_normal((4, 32)) * 2.0**-140).astype(np.float32)
    for data in (x, huge, tiny, -x):
        fast, ref = quantize(data, fmt, rounding), quantize_reference(data, fmt, rounding)
        assert np.array_equal(fast.q, ref.q) and np.array_equal(fast.exponents, ref.exponents)


@pytest.mark.parametrize("fmt", MX_FORMATS, ids=fid)
def test_stochastic_rounding_picks_a_grid_neighbour(fmt: Format) -> None:
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((16, 64)) * 3).astype(np.float32)
    t = quantize(x, fmt, Rounding.STOCHASTIC, seed=3)
    assert np.array_equal(t.q, quantize_reference(x, fmt, Rounding.STOCHASTIC, seed=3).q)
    assert np.array_equal(t.exponents, quantize(x, fmt).exponents)
    mags = np.array([v for v, _ in finite_magnitudes(fmt.name)], dtype=object)
    el = fmt.element
    up = quantize(x, fmt, Rounding.NEAREST_EVEN)
    moved = 0
    for r in range(x.shape[0]):
        for i in range(x.shape[1]):
            e = int(t.exponents[r, i // 32]) - 127
            a = abs(Fraction(float(x[r, i]))) / Fraction(2) ** e
            k = bisect.bisect_left(list(mags), a)
            near = {mags[min(k, len(mags) - 1)], mags[max(k - 1, 0)]}
            got = abs(Fraction(int(t.q[r, i]))) * Fraction(2) ** el.unit_exponent
            assert got in near, (r, i)
            moved += int(t.q[r, i] != up.q[r, i])
    assert moved > 0


def test_minifloat_grid_helper() -> None:
    assert minifloat.grid_steps(np.array([0.0, 7.0, 8.0, 15.9, 16.0, 1e6]), 3).tolist() == [
        0, 0, 0, 0, 1, 16]
