# SPDX-License-Identifier: Apache-2.0
"""Tests for the block dot product and its accumulation order in npusim.simulator.numerics.

Quantization, packing and rounding are tested in ``test_numerics.py``.

Expected values are computed here from the documented definitions (``docs/numerics.md``)
with Python integers and ``fractions``, never by calling the code under test.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from numerics_cases import DIFF_FORMATS, MX_FORMATS, fid, nasty

from npusim.simulator.numerics import (
    FORMAT_NAMES,
    FP32,
    BfpTensor,
    Format,
    Rounding,
    accumulate_blocks,
    accumulate_blocks_reference,
    bfp_matmul,
    dequantize,
    get_format,
    matmul,
    pack,
    quantize,
    quantize_reference,
)

BFP_NAMES = tuple(n for n in FORMAT_NAMES
                  if n != "fp32" and not get_format(n).is_minifloat)
QUANTIZERS = {"fast": quantize, "reference": quantize_reference}
M32 = 0xFFFFFFFF


def _matmul_operands(fmt: Format, n: int, o: int, k: int, seed: int
                     ) -> tuple[BfpTensor, BfpTensor]:
    rng = np.random.default_rng(seed)
    a = nasty(rng, (n, k), fmt, nonfinite=False, row_exp=(-20, 20))
    w = nasty(rng, (o, k), fmt, nonfinite=False, row_exp=(-20, 20))
    a[0, 3] = np.nan
    w[1, k - 1] = np.inf
    with np.errstate(over="ignore"):  # row 1 overflows the fp32 accumulator
        a[1, :] *= np.float32(2.0**90)
    return quantize(a, fmt), quantize(w, fmt)


@pytest.mark.parametrize("fmt", DIFF_FORMATS + MX_FORMATS, ids=fid)
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
                                 get_format("mxint8")], ids=fid)
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


def _f32_nearest_even(v: Fraction) -> np.float32:
    """The fp32 number nearest to ``v``, ties to an even last bit (beyond the largest
    finite number by half an ulp or more: infinity), found by comparing neighbours."""
    guess = np.float32(float(v)) if abs(v) < 2**129 else np.float32(np.sign(v) * np.inf)
    best = None
    for cand in (np.nextafter(guess, np.float32(-np.inf)), guess,
                 np.nextafter(guess, np.float32(np.inf))):
        if not np.isfinite(cand):
            continue
        d = abs(Fraction(float(cand)) - v)
        even = int(np.array(cand, np.float32).view(np.int32)) % 2 == 0
        if best is None or d < best[0] or (d == best[0] and even):
            best = (d, cand)
    top = Fraction(float(np.finfo(np.float32).max))
    if abs(v) >= top + Fraction(2) ** 103:  # half an ulp past the largest: overflow
        return np.float32(np.inf) if v > 0 else np.float32(-np.inf)
    return np.float32(best[1])


@pytest.mark.parametrize("fmt", MX_FORMATS, ids=fid)
def test_mx_block_product_is_exact_then_rounded_once(fmt: Format) -> None:
    """The definition with Python integers and fractions: ``p`` exact (E5M2's needs up to
    72 bits), ``d = fp32(p * 2**(ea + ew - 2 * shift))`` rounded once, ``acc`` in fp32."""
    rng = np.random.default_rng(31)
    el = fmt.element
    k = 4 * 32

    def spread(rows: int) -> np.ndarray:  # each block spans the element type's whole range
        e = rng.integers(el.unit_exponent, el.emax + 1, (rows, k))
        x = rng.choice([-1.0, 1.0], (rows, k)) * rng.uniform(1, 2, (rows, k)) * 2.0**e
        x[:, ::32] = 2.0**el.emax
        return (x * 2.0 ** rng.integers(-60, 60, (rows, 1))).astype(np.float32)

    qa, qw = quantize(spread(3), fmt), quantize(spread(4), fmt)
    got = bfp_matmul(qa, qw)
    for acc in (accumulate_blocks_reference, accumulate_blocks):
        assert np.array_equal(bfp_matmul(qa, qw, accumulate=acc), got)
    shift = fmt.scale_shift
    for n in range(3):
        for o in range(4):
            acc = np.float32(0.0)
            for j in range(4):
                sl = slice(j * 32, (j + 1) * 32)
                p = sum(int(x) * int(y) for x, y in zip(qa.q[n, sl], qw.q[o, sl]))
                e = int(qa.exponents[n, j]) + int(qw.exponents[o, j]) - 254 - 2 * shift
                acc = np.float32(acc + _f32_nearest_even(Fraction(p) * Fraction(2) ** e))
            assert got[n, o] == acc, (n, o)


def test_e5m2_block_product_needs_every_bit() -> None:
    """``p = 2**62 + 2**38 + 1``: under the scales 2**-32 it is a hair above the midpoint
    between two fp32 neighbours, 2**30 and 2**30 + 2**7. float64 drops the last 1 and
    would round the tie to even (down); the exact product rounds up."""
    fmt = get_format("mxfp8_e5m2")
    q = np.zeros((2, 32), np.int64)
    q[0, :3] = [2**31, 2**19, 1]
    q[1, :3] = [-(2**31), -(2**19), -1]
    ones = np.zeros((1, 32), np.int64)
    ones[0, :3] = [2**31, 2**19, 1]
    a = BfpTensor(fmt, q, np.full((2, 1), 127, np.uint8), 32)
    w = BfpTensor(fmt, ones, np.full((1, 1), 127, np.uint8), 32)
    want = [[2.0**30 + 2**7], [-(2.0**30 + 2**7)]]
    assert float(np.float32(np.float64(2**62 + 2**38 + 1) * 2.0**-32)) == 2.0**30
    for acc in (None, accumulate_blocks_reference, accumulate_blocks):
        assert bfp_matmul(a, w, accumulate=acc).tolist() == want


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
