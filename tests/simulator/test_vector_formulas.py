# SPDX-License-Identifier: Apache-2.0
"""The vector unit's compiled float64 formulas against the numpy formulas that define
them, bit for bit: the hard swish's division, the sigmoid and SiLU kernel and its
boundary cases, erf and the GELU, LayerNorm and softmax; and their portable builds (the
other kernels: ``test_vector_ops.py``)."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numba
import numpy as np
import pytest
from vector_cases import inputs, same_bits

from npusim.simulator import _fast, kernels, vector
from npusim.simulator.vector import unary_reference

F32 = np.float32


@numba.njit
def _sixths(x, out):  # pragma: no cover - compiled
    for k in range(x.size):
        out[k] = _fast._sixth(np.float64(x[k]))


def test_the_swish_divides_by_six_exactly_without_a_division():
    """``_fast._sixth`` (a product by 1/6 corrected by its exact remainder) is ``x / 6.0``
    in float64 on every 257th float32 of [-6, 6] (checked once on all of them); the
    product alone differs on about a third of these."""
    bits = np.arange(0, F32(6.0).view(np.int32) + 1, 257, dtype=np.int32)
    x = np.concatenate([bits.view(F32), -bits.view(F32)])
    got = np.empty(x.size, np.float64)
    _sixths(x, got)
    assert np.array_equal(got, x.astype(np.float64) / 6.0)
    assert (x.astype(np.float64) * (1.0 / 6.0) != x.astype(np.float64) / 6.0).mean() > 0.2


def test_hard_swish_is_the_numpy_formula_on_a_dense_sample_of_float32():
    """The swish's ``x / 6`` is a product corrected by a fused multiply-add (equal to the
    division on every float32, checked over all of them once): here on every 4099th bit
    pattern (a million values, every exponent) and every float32 within 64 ulps of the
    points where the hard swish bends (+-3) or its product is exact (+-6, 0)."""
    bits = np.arange(0, 1 << 32, 4099, dtype=np.uint64).astype(np.uint32)
    near = [np.nextafter(F32(v), F32(np.inf if k > 0 else -np.inf))
            for v in (3.0, -3.0, 6.0, -6.0, 1.5, -1.5) for k in (1, -1)]
    x = np.concatenate([bits.view(F32), np.array(near, F32)])
    for v in (3.0, -3.0, 6.0, -6.0, 0.0):
        start = F32(v).view(np.int32)
        x = np.concatenate([x, np.arange(start - 64, start + 64, dtype=np.int32).view(F32)])
    with np.errstate(all="ignore"):
        ref = unary_reference("hard_swish", x, 0.0, 0.0)
    got = kernels.unary("hard_swish", x, 0.0, 0.0)
    fin = ~np.isnan(ref)
    assert np.array_equal(np.isnan(got), ~fin)
    assert np.array_equal(got[fin].view(np.int32), ref[fin].view(np.int32))


@pytest.mark.parametrize("scale", [0.02, 1.0, 30.0, 1000.0])
@pytest.mark.parametrize("margin", [None, 0.25])
def test_sigmoid_kernel_is_the_formula_bit_for_bit(scale, margin, monkeypatch):
    """The sigmoid's own float64 exp gives numpy's formula's bits on 300,000 values of
    every magnitude (past the exp's range, not finite, subnormal); with a wide margin every
    element takes the formula's path, and still gives them."""
    from npusim.simulator import _sigmoid
    if margin is not None:
        monkeypatch.setattr(_sigmoid, "SIGMOID_MARGIN", margin)
    x = inputs(5, 300_000, scale)
    x[::997] = 1e-40
    ref = unary_reference("sigmoid", x)
    assert same_bits(kernels.unary("sigmoid", x), ref)
    into, inplace = np.empty(3001, F32), x[:3001].copy()
    kernels.unary("sigmoid", x[:3001], 0.0, 0.0, into)
    kernels.unary("sigmoid", inplace, 0.0, 0.0, inplace)
    assert same_bits(into, ref[:3001]) and same_bits(inplace, ref[:3001])


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 4099, 70_001])
@pytest.mark.parametrize("margin", [None, 0.25])
def test_sigmoid_with_its_product_is_the_two_fp32_steps(n, margin, monkeypatch):
    """The SiLU pass (the sigmoid and ``x * sigmoid(x)`` at once) gives the two fp32 steps'
    bits, the product written into a new array, into ``x`` or into the sigmoid's own
    output, at every length around the kernel's 8-element vectors, with every element
    through the formula too."""
    from npusim.simulator import _sigmoid
    if margin is not None:
        monkeypatch.setattr(_sigmoid, "SIGMOID_MARGIN", margin)
    x = np.roll(inputs(11, n, 8.0), 21)[:n]  # the special values first
    sig = unary_reference("sigmoid", x)
    prod = kernels.alu("mul", x, sig)

    def ref(v):
        return unary_reference("sigmoid", v)

    s, p = np.empty_like(x), np.empty_like(x)
    _sigmoid.sigmoid(x, s, ref, product=p)
    assert same_bits(s, sig) and same_bits(p, prod)
    xi, s = x.copy(), np.empty_like(x)  # the product over x
    _sigmoid.sigmoid(xi, s, ref, product=xi)
    assert same_bits(s, sig) and same_bits(xi, prod)
    s = np.empty_like(x)  # over the sigmoid
    _sigmoid.sigmoid(x, s, ref, product=s)
    assert same_bits(s, prod)


