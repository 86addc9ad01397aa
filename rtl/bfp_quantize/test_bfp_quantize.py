# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench of bfp_quantize.sv against ``npusim.simulator.numerics.quantize_reference``.

Formats: BFP (ms-fp8/9, MSFP12), OCP MXINT8, and OCP MX minifloat elements (MXFP8 E4M3,
MXFP4 E2M1), whose codes are compared with the golden model's elements through the
spec's code table; the builds in ``SLOW`` run with the slow cases.

The pytest function at the bottom builds the kernel per format and runs the cocotb tests
above it in the simulator; every output block is compared bit for bit with the golden
model, under a free-running stream and under idle/backpressure patterns. Nearest-even
blocks are quantized one at a time; stochastic rounding depends on each element's index
in the tensor, so those blocks are rows of a ``[nblocks, BLOCK]`` tensor the golden model
quantizes as a whole, row ``r`` sent with ``index_i = r * BLOCK``.
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
    Format,
    Rounding,
    get_format,
    quantize_reference,
)
from npusim.simulator.timing import bfp_convert_depth  # noqa: E402

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

EXTRA_FORMATS = [("mxint8", 32), ("msfp9", 12), ("msfp8", 2), ("mxfp8_e4m3", 32),
                 ("mxfp4_e2m1", 32)]
"""Beyond the shared FORMATS: a 32-element block with 7 mantissa bits (OCP MXINT8), a
block that is not a power of two (a padded comparator tree), the smallest block (a
one-level tree), and OCP MX minifloat elements (MXFP8 E4M3, MXFP4 E2M1)."""

SLOW = {("mxfp4_e2m1", 32), ("mxfp8_e4m3", 32), ("mxint8", 32), ("msfp8", 2)}
"""Builds run with the slow cases (5-12 s each): the default run keeps a padded
comparator tree (msfp9, 12) besides the shared formats."""

SEEDS = (0, 1, 0xDEADBEEF, 2**32 - 1)
"""Stochastic-rounding seeds; the last two make ``index + seed * 0x9E3779B9`` wrap."""


def latency_of(dut, fmt: Format) -> int:
    """Cycles from the accepting edge to out_valid_o: the DUT's LATENCY, which must be the
    converter depth the timing model charges."""
    latency = int(dut.LATENCY.value)
    assert latency == bfp_convert_depth(fmt), (latency, bfp_convert_depth(fmt))
    return latency


# --- stimulus ------------------------------------------------------------------------


def _f32(bits: list[int]) -> np.ndarray:
    return np.array(bits, dtype=np.uint32).view(np.float32)


def corner_blocks(fmt: Format) -> list[np.ndarray]:
    """Hand-picked blocks: each targets one clause of the quantization rule."""
    b, mb = fmt.block_size, fmt.mantissa_bits
    top = float(1 << mb)
    rng = np.random.default_rng(7)

    def block(values, fill=0.0) -> np.ndarray:
        out = np.full(b, fill, np.float32)
        values = np.asarray(values, np.float32)[:b]
        out[: values.size] = values
        return out

    def ulp(e: int) -> float:
        return 2.0 ** (e - (mb - 1))

    blocks = [
        block([]),                                          # all zero
        block([], -0.0),                                    # all negative zero
        block([-0.0, 0.0, -0.0, 1.0]),                      # -0 next to a value
        block(rng.uniform(1.0, 2.0, b) * 4),                # all exponents equal
        block(rng.uniform(-2.0, -1.0, b) * 0.125),
    ]
    for e in (0, 3, -5, fmt.emax, fmt.emin + 1):
        u = ulp(e)
        pin = (top - 1) * u                                 # pins the shared exponent at e
        ties = [(k + 0.5) * u for k in range(int(top) - 1)]  # odd and even ties
        blocks.append(block([pin] + ties + [-t for t in ties]))
        blocks.append(block([pin, (top - 0.5) * u, -(top - 0.25) * u, 0.5 * u, -0.5 * u,
                             1.5 * u, 0.25 * u, 0.75 * u]))  # saturating tie, flushes
        # just above a tie by less than 2**-16 of the code's LSB: only the sticky bit of
        # the bits below the 16-bit fraction grid breaks the tie upwards
        blocks.append(block([pin] + [(k + 0.5 + 2.0 ** -d) * u * sgn
                                     for k, d, sgn in ((0, 17, 1), (2, 20, -1), (1, 22, 1),
                                                       (top - 2, 18, 1), (0, 23, -1))]))
    # largest exponents: near 2**emax, beyond it (saturates), fp32 max
    emax = fmt.emax
    blocks.append(block([2.0 ** emax, 1.5 * 2.0 ** emax, -1.99 * 2.0 ** emax, 1.0]))
    big = min(emax + 3, 127)
    blocks.append(block([2.0 ** big, -(2.0 ** (big - 1)), 2.0 ** emax, 2.0 ** (emax - mb)]))
    blocks.append(block(_f32([0x7F7FFFFF, 0xFF7FFFFF, 0x7F000000, 0x3F800000])))
    # smallest exponents: at, just above and below 2**emin, fp32 subnormals
    emin = fmt.emin
    blocks.append(block([2.0 ** emin, -(2.0 ** (emin - 1)), 2.0 ** (emin - 3), 1.5 * 2.0 ** emin]))
    blocks.append(block([2.0 ** (emin - 1), 2.0 ** (emin - 2), -(2.0 ** (emin - mb))]))
    blocks.append(block(_f32([0x00000001, 0x807FFFFF, 0x00400000, 0x00200000, 0x00600000,
                              0x80100000, 0x00080000, 0x00000000])))
    blocks.append(block(_f32([0x00800000, 0x007FFFFF, 0x80400000, 0x00000003])))
    if fmt.is_minifloat:
        blocks += minifloat_blocks(fmt)
    # non-finite blocks
    nan_bits = [0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F800000, 0xFF800000]
    for nb in nan_bits:
        values = rng.standard_normal(b).astype(np.float32)
        values[rng.integers(b)] = _f32([nb])[0]
        blocks.append(values)
    blocks.append(block(_f32([0x7FC00000] * b)))
    blocks.append(block(_f32([0x7F800000, 0, 0x80000000])))
    return blocks


