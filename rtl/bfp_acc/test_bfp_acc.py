# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench of bfp_acc.sv against ``npusim.simulator.numerics.accumulate_block``.

One step is ``(acc, dot, a_exp, w_exp)``: the fp32 running sum and one block pair's exact
integer dot product and stored shared exponents. The DUT gets what bfp_dot makes of the
exponents, ``esum = (a_exp - BIAS) + (w_exp - BIAS)`` and ``nan`` (either exponent all
ones, esum 0 then); the golden model gets the scale ``block_scales`` gives the two
exponents, exactly as ``accumulate_blocks_reference`` forms it. The sum is compared bit
for bit (NaN: both NaN), under a free-running stream and under idle/backpressure patterns.
This also exercises rtl/common/bfp_to_fp32.sv and rtl/common/fp32_add.sv.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # the repository, for npusim.rtl.tb under plain `pytest`
    sys.path.insert(0, str(HERE.parents[1]))

from npusim.rtl.tb.runner import report, requires_simulator, run  # noqa: E402
from npusim.simulator.numerics import (  # noqa: E402
    BfpTensor,
    Format,
    accumulate_block,
    block_product,
    block_scales,
    get_format,
)

cocotb = pytest.importorskip("cocotb", reason="cocotb 2.x is not installed")
from npusim.rtl.tb.bench import (  # noqa: E402
    BACKPRESSURE,
    FORMATS,
    IDLE,
    StreamBench,
    format_from_dut,
    hdl_parameters,
)
from npusim.rtl.tb.stream import ALWAYS  # noqa: E402

LATENCY = 1
"""Cycles from the accepting edge to out_valid_o (one register stage)."""


RANDOM_STEPS = 3000
"""Random steps per cocotb test, on top of the corner cases."""


# --- stimulus: a step is (acc as fp32 bits, dot, a_exp, w_exp) -----------------------

Step = tuple[int, int, int, int]

ACC_CLASSES = {
    "+0": 0x0000_0000, "-0": 0x8000_0000,
    "min_sub": 0x0000_0001, "-min_sub": 0x8000_0001,
    "max_sub": 0x007F_FFFF, "-max_sub": 0x807F_FFFF,
    "min_norm": 0x0080_0000, "-min_norm": 0x8080_0000,
    "1.0": 0x3F80_0000, "-1.0": 0xBF80_0000,
    "max": 0x7F7F_FFFF, "-max": 0xFF7F_FFFF,
    "+inf": 0x7F80_0000, "-inf": 0xFF80_0000,
    "nan": 0x7FC0_0000, "nan_payload": 0xFF80_0001,
}
"""fp32 bit patterns of every class of accumulator."""


def max_dot(fmt: Format) -> int:
    """Largest |dot| of one block pair (bfp_dot's MAX_DOT)."""
    return fmt.block_size * fmt.max_mantissa**2


def esum_range(fmt: Format) -> tuple[int, int]:
    """Smallest and largest unbiased exponent sum of two finite blocks."""
    return 2 * (0 - fmt.exponent_bias), 2 * (fmt.nan_exponent - 1 - fmt.exponent_bias)


def exps_for(fmt: Format, esum: int) -> tuple[int, int] | None:
    """Two finite stored exponents whose unbiased sum is ``esum`` (None if none do)."""
    lo, hi = esum_range(fmt)
    if not lo <= esum <= hi:
        return None
    total = esum + 2 * fmt.exponent_bias
    a_exp = min(total, fmt.nan_exponent - 1)
    return a_exp, total - a_exp


def exps_for_k(fmt: Format, k: int) -> tuple[int, int] | None:
    """Exponents making the block product ``dot * 2**k``."""
    return exps_for(fmt, k + 2 * (fmt.mantissa_bits - 1))


def _bits(x: float) -> int:
    return int(np.float32(x).view(np.uint32))


