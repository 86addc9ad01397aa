# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench of bfp_quantize.sv against ``simulator.numerics.quantize_reference``.

The pytest function at the bottom builds the kernel per format and runs the cocotb tests
above it in the simulator; every output block is compared bit for bit with the golden
model, under a free-running stream and under idle/backpressure patterns.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # the repository, for rtl.tb under plain `pytest`
    sys.path.insert(0, str(HERE.parents[1]))

from rtl.tb.runner import report, requires_simulator, run  # noqa: E402
from simulator.numerics import Format, get_format, quantize_reference  # noqa: E402

cocotb = pytest.importorskip("cocotb", reason="cocotb 2.x is not installed")
from rtl.tb.bench import (  # noqa: E402
    BACKPRESSURE,
    FORMATS,
    IDLE,
    StreamBench,
    format_from_dut,
    hdl_parameters,
)
from rtl.tb.stream import ALWAYS  # noqa: E402

LATENCY = 2
"""Cycles from the accepting edge to out_valid_o (the module header's 2-stage pipeline)."""


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
    # non-finite blocks
    nan_bits = [0x7FC00000, 0xFFC00001, 0x7F800001, 0x7F800000, 0xFF800000]
    for nb in nan_bits:
        values = rng.standard_normal(b).astype(np.float32)
        values[rng.integers(b)] = _f32([nb])[0]
        blocks.append(values)
    blocks.append(block(_f32([0x7FC00000] * b)))
    blocks.append(block(_f32([0x7F800000, 0, 0x80000000])))
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


# --- testbench -----------------------------------------------------------------------


class QuantizeTB(StreamBench):
    """A source driving fp32 blocks, a sink collecting BFP blocks (clock, reset and the
    drivers from :class:`StreamBench`), the golden model and the checker, kept apart."""

    def __init__(self, dut, fmt: Format, in_pattern=ALWAYS, out_pattern=ALWAYS) -> None:
        super().__init__(dut, fmt, {"data": dut.in_data_i},
                         {"exp": dut.out_exp_o, "codes": dut.out_codes_o},
                         in_pattern, out_pattern)

    def model(self, block: np.ndarray) -> dict[str, int]:
        """The golden quantizer's output as the RTL's ports: exponent and packed codes."""
        t = quantize_reference(block[None, :], self.fmt)
        mb = self.fmt.mantissa_bits
        codes = 0
        for i, q in enumerate(t.q[0].tolist()):
            codes |= ((int(q < 0) << mb) | abs(q)) << (i * (mb + 1))
        return {"exp": int(t.exponents[0, 0]), "codes": codes}

    def send(self, block: np.ndarray) -> None:
        bits = block.astype(np.float32).view(np.uint32).tolist()
        self.source.send({"data": sum(int(v) << (32 * i) for i, v in enumerate(bits))})
        self.sent.append(block)
        self.expected.append(self.model(block))

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
    report("streaming", **tb.streaming_rate(LATENCY, "block"))


@cocotb.test()
async def quantize_idle_backpressure(dut):
    """Source idles one cycle in four, the sink stalls in a 7-cycle pattern: bit-exact."""
    tb = await _run_stream(dut, IDLE, BACKPRESSURE, seed=2)
    report("idle_backpressure", vectors=tb.checked)


# --- pytest --------------------------------------------------------------------------


@pytest.mark.rtl
@requires_simulator()
@pytest.mark.parametrize(("name", "native_dim"), FORMATS, ids=[f[0] for f in FORMATS])
def test_bfp_quantize(name: str, native_dim: int) -> None:
    fmt = get_format(name, native_dim)
    stats = run("bfp_quantize", [HERE / "bfp_quantize.sv"], hdl_parameters(fmt), __file__)
    assert set(stats) == {"streaming", "idle_backpressure"}
    assert all(s["vectors"] > 0 for s in stats.values())