@pytest.mark.parametrize("rows,cols,channels", [(300, 96, 0), (7, 768, 0), (10, 1, 0),
                                               (12, 300, 4), (6, 35, 3), (3, 129, 0)])
def test_norm_is_the_float64_formula_bit_for_bit(rows: int, cols: int, channels: int) -> None:
    """The compiled pass gives :func:`vector.norm_reference`'s bits: rows of every
    length around numpy's pairwise blocks (8, 128), per-column and per-row (instance)
    scales, NaN, infinities, huge and constant rows, eps 0."""
    rng = np.random.default_rng(rows * cols)
    x = rng.permutation(np.resize(inputs(rows, rows * cols, 3.0), rows * cols)).reshape(rows, cols)
    x[0] = 3.0  # a constant row: variance 0
    x[-1] = (rng.standard_normal(cols) * 1e19).astype(F32)
    n = channels or cols
    scale, bias = rng.standard_normal(n).astype(F32), rng.standard_normal(n).astype(F32)
    for eps in (1e-5, 0.0):
        with np.errstate(all="ignore"):
            want = vector.norm_reference(x, scale, bias, eps, channels)
        got = vector.norm(x, scale, bias, eps, channels)
        assert same_bits(got, want)


@pytest.mark.parametrize("shape", [(300, 49), (24, 197), (5, 1000), (2000, 3), (7, 6000),
                                   (4, 5)])
def test_softmax_is_the_float64_formula_bit_for_bit(shape: tuple[int, int]) -> None:
    """The compiled maximum, shift, pairwise sum and division around numpy's exp give the
    reference's bits: rows of every length around the pairwise blocks (8, 128), slices
    shared between the threads, NaN, infinities, huge and tiny values."""
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 5).astype(F32)
    flat = x.reshape(-1)
    flat[::97] = np.resize(inputs(2, 0), flat[::97].size)  # the special values
    x[1] = 3e38
    with np.errstate(all="ignore"):
        want = kernels.softmax_reference(x)
        got = kernels.softmax(x)
    assert same_bits(got, want)


def test_erf_table_is_within_a_few_ulps_of_math_erf():
    """The Taylor table behind the one-pass erf and GELU agrees with ``math.erf`` to a few
    float64 ulps over its whole range (far inside ``ERF_MARGIN``), signed zero included."""
    from npusim.simulator import _erf

    xs = np.concatenate([np.linspace(-_erf.ERF_RANGE, _erf.ERF_RANGE, 20001),
                         np.random.default_rng(0).uniform(-_erf.ERF_RANGE, _erf.ERF_RANGE, 20000),
                         [1e-300, -1e-300, 1e-8, 0.25, 0.2500000001, 0.7499999999, 5.75]])
    got = np.array([_erf.erf_table(v) for v in xs])
    ref = np.array([math.erf(v) for v in xs])
    assert np.all(np.abs(got - ref) <= 4 * np.spacing(np.abs(ref)))
    assert math.copysign(1.0, _erf.erf_table(-0.0)) == -1.0