def corner_steps(fmt: Format, golden_product) -> list[Step]:
    """Hand-picked steps, each aimed at one clause of the rounding or of the specials;
    ``golden_product(dot, a_exp, w_exp)`` is the model's fp32 block product (for exact
    cancellations). Steps the format cannot express (its exponents do not reach) drop out."""
    top, nan = max_dot(fmt), fmt.nan_exponent
    mid = fmt.exponent_bias
    lo, hi = esum_range(fmt)
    dots = [0, 1, -1, 2, -2, 3, -3, 5, -7, top, -top, top - 1, -(top - 1)]
    steps: list[Step] = []

    def add(acc: int, dot: int, exps: tuple[int, int] | None) -> None:
        if exps is not None:
            steps.append((acc, dot, *exps))

    # every accumulator class against every small/large dot at a middle and both extreme
    # exponent sums, and against a non-finite block
    for acc in ACC_CLASSES.values():
        for dot in dots:
            for esum in (0, lo, hi, -2 * (fmt.mantissa_bits - 1)):
                add(acc, dot, exps_for(fmt, esum))
        add(acc, 0, (nan, mid))
        add(acc, top, (mid, nan))
        add(acc, -1, (nan, nan))
    # the product alone (acc = +0 and -0): subnormal ties, underflow, smallest subnormal,
    # largest finite, overflow
    for acc in (0x0000_0000, 0x8000_0000):
        for dot, k in [(1, -149), (2, -150), (1, -150), (-1, -150), (3, -150), (-3, -150),
                       (5, -151), (7, -151), (1, -151), (-1, -152), (top, -149 - 24),
                       (top, -149 - 8), (-top, -140), (1, -126), (3, -127), (1, -127),
                       (1, 127), (-1, 127), (1, 128), (-1, 128), (top, 127), (-top, 127),
                       (top, 128 - top.bit_length()), (-top, 127 - top.bit_length()),
                       (3, 126), (7, 125)]:
            add(acc, dot, exps_for_k(fmt, k))
    # exact cancellation acc = -product: +0
    for dot in (1, -1, 3, top, -top, 5):
        for esum in (0, lo, hi, lo + 7, -5):
            exps = exps_for(fmt, esum)
            if exps is not None:
                add(int(np.negative(golden_product(dot, *exps)).view(np.uint32)), dot, exps)
    # addition ties: acc = 1.0 plus half an ulp, 1.5 ulp, ...; 2**24 + 1, 2**24 + 3
    one, two24 = _bits(1.0), _bits(2.0**24)
    for acc, dot, k in [(one, 1, -24), (one, 3, -24), (one, 5, -25), (one, -1, -25),
                        (one, -1, -24), (one, -3, -25), (_bits(-1.0), 1, -24),
                        (_bits(1.0 + 2.0**-23), 1, -24), (two24, 1, 0), (two24, 3, 0),
                        (two24, -1, -1), (_bits(3.0), 1, -23), (0x0080_0001, -1, -149),
                        (0x0080_0000, -1, -149), (0x0000_0001, 1, -150)]:
        add(acc, dot, exps_for_k(fmt, k))
    # products far below acc (only the sticky bit survives) and far above it
    for acc in (one, _bits(-1.0), _bits(1.0 + 2.0**-23), _bits(1.5), 0x7F7F_FFFF, 0x0080_0000):
        for dot, k in [(1, -26), (-1, -26), (1, -60), (-1, -60), (top, -30 - top.bit_length()),
                       (-top, -24 - top.bit_length()), (3, -200), (1, 60)]:
            add(acc, dot, exps_for_k(fmt, k))
    # overflow of the sum: max + max, max + half an ulp of max
    for acc, dot, k in [(0x7F7F_FFFF, 1, 103), (0x7F7F_FFFF, 1, 104), (0x7F7F_FFFF, -1, 104),
                        (0xFF7F_FFFF, -1, 104), (0x7F7F_FFFF, top, 127 - top.bit_length())]:
        add(acc, dot, exps_for_k(fmt, k))
    return steps


def random_steps(fmt: Format, count: int, seed: int, golden_product) -> list[Step]:
    """Random dot over the whole range (a third of them small), random exponents over the
    whole range (the NaN exponent included); the accumulator a random fp32 bit pattern
    (all exponents), a value within +-30 binades of the product, or the negated product
    a few ulps off (deep cancellation)."""
    rng = np.random.default_rng(seed)
    top, nan = max_dot(fmt), fmt.nan_exponent
    steps: list[Step] = []
    for _ in range(count):
        dot = int(rng.integers(-top, top + 1) if rng.random() < 0.67 else rng.integers(-9, 10))
        a_exp, w_exp = (int(e) for e in rng.integers(0, nan, 2))
        if rng.random() < 0.03:
            a_exp = nan
        product = golden_product(dot, a_exp, w_exp)
        kind = rng.integers(0, 3)
        if kind == 0 or not np.isfinite(product) or product == 0:
            acc = int(rng.integers(0, 2**32))
        elif kind == 1:
            exp = int(np.frexp(product)[1]) + int(rng.integers(-30, 31))
            with np.errstate(over="ignore"):
                acc = _bits(np.ldexp(1.0 + rng.random(), exp) * rng.choice([-1.0, 1.0]))
        else:
            acc = int(np.negative(product).view(np.uint32)) + int(rng.integers(-4, 5))
            acc &= 0xFFFF_FFFF
        steps.append((acc, dot, a_exp, w_exp))
    return steps


