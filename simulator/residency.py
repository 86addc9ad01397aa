# SPDX-License-Identifier: Apache-2.0
"""Which activations stay in the on-chip activation memory, and which go through DRAM.

The program's activations all have a home in the DRAM arena; the activation memory
(``activation_buffer_kib``) holds a working set of them. This pass walks the program
once, in order, with the knowledge a compiler has of every future use, and decides
per instruction what must be loaded from DRAM and what must be stored there:

* an operand that is not on chip is loaded (a tensor written by the host always is);
* a result stays on chip when the instruction's operands and results fit together;
  otherwise the instruction streams: its result goes out to DRAM as it is produced;
* to make room, dead tensors are dropped first, then the live tensor whose next use is
  farthest away (Belady's choice); a tensor that is not yet in DRAM is written back;
* the host link reads DRAM, so a tensor the host needs is written back first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from simulator.timing import Operand, Work

NEVER = 1 << 62
"""The next use of a tensor that is not read again."""


@dataclass
class _Tensor:
    key: str
    ranges: list[Operand]
    on_chip: bool = False
    in_dram: bool = False
    producer: int = -1
    uses: list[int] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(r.nbytes for r in self.ranges)

    def overlaps(self, op: Operand) -> bool:
        return any(r.addr < op.addr + op.nbytes and op.addr < r.addr + r.nbytes
                   for r in self.ranges)

    def next_use(self, after: int) -> int:
        return next((u for u in self.uses if u > after), NEVER)


@dataclass(frozen=True)
class Traffic:
    """DRAM traffic of one instruction, with the instructions it waits for."""

    load_bytes: int = 0
    """Activation bytes loaded from DRAM before or while it computes."""
    store_bytes: int = 0
    """Result bytes streamed out to DRAM as they are produced."""
    writebacks: tuple[tuple[int, int], ...] = ()
    """``(bytes, producer)`` of live tensors written back before this instruction."""
    load_after: tuple[int, ...] = ()
    """Instructions whose result must be in DRAM before the loads start."""
    after: tuple[int, ...] = ()
    """Instructions whose on-chip result it reads."""


def _tensors(works: list[Work], keys: list[str]) -> tuple[list[list[_Tensor]],
                                                          list[list[_Tensor]]]:
    """Per instruction, the tensors it reads and the tensors it writes."""
    live: list[_Tensor] = []
    reads, writes = [], []
    for i, (w, key) in enumerate(zip(works, keys)):
        rd = []
        for op in w.reads:
            for t in live:
                if t.overlaps(op) and t not in rd:
                    rd.append(t)
                    t.uses.append(i)
        wr = []
        for op in w.writes:
            live = [t for t in live if t.key == key or not t.overlaps(op)]
            t = next((t for t in live if t.key == key), None)
            if t is None:
                t = _Tensor(key, [], producer=i)
                live.append(t)
            t.ranges.append(op)
            if t not in wr:
                wr.append(t)
        reads.append(rd)
        writes.append(wr)
    return reads, writes


def plan(works: list[Work], keys: list[str], capacity: int) -> list[Traffic]:
    """The DRAM traffic of each instruction with an activation memory of ``capacity`` bytes.

    ``keys`` names the tensor each instruction writes (instructions with the same key
    write slices of one tensor, as the copies of a Concat do).
    """
    reads, writes = _tensors(works, keys)
    on_chip: list[_Tensor] = []
    out: list[Traffic] = []
    for i, w in enumerate(works):
        rd, wr = reads[i], writes[i]
        if w.unit == "host":
            wbs = []
            for t in rd:  # the host reads DRAM
                if not t.in_dram:
                    wbs.append((t.nbytes, t.producer))
                    t.in_dram = True
            producers = tuple(sorted({t.producer for t in rd}))
            for t in wr:  # and writes DRAM
                t.in_dram, t.on_chip = True, False
                t.producer = i
            on_chip[:] = [t for t in on_chip if t.on_chip]
            out.append(Traffic(writebacks=tuple(wbs), load_after=producers))
            continue
        if w.unit == "control":
            out.append(Traffic())
            continue
        load, load_after, after = 0, [], []
        for t in rd:
            if t.on_chip:
                after.append(t.producer)
            else:
                load += t.nbytes
                load_after.append(t.producer)
        need = sum(t.nbytes for t in rd) + sum(t.nbytes for t in wr if t not in rd)
        streams = need > capacity
        keep = [t for t in rd + wr if t.on_chip or not streams]
        wbs = _make_room(on_chip, keep, capacity, i)
        for t in rd:
            if not t.on_chip and not streams:
                t.on_chip = True
                on_chip.append(t)
        store = 0
        for t in wr:
            t.producer = i
            if streams and not t.on_chip:
                store += sum(r.nbytes for r in w.writes if t.overlaps(r))
                t.in_dram = True
            else:
                t.in_dram = False
                if not t.on_chip:
                    t.on_chip = True
                    on_chip.append(t)
        out.append(Traffic(load, store, tuple(wbs), tuple(sorted(set(load_after))),
                           tuple(sorted(set(after)))))
    return out


def _make_room(on_chip: list[_Tensor], keep: list[_Tensor], capacity: int,
               now: int) -> list[tuple[int, int]]:
    """Evict from ``on_chip`` (in place) until ``keep`` fits; returns the writebacks."""
    wbs = []
    for t in list(on_chip):  # dead tensors leave for free
        if t not in keep and t.next_use(now - 1) == NEVER:
            t.on_chip = False
            on_chip.remove(t)
    need = sum(t.nbytes for t in keep)
    used = sum(t.nbytes for t in on_chip if t not in keep)
    victims = sorted((t for t in on_chip if t not in keep), key=lambda t: -t.next_use(now))
    for t in victims:
        if used + need <= capacity:
            break
        if not t.in_dram:
            wbs.append((t.nbytes, t.producer))
            t.in_dram = True
        t.on_chip = False
        on_chip.remove(t)
        used -= t.nbytes
    return wbs