@pytest.mark.parametrize("fn", ["erf", "gelu"])
def test_erf_and_gelu_give_the_formulas_bits_on_dense_runs(fn: str) -> None:
    """Runs of consecutive float32 inputs around the table's centers and across its
    range, random ones, and the special values: every output has the float64 formula's
    bits (``math.erf``), in any tail length."""
    starts = [0.0, 0.25, 0.5, 1.0, 2.75, 5.9, 8.4, -0.75, -4.0, 1e-30]
    runs = [(np.float32(v).view(np.int32) + np.arange(1 << 16, dtype=np.int32)).view(F32)
            for v in starts]
    x = np.concatenate(runs + [inputs(11, 200_000, 3.0)])
    for size in (x.size, 12_345, 7):
        want = unary_reference(fn, x[:size])
        got = vector.unary(fn, x[:size])
        assert same_bits(got, want)


def test_sigmoid_sends_the_elements_near_a_rounding_boundary_to_the_formula():
    """Of 4M consecutive float32 inputs, those whose sigmoid (numpy's float64 formula) is
    within 2**-44 of a float32 rounding boundary are each listed by the kernel for the
    formula, and every output has the formula's bits."""
    from npusim.simulator import _sigmoid
    x = (np.float32(-3.7).view(np.int32) + np.arange(1 << 22, dtype=np.int32)).view(F32)
    with np.errstate(all="ignore"):
        s = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    d = (s.view(np.int64) & 0x1FFFFFFF) - 0x10000000
    close = np.flatnonzero(np.abs(d) <= 1 << 9)  # within 2**-44
    assert len(close) >= 5
    out, idx = np.empty_like(x), np.empty(x.size, np.int64)
    near = int(_sigmoid.SIGMOID_MARGIN * 2.0**53)
    n = _sigmoid._logistic(x, out, out, False, near, np.empty(x.size // 8 + 1, np.uint8), idx)
    assert set(close) <= set(idx[:n]) and n < x.size // 1000
    assert np.array_equal(out[idx[:n]], x[idx[:n]])  # they hold x for the formula
    assert same_bits(kernels.unary("sigmoid", x), unary_reference("sigmoid", x))


def test_sigmoid_exp_polynomial_is_within_its_bound():
    """The sigmoid kernel's exp polynomial is within ``2**-49`` of exp, relative, over its
    whole reduced range (evaluated in extended precision on a fine grid)."""
    from npusim.simulator import _sigmoid
    r = np.linspace(-np.log(2) / 2 * (1 + 2**-20), np.log(2) / 2 * (1 + 2**-20), 400_001,
                    dtype=np.longdouble)
    p = np.zeros_like(r)
    for c in _sigmoid.EXP_POLY:
        p = p * r + np.longdouble(c)
    assert np.max(np.abs(p / np.exp(r) - 1)) < 2.0**-49


def test_sigmoid_and_erf_compile_for_a_cpu_without_avx512(tmp_path):
    """For a CPU without AVX-512 (numba told to compile for Haswell, in a process of its
    own), the sigmoid kernel clamps its inputs with portable operations and erf and the
    GELU run the table's steps one element at a time; all still give the formulas'
    bits."""
    code = ("import numpy as np\n"
            "from npusim.simulator import _erf, _sigmoid, kernels\n"
            "from npusim.simulator.vector import unary_reference\n"
            "assert not _sigmoid._DQ and not _erf.VECTORS\n"
            "x = (np.random.default_rng(0).standard_normal(50_000) * 8).astype(np.float32)\n"
            "x[::97], x[::89] = np.nan, 100.0\n"
            "for fn in ('sigmoid', 'erf', 'gelu'):\n"
            "    ref, got = unary_reference(fn, x), kernels.unary(fn, x)\n"
            "    n = np.isnan(ref)\n"
            "    assert np.array_equal(np.isnan(got), n)\n"
            "    assert np.array_equal(got[~n].view(np.int32), ref[~n].view(np.int32))\n")
    env = {**os.environ, "NUMBA_CPU_NAME": "haswell", "NUMBA_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