# --- testbench -----------------------------------------------------------------------


class AccTB(StreamBench):
    """A source driving (acc, dot, esum, nan), a sink collecting the sum (clock, reset and
    the drivers from :class:`StreamBench`), the golden model and the checker, kept apart."""

    def __init__(self, dut, fmt: Format, in_pattern=ALWAYS, out_pattern=ALWAYS) -> None:
        super().__init__(dut, fmt,
                         {"acc": dut.acc_i, "dot": dut.dot_i, "esum": dut.esum_i,
                          "nan": dut.nan_i},
                         {"sum": dut.sum_o}, in_pattern, out_pattern)
        self.dot_w, self.esum_w = int(dut.DOT_W.value), int(dut.ESUM_W.value)

    def _scale(self, a_exp: int, w_exp: int) -> np.ndarray:
        """The block pair's scale product, as accumulate_blocks_reference forms it."""
        t = BfpTensor(self.fmt, np.zeros((2, self.fmt.block_size), np.int8),
                      np.array([[a_exp], [w_exp]], np.uint8), self.fmt.block_size)
        s = block_scales(t)
        return s[0, 0] * s[1, 0]

    def product(self, dot: int, a_exp: int, w_exp: int) -> np.float32:
        """The golden fp32 block product (for building stimuli)."""
        return block_product(np.int64(dot), self._scale(a_exp, w_exp))

    def model(self, acc: int, dot: int, a_exp: int, w_exp: int) -> np.float32:
        """The golden sum: fp32(acc + fp32(dot * scale))."""
        return accumulate_block(np.uint32(acc).view(np.float32), np.int64(dot),
                                self._scale(a_exp, w_exp))

    def send(self, acc: int, dot: int, a_exp: int, w_exp: int) -> None:
        """Drive what bfp_dot makes of the exponents: esum, or nan with esum 0."""
        nan = int(self.fmt.nan_exponent in (a_exp, w_exp))
        esum = 0 if nan else a_exp + w_exp - 2 * self.fmt.exponent_bias
        self.source.send({"acc": acc, "dot": dot & ((1 << self.dot_w) - 1),
                          "esum": esum & ((1 << self.esum_w) - 1), "nan": nan})
        self.sent.append((acc, dot, a_exp, w_exp))
        self.expected.append(self.model(acc, dot, a_exp, w_exp))

    def check(self) -> None:
        assert len(self.sink.received) == len(self.expected)
        for step, want, got in zip(self.sent, self.expected, self.sink.received, strict=True):
            value = np.uint32(got["sum"]).view(np.float32)
            ok = (np.isnan(value) if np.isnan(want)
                  else np.uint32(got["sum"]) == want.view(np.uint32))
            assert ok, (f"step (acc {step[0]:#010x}, dot {step[1]}, exps {step[2:]}): "
                        f"RTL {got['sum']:#010x} ({value}), golden "
                        f"{int(want.view(np.uint32)):#010x} ({want})")
            self.checked += 1


async def _run_stream(dut, in_pattern, out_pattern, seed: int) -> AccTB:
    tb = AccTB(dut, format_from_dut(dut), in_pattern, out_pattern)
    await tb.start()
    steps = (corner_steps(tb.fmt, tb.product)
             + random_steps(tb.fmt, RANDOM_STEPS, seed, tb.product))
    for step in steps:
        tb.send(*step)
    await tb.drain(limit=8 * len(steps) + 50)
    tb.check()
    return tb


@cocotb.test()
async def acc_streaming(dut):
    """Always valid, always ready: bit-exact, and the measured latency and throughput."""
    tb = await _run_stream(dut, ALWAYS, ALWAYS, seed=1)
    report("streaming", **tb.streaming_rate(LATENCY, "step"))


@cocotb.test()
async def acc_idle_backpressure(dut):
    """Source idles one cycle in four, the sink stalls in a 7-cycle pattern: bit-exact."""
    tb = await _run_stream(dut, IDLE, BACKPRESSURE, seed=2)
    report("idle_backpressure", vectors=tb.checked)


# --- pytest --------------------------------------------------------------------------


@pytest.mark.rtl
@requires_simulator()
@pytest.mark.parametrize(("name", "native_dim"), FORMATS, ids=[f[0] for f in FORMATS])
def test_bfp_acc(name: str, native_dim: int) -> None:
    fmt = get_format(name, native_dim)
    stats = run("bfp_acc", hdl_parameters(fmt), __file__)
    assert set(stats) == {"streaming", "idle_backpressure"}
    assert all(s["vectors"] > 0 for s in stats.values())