def minifloat_blocks(fmt: Format) -> list[np.ndarray]:
    """An MX minifloat format's own corners, under scales from 2**-127 up: every magnitude
    of the element type, the midpoints between neighbours (ties: the next binade's first
    code, the subnormal/normal boundary) and values just off them, values between the
    largest normal and the next binade (saturation), and fp32 subnormals that reach a
    normal binade of the element under the smallest scale."""
    el = fmt.element
    b = fmt.block_size
    mags = np.ldexp(el.units_table.astype(np.float64), el.unit_exponent)
    mids = (mags[:-1] + mags[1:]) / 2
    top = 2.0 ** (el.emax + 1)
    over = el.max_normal + (top - el.max_normal) * np.array([0.25, 0.5, 0.75, 0.999])
    blocks = []
    for e in (-127, -126, -5, 0, 3, 127 - el.emax):
        with np.errstate(over="ignore"):
            pool = np.concatenate([mags, mids, over]) * 2.0**e
            near = np.concatenate([np.nextafter(np.float32(mids * 2.0**e), np.float32(0)),
                                   np.nextafter(np.float32(mids * 2.0**e), np.float32(1e38))])
        pool = np.concatenate([pool.astype(np.float32), near])
        pool = pool[np.isfinite(pool)]
        for start in range(0, pool.size, b - 1):
            blk = np.zeros(b, np.float32)
            vals = np.concatenate([[2.0 ** (el.emax + e)], pool[start:start + b - 1]])
            blk[: vals.size] = vals
            blk[1::3] *= -1
            blocks.append(blk)
    # the smallest scale: fp32 subnormals are normal numbers of the element type there
    blocks.append(_f32([0x00400000, 0x80200000, 0x00300000, 0x00280000, 0x00000001,
                        0x007FFFFF, 0x00000000, 0x80000000] * (b // 8)))
    return blocks


def random_blocks(fmt: Format, count: int, seed: int) -> list[np.ndarray]:
    """Gaussian blocks at several scales, some with zeros, plus raw random bit patterns."""
    rng = np.random.default_rng(seed)
    b = fmt.block_size
    out = []
    for i in range(count):
        kind = i % 4
        if kind == 3:
            bits = rng.integers(0, 1 << 32, b, dtype=np.uint64).astype(np.uint32)
            out.append(bits.view(np.float32))
            continue
        scale = 2.0 ** int(rng.integers(-140, 128))
        with np.errstate(over="ignore", under="ignore"):
            x = (rng.standard_normal(b) * scale).astype(np.float32)
        if kind == 1:
            x[rng.random(b) < 0.3] = 0.0
        if kind == 2:
            x *= np.float32(2.0 ** rng.integers(-8, 9, b))  # spread inside one block
        out.append(np.where(np.isfinite(x), x, np.float32(0.0)).astype(np.float32))
    return out


def stochastic_corner_blocks(fmt: Format) -> list[np.ndarray]:
    """Blocks pinned at a few shared exponents whose other elements scale to ``a`` on an
    integer, just below saturation, on and off the 2**-16 grid, ties, and tiny values; a
    block repeated at many tensor indices meets many random fractions."""
    b, mb = fmt.block_size, fmt.mantissa_bits
    top = float(1 << mb)
    g = 2.0 ** -16                                          # the fraction grid
    blocks = []
    for e in (0, -3, fmt.emax, fmt.emin + 1, fmt.emin):
        u = 2.0 ** (e - (mb - 1))                           # a = x / u
        a = [top - 1, 1.0, 2.0, top - 2, 0.0,               # integers: never move
             top - g, top - 1 + g, top - 1 + 0.5, top - 0.5 * g,  # near saturation
             0.5, 1.5, 0.5 + g, 0.5 - g, 1.0 / 3, 2.0 / 3,  # ties and inexact
             g, 0.5 * g, 1.5 * g, 2.0 ** -24, 3 * g, 1 - g, 1 - 0.5 * g]  # tiny, sticky only
        x = np.array([(-v if k % 3 == 2 else v) * u for k, v in enumerate(a)], np.float64)
        for start in range(0, len(x), b - 1):               # each block keeps the pin
            vals = np.concatenate([[(top - 1) * u], x[start:start + b - 1]])
            blk = np.zeros(b, np.float32)
            with np.errstate(under="ignore"):
                blk[: vals.size] = vals.astype(np.float32)
            blocks.append(blk)
    # a block whose largest element is far above emax (saturates everything big)
    blocks.append(np.full(b, 2.0 ** min(fmt.emax + 4, 127), np.float32) * np.float32(-1))
    # non-finite blocks: every code 0 whatever the random fraction
    for nb in (0x7FC00000, 0xFF800000, 0x7F800001):
        blk = np.linspace(-3, 3, b).astype(np.float32)
        blk[b // 2] = _f32([nb])[0]
        blocks.append(blk)
    return blocks


# --- testbench -----------------------------------------------------------------------


class QuantizeTB(StreamBench):
    """A source driving fp32 blocks, a sink collecting BFP blocks (clock, reset and the
    drivers from :class:`StreamBench`), the golden model and the checker, kept apart."""

    def __init__(self, dut, fmt: Format, in_pattern=ALWAYS, out_pattern=ALWAYS) -> None:
        super().__init__(dut, fmt, {"data": dut.in_data_i, "sr": dut.sr_i,
                                    "seed": dut.seed_i, "index": dut.index_i},
                         {"exp": dut.out_exp_o, "codes": dut.out_codes_o},
                         in_pattern, out_pattern)

    def model(self, x: np.ndarray, rounding: Rounding = Rounding.NEAREST_EVEN,
              seed: int = 0) -> list[dict[str, int]]:
        """The golden quantizer's output for a ``[nblocks, BLOCK]`` tensor as the RTL's
        ports, one entry per row: exponent and packed codes."""
        t = quantize_reference(x, self.fmt, rounding, seed)
        mb = self.fmt.mantissa_bits
        mags = np.abs(t.q.astype(np.int64))
        if self.fmt.is_minifloat:  # an element's units to its magnitude code
            mags = self.fmt.element.codes_of_units(mags).astype(np.int64)
        rows = []
        for r in range(x.shape[0]):
            codes = 0
            for i, (q, c) in enumerate(zip(t.q[r].tolist(), mags[r].tolist())):
                codes |= ((int(q < 0) << mb) | c) << (i * (mb + 1))
            rows.append({"exp": int(t.exponents[r, 0]), "codes": codes})
        return rows

    def _drive(self, block: np.ndarray, sr: int, seed: int, index: int, want: dict) -> None:
        bits = block.astype(np.float32).view(np.uint32).tolist()
        self.source.send({"data": sum(int(v) << (32 * i) for i, v in enumerate(bits)),
                          "sr": sr, "seed": seed & 0xFFFFFFFF, "index": index})
        self.sent.append(block)
        self.expected.append(want)

    def send(self, block: np.ndarray, seed: int = 0, index: int = 0) -> None:
        """One block, nearest even; ``seed`` and ``index`` are don't-cares then."""
        self._drive(block, 0, seed, index, self.model(block[None, :])[0])

    def send_stochastic(self, x: np.ndarray, seed: int) -> None:
        """Every row of the tensor ``x``, stochastic rounding with ``seed``."""
        for r, want in enumerate(self.model(x, Rounding.STOCHASTIC, seed)):
            self._drive(x[r], 1, seed, r * self.fmt.block_size, want)

    def check(self) -> None:
        mb = self.fmt.mantissa_bits
        assert len(self.sink.received) == len(self.expected)
        for x, want, got in zip(self.sent, self.expected, self.sink.received, strict=True):
            if got != want:
                def codes(v):
                    return [(v >> (i * (mb + 1))) & ((1 << (mb + 1)) - 1)
                            for i in range(self.fmt.block_size)]
                raise AssertionError(
                    f"block {x.view(np.uint32).tolist()} ({x.tolist()}): exp {got['exp']} "
                    f"codes {codes(got['codes'])}, golden exp {want['exp']} "
                    f"codes {codes(want['codes'])}")
            self.checked += 1


async def _run_stream(dut, in_pattern, out_pattern, seed: int) -> QuantizeTB:
    tb = QuantizeTB(dut, format_from_dut(dut), in_pattern, out_pattern)
    await tb.start()
    blocks = corner_blocks(tb.fmt) + random_blocks(tb.fmt, 400, seed)
    for x in blocks:
        tb.send(x)
    await tb.drain(limit=8 * len(blocks) + 50, what="blocks")
    tb.check()
    return tb


@cocotb.test()
async def quantize_streaming(dut):
    """Always valid, always ready: bit-exact, and the measured latency and throughput."""
    tb = await _run_stream(dut, ALWAYS, ALWAYS, seed=1)
    report("streaming", **tb.streaming_rate(latency_of(dut, tb.fmt), "block"))


@cocotb.test()
async def quantize_idle_backpressure(dut):
    """Source idles one cycle in four, the sink stalls in a 7-cycle pattern: bit-exact."""
    tb = await _run_stream(dut, IDLE, BACKPRESSURE, seed=2)
    report("idle_backpressure", vectors=tb.checked)


async def _run_stochastic(dut, in_pattern, out_pattern, seed: int) -> QuantizeTB:
    """A tensor of the stochastic corner blocks (each repeated at several indices), the
    nearest-even corner blocks and random blocks, quantized with every seed of SEEDS;
    between the tensors, nearest-even blocks with random seed_i/index_i (don't-cares)."""
    tb = QuantizeTB(dut, format_from_dut(dut), in_pattern, out_pattern)
    await tb.start()
    rng = np.random.default_rng(seed)
    x = np.stack(stochastic_corner_blocks(tb.fmt) * 8 + corner_blocks(tb.fmt)
                 + random_blocks(tb.fmt, 120, seed))
    for s in SEEDS:
        tb.send_stochastic(x, s)
        for blk in random_blocks(tb.fmt, 8, seed + s % 1000):
            tb.send(blk, seed=int(rng.integers(1 << 32)), index=int(rng.integers(1 << 32)))
    await tb.drain(limit=8 * len(tb.expected) + 50, what="blocks")
    tb.check()
    return tb


@cocotb.test()
async def quantize_stochastic(dut):
    """Stochastic rounding, free-running: bit-exact, same latency and throughput."""
    tb = await _run_stochastic(dut, ALWAYS, ALWAYS, seed=3)
    report("stochastic", **tb.streaming_rate(latency_of(dut, tb.fmt), "block"))


@cocotb.test()
async def quantize_stochastic_idle_backpressure(dut):
    """Stochastic rounding under the idle and backpressure patterns: bit-exact."""
    tb = await _run_stochastic(dut, IDLE, BACKPRESSURE, seed=4)
    report("stochastic_idle_backpressure", vectors=tb.checked)


# --- pytest --------------------------------------------------------------------------


@pytest.mark.rtl
@requires_simulator()
@pytest.mark.parametrize(("name", "native_dim"), [
    pytest.param(n, d, id=f"{n}-{d}", marks=[pytest.mark.slow] if (n, d) in SLOW else [])
    for n, d in FORMATS + EXTRA_FORMATS])
def test_bfp_quantize(name: str, native_dim: int) -> None:
    fmt = get_format(name, native_dim)
    stats = run("bfp_quantize", hdl_parameters(fmt), __file__)
    assert set(stats) == {"streaming", "idle_backpressure", "stochastic",
                          "stochastic_idle_backpressure"}
    assert all(s["vectors"] > 0 for s in stats.values())
    for test in ("streaming", "stochastic"):
        assert stats[test]["latency"] == bfp_convert_depth(fmt)
