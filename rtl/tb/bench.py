# SPDX-License-Identifier: Apache-2.0
"""What every kernel testbench shares: the format under test and the HDL parameters it
implies, clock and reset, the valid/ready source and sink, draining, and the check that a
free-running stream moves one transfer per cycle after a fixed latency.

A kernel's testbench subclasses :class:`StreamBench` and adds its model, ``send`` and
checker; the cocotb side reads the format from the DUT's parameters (:func:`format_from_dut`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge

from npusim.rtl.tb.stream import ALWAYS, CycleCounter, StreamSink, StreamSource
from npusim.simulator.numerics import FORMAT_NAMES, Format, get_format

IDLE = (1, 1, 1, 0)
"""The source idles one cycle in four."""
BACKPRESSURE = (1, 0, 1, 1, 0, 0, 1)
"""The sink stalls in a 7-cycle pattern."""

FORMATS = [("msfp12", 128), ("msfp8", 8)]
"""(name, native_dim); msfp8 with a small native dimension keeps the block at 8."""


ELEMENT_PARAMETERS = ("ELEM_EXP", "ELEM_MAN", "ELEM_BIAS", "ELEM_MAXC")
"""The minifloat element's parameters (bfp_quantize only; 0 for BFP and integer elements)."""


def hdl_parameters(fmt: Format) -> dict[str, int]:
    """The HDL parameters of ``fmt``; an MX minifloat format adds its element's."""
    params = {"BLOCK": fmt.block_size, "MANT": fmt.mantissa_bits,
              "EXP_BITS": fmt.exponent_bits, "BIAS": fmt.exponent_bias}
    if fmt.is_minifloat:
        el = fmt.element
        params.update(ELEM_EXP=el.exponent_bits, ELEM_MAN=el.mantissa_bits, ELEM_BIAS=el.bias,
                      ELEM_MAXC=el.max_code)
    return params


def format_of(parameters: Mapping[str, int]) -> Format:
    """The format whose :func:`hdl_parameters` are ``parameters`` (the inverse; element
    parameters of 0 mean none)."""
    names = ("BLOCK", "MANT", "EXP_BITS", "BIAS")
    if int(parameters.get("ELEM_EXP", 0)):
        names += ELEMENT_PARAMETERS
    wanted = {k: int(parameters[k]) for k in names}
    for name in FORMAT_NAMES[1:]:
        fmt = get_format(name, native_dim=wanted["BLOCK"])
        if hdl_parameters(fmt) == wanted:
            return fmt
    raise ValueError(f"no number format has the HDL parameters {wanted}")


def format_from_dut(dut) -> Format:
    """The format the DUT was built for, read from its parameters."""
    names = ("BLOCK", "MANT", "EXP_BITS", "BIAS")
    if hasattr(dut, "ELEM_EXP"):
        names += ELEMENT_PARAMETERS
    return format_of({name: int(getattr(dut, name).value) for name in names})


class StreamBench:
    """Clock, reset, a source on ``in_*`` and a sink on ``out_*``; ``sent`` and
    ``expected`` hold what went in and what the golden model says must come out."""

    def __init__(self, dut, fmt: Format | None, inputs: Mapping[str, object],
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
