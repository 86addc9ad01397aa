# SPDX-License-Identifier: Apache-2.0
"""Which activations stay in the on-chip activation memory, and which go through DRAM.

The program's activations all have a home in the DRAM arena; the activation memory
(``activation_buffer_kib``) holds a working set of them. This pass walks the program
once, in order, with the knowledge a compiler has of every future use, and decides
per instruction what must be loaded from DRAM and what must be stored there:

* an operand that is not on chip is loaded (a tensor written by the host always is);
  an instruction that reads part of a tensor loads that part, and the tensor stays
  in DRAM, unless the whole tensor fits in the room left beside the live tensors;
* a result stays on chip when the instruction's operands and results fit together;
  otherwise the instruction streams: its result goes out to DRAM as it is produced;
* to make room, dead tensors are dropped first, then the live tensor whose next use is
  farthest away (Belady's choice); a tensor that is not yet in DRAM is written back;
* the host link reads DRAM, so a tensor the host needs is written back first.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from npusim.simulator.timing import Operand, Work

NEVER = 1 << 62
"""The next use of a tensor that is not read again."""


@dataclass(eq=False)
class _Tensor:
    key: str
    ranges: list[Operand]
    on_chip: bool = False
    in_dram: bool = False
    producer: int = -1
    uses: list[int] = field(default_factory=list)
    """Instructions that read it, in increasing order."""
    nbytes: int = 0
    """Bytes of its ranges (set once its ranges are complete)."""
    serial: int = 0
    """Order of creation (the order operands list the tensors they overlap)."""

    def overlaps(self, op: Operand) -> bool:
        return any(r.addr < op.addr + op.nbytes and op.addr < r.addr + r.nbytes
                   for r in self.ranges)

    def next_use(self, after: int) -> int:
        k = bisect.bisect_right(self.uses, after)
        return self.uses[k] if k < len(self.uses) else NEVER


class _Live:
    """The live tensors' byte ranges, sorted by address, for finding the tensors an operand
    overlaps in time logarithmic in their number. Ranges of different tensors never
    overlap (a write drops the tensors it overlaps); a tensor's own overlapping ranges are
    merged here (its ``ranges`` keep every write)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.entries: list[tuple[int, int, _Tensor]] = []  # (start, end, tensor), by start
        self.empty: list[_Tensor] = []  # tensors with an empty range (checked one by one)

    def overlapping(self, op: Operand) -> list[_Tensor]:
        """The tensors with a range that overlaps ``op``, oldest first."""
        if not op.nbytes:  # an empty operand: the definition, by a scan
            found = [t for t in dict.fromkeys(e[2] for e in self.entries) if t.overlaps(op)]
        else:
            end = op.addr + op.nbytes
            k = bisect.bisect_left(self.starts, end)
            found = []
            while k > 0 and self.entries[k - 1][1] > op.addr:
                k -= 1
                if self.entries[k][2] not in found:
                    found.append(self.entries[k][2])
        found += [t for t in self.empty if t not in found and t.overlaps(op)]
        return sorted(found, key=lambda t: t.serial)

    def remove(self, t: _Tensor) -> None:
        keep = [k for k, e in enumerate(self.entries) if e[2] is not t]
        self.entries = [self.entries[k] for k in keep]
        self.starts = [self.starts[k] for k in keep]
        if t in self.empty:
            self.empty.remove(t)

    def add(self, t: _Tensor, op: Operand) -> None:
        start, end = op.addr, op.addr + op.nbytes
        if not op.nbytes:
            if t not in self.empty:
                self.empty.append(t)
            return
        k = bisect.bisect_left(self.starts, end)
        while k > 0 and self.entries[k - 1][1] >= start:  # merge t's touching ranges
            k -= 1
            s0, e0, owner = self.entries[k]
            if owner is t:
                start, end = min(start, s0), max(end, e0)
                del self.entries[k]
                del self.starts[k]
        k = bisect.bisect_left(self.starts, start)
        self.starts.insert(k, start)
        self.entries.insert(k, (start, end, t))


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
    live = _Live()
    by_key: dict[str, _Tensor] = {}  # the live tensor of each key
    reads, writes = [], []
    made: list[_Tensor] = []
    for i, (w, key) in enumerate(zip(works, keys)):
        rd: list[_Tensor] = []
        for op in w.reads:
            for t in live.overlapping(op):
                if t not in rd:
                    rd.append(t)
                    t.uses.append(i)
        wr: list[_Tensor] = []
        for op in w.writes:
            for t in live.overlapping(op):
                if t.key != key:  # overwritten: dead from here on
                    live.remove(t)
                    if by_key.get(t.key) is t:
                        del by_key[t.key]
            t = by_key.get(key)
            if t is None:
                t = by_key[key] = _Tensor(key, [], producer=i, serial=len(made))
                made.append(t)
            t.ranges.append(op)
            live.add(t, op)
            if t not in wr:
                wr.append(t)
        reads.append(rd)
        writes.append(wr)
    for t in made:
        t.nbytes = sum(r.nbytes for r in t.ranges)
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
        # a slice of a tensor in DRAM is read alone, and the tensor stays there, unless
        # the whole tensor fits in the memory's free room beside what is live: then it
        # comes in whole, and its next slices are read on chip
        part = {t: _part(t, w.reads) for t in rd}
        live = sum(t.nbytes for t in on_chip if t.next_use(i - 1) != NEVER and t not in rd)
        room = capacity - live - sum(t.nbytes for t in wr if t not in rd)
        for t in rd:
            if not t.on_chip and part[t] < t.nbytes and t.nbytes <= room:
                part[t] = t.nbytes
            if part[t] == t.nbytes or t.on_chip:
                room -= t.nbytes
        need = (sum(t.nbytes if t.on_chip or part[t] == t.nbytes else part[t] for t in rd)
                + sum(t.nbytes for t in wr if t not in rd))
        streams = need > capacity
        for t in rd:
            if t.on_chip:
                after.append(t.producer)
            else:
                load += part[t]
                load_after.append(t.producer)
        whole = [t for t in rd if t.on_chip or part[t] == t.nbytes]
        keep = [t for t in whole + wr if t.on_chip or not streams]
        wbs = _make_room(on_chip, keep, capacity, i)
        for t in whole:  # a tensor read in part stays in DRAM; the part passes through
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


def _part(t: _Tensor, ops: tuple[Operand, ...]) -> int:
    """The bytes of ``t`` that ``ops`` read (all of it at most)."""
    got = 0
    for op in ops:
        for r in t.ranges:
            got += max(0, min(op.addr + op.nbytes, r.addr + r.nbytes) - max(op.addr, r.addr))
    return min(got, t.nbytes)


def _make_room(on_chip: list[_Tensor], keep: list[_Tensor], capacity: int,
               now: int) -> list[tuple[int, int]]:
    """Evict from ``on_chip`` (in place) until ``keep`` fits; returns the writebacks."""
    wbs = []
    kept = {id(t) for t in keep}
    alive = []
    for t in on_chip:  # dead tensors leave for free
        if id(t) not in kept and t.next_use(now - 1) == NEVER:
            t.on_chip = False
        else:
            alive.append(t)
    on_chip[:] = alive
    need = sum(t.nbytes for t in keep)
    used = sum(t.nbytes for t in on_chip if id(t) not in kept)
    if used + need <= capacity:
        return wbs
    victims = sorted((t for t in on_chip if id(t) not in kept), key=lambda t: -t.next_use(now))
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
