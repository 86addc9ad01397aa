# SPDX-License-Identifier: Apache-2.0
"""What every kernel testbench shares: the format under test and the HDL parameters it
implies, clock and reset, the valid/ready source and sink, draining, and the check that a
free-running stream moves one transfer per cycle after a fixed latency.

A kernel's testbench subclasses :class:`StreamBench` and adds its model, ``send`` and
checker; the pytest side passes the format with :func:`format_env`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterable, Mapping

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from rtl.tb.stream import ALWAYS, CycleCounter, StreamSink, StreamSource
from simulator.numerics import Format, get_format

IDLE = (1, 1, 1, 0)
"""The source idles one cycle in four."""
BACKPRESSURE = (1, 0, 1, 1, 0, 0, 1)
"""The sink stalls in a 7-cycle pattern."""
FORMATS = [("msfp12", 128), ("msfp8", 8)]
"""(name, native_dim); msfp8 with a small native dimension keeps the block at 8."""

_FORMAT_ENV, _NATIVE_DIM_ENV = "NPUSIM_RTL_FORMAT", "NPUSIM_RTL_NATIVE_DIM"


def hdl_parameters(fmt: Format) -> dict[str, int]:
    return {"BLOCK": fmt.block_size, "MANT": fmt.mantissa_bits,
            "EXP_BITS": fmt.exponent_bits, "BIAS": fmt.exponent_bias}


def format_env(name: str, native_dim: int) -> dict[str, str]:
    """The environment that tells the cocotb side which format the DUT was built for."""
    return {_FORMAT_ENV: name, _NATIVE_DIM_ENV: str(native_dim)}


def format_from_env() -> Format:
    return get_format(os.environ[_FORMAT_ENV], int(os.environ[_NATIVE_DIM_ENV]))


class StreamBench:
    """Clock, reset, a source on ``in_*`` and a sink on ``out_*``; ``sent`` and
    ``expected`` hold what went in and what the golden model says must come out."""

    def __init__(self, dut, fmt: Format, inputs: Mapping[str, object],
                 outputs: Mapping[str, object], in_pattern: Iterable[int] = ALWAYS,
                 out_pattern: Iterable[int] = ALWAYS, signed: Iterable[str] = ()) -> None:
        self.dut, self.fmt = dut, fmt
        self.cycles = CycleCounter(dut.clk_i)
        self.source = StreamSource(dut.clk_i, dut.in_valid_i, dut.in_ready_o, inputs,
                                   self.cycles, in_pattern)
        self.sink = StreamSink(dut.clk_i, dut.out_valid_o, dut.out_ready_i, outputs,
                               self.cycles, out_pattern, signed=signed)
        self.sent: deque = deque()
        self.expected: deque = deque()
        self.checked = 0

    def check_parameters(self) -> None:
        want = hdl_parameters(self.fmt)
        got = {name: int(getattr(self.dut, name).value) for name in want}
        assert got == want, f"DUT built with {got}, format {self.fmt.name} wants {want}"

    async def start(self) -> None:
        Clock(self.dut.clk_i, 10, unit="ns").start()
        self.cycles.start()
        await self.reset()
        self.source.start()
        self.sink.start()

    async def reset(self) -> None:
        self.dut.rst_ni.value = 0
        self.dut.in_valid_i.value = 0
        self.dut.out_ready_i.value = 0
        await ClockCycles(self.dut.clk_i, 3)
        self.dut.rst_ni.value = 1

    async def drain(self, limit: int, what: str = "results") -> None:
        for _ in range(limit):
            if len(self.sink.received) == len(self.expected) and not self.source.queue:
                return
            await RisingEdge(self.dut.clk_i)
        raise AssertionError(f"timeout: {len(self.sink.received)} of "
                             f"{len(self.expected)} {what} came out")

    def streaming_rate(self, latency: int, what: str) -> dict[str, int]:
        """Assert that an always-valid, always-ready run accepted one input per cycle and
        produced one output per cycle ``latency`` cycles later; the measured counters."""
        n, first = self.checked, self.source.accepted[0]
        measured = self.sink.times[0] - first
        assert self.source.accepted == list(range(first, first + n)), "input stalled"
        assert measured == latency, f"latency {measured}, expected {latency}"
        assert self.sink.times[-1] - first == n - 1 + latency, f"not one {what} per cycle"
        return {"vectors": n, "latency": measured, "cycles": self.sink.times[-1] - first + 1}
