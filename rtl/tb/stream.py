# SPDX-License-Identifier: Apache-2.0
"""valid/ready stream drivers: a source with an idle pattern, a sink with backpressure.

A transfer happens at a rising clock edge where ``valid`` and ``ready`` are both high;
both sides sample the handshake in the ``ReadOnly`` phase of the cycle before that edge
and record the cycle number, so tests can measure latency and throughput.
Patterns are iterables of 0/1 consumed one per cycle (``itertools.cycle([1, 1, 1, 0])``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Mapping

import cocotb
from cocotb.triggers import ReadOnly, RisingEdge
from cocotb.types import Logic

ALWAYS = (1,)
"""Never idle / never apply backpressure."""


def _read(handle, signed: bool) -> int:
    value = handle.value
    if isinstance(value, Logic):  # a 1-bit port
        return int(value)
    return value.to_signed() if signed else value.to_unsigned()


class CycleCounter:
    """Counts rising edges of ``clk``; ``now`` is the current cycle's number."""

    def __init__(self, clk) -> None:
        self.clk = clk
        self.now = 0

    def start(self) -> None:
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            self.now += 1


Txn = Mapping[str, int] | Callable[[], Mapping[str, int]]
"""A transaction: field values, or a function that returns them when it is offered."""


class StreamSource:
    """Drives ``fields`` (name -> handle) and ``valid``; a new transaction is offered
    only in cycles where ``pattern`` yields 1 (and its ``when``, if any, holds), and once
    offered it is held until taken."""

    def __init__(self, clk, valid, ready, fields: Mapping[str, object], cycles: CycleCounter,
                 pattern: Iterable[int] = ALWAYS) -> None:
        self.clk, self.valid, self.ready, self.fields = clk, valid, ready, dict(fields)
        self.cycles = cycles
        self.pattern = itertools.cycle(pattern)
        self.queue: deque[tuple[Txn, Callable[[], bool] | None]] = deque()
        self.accepted: list[int] = []
        """Cycle of each handshake, in order."""
        self.valid.value = 0

    def send(self, txn: Txn, when: Callable[[], bool] | None = None) -> None:
        """Queue ``txn``. ``when`` gates it: it is offered only from a cycle whose rising
        edge finds ``when()`` true; every handshake of the cycles before is recorded by
        then, so a testbench can make a transaction wait for an output (a sequencer)."""
        self.queue.append((txn, when))

    def start(self) -> None:
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        holding = False
        while True:
            await RisingEdge(self.clk)
            if not holding and self.queue and (self.queue[0][1] is None or self.queue[0][1]()) \
                    and next(self.pattern):
                txn = self.queue[0][0]
                for name, value in (txn() if callable(txn) else txn).items():
                    self.fields[name].value = value
                holding = True
            self.valid.value = int(holding)
            await ReadOnly()
            if holding and int(self.ready.value):
                self.queue.popleft()
                self.accepted.append(self.cycles.now)
                holding = False


class StreamSink:
    """Drives ``ready`` from ``pattern`` and collects ``fields`` at each handshake."""

    def __init__(self, clk, valid, ready, fields: Mapping[str, object], cycles: CycleCounter,
                 pattern: Iterable[int] = ALWAYS, signed: Iterable[str] = ()) -> None:
        self.clk, self.valid, self.ready, self.fields = clk, valid, ready, dict(fields)
        self.cycles = cycles
        self.pattern = itertools.cycle(pattern)
        self.signed = set(signed)
        self.received: deque[dict[str, int]] = deque()
        self.times: list[int] = []
        """Cycle of each handshake, in order."""
        self.ready.value = 0

    def start(self) -> None:
        cocotb.start_soon(self._run())

    async def _run(self) -> None:
        while True:
            await RisingEdge(self.clk)
            ready = next(self.pattern)
            self.ready.value = ready
            await ReadOnly()
            if ready and int(self.valid.value):
                self.received.append({name: _read(h, name in self.signed)
                                      for name, h in self.fields.items()})
                self.times.append(self.cycles.now)
