# SPDX-License-Identifier: Apache-2.0
"""The decoupled-queue timing model: load, compute, store and host queues with tokens.

Like VTA and Gemmini, the device runs four in-order queues that overlap:

* **load** DMAs weights (of layers that stream them) and activations from DRAM into
  double-buffered on-chip slots;
* **compute** runs the matrix and vector units, one instruction chunk at a time;
* **store** DMAs results (and write-backs of evicted activations) to DRAM;
* **host** moves data over the host link (PCIe) and runs host calls.

Dependency tokens tie them together: a compute chunk waits for its load; a load
waits for a free slot, which the compute chunk two loads back frees (double
buffering, so the next layer's weights prefetch while this one computes); a store
waits for its compute chunk, and a compute chunk for the store that empties its
output slot; a load of a tensor waits until that tensor is in DRAM. Loads and stores
share the DRAM channel: each transfer takes the earliest gap in its calendar.

Example:
    >>> st = schedule(program, load_device("tiny"))    # doctest: +SKIP
    >>> st.cycles, st.roofline_ratio                   # doctest: +SKIP
"""

from __future__ import annotations

import bisect
import math

from npusim.simulator import isa, timing
from npusim.simulator.config import DeviceConfig
from npusim.simulator.program import Program
from npusim.simulator.residency import Traffic, plan
from npusim.simulator.stats import LayerStats, RunStats, Slice
from npusim.simulator.timing import MAX_CHUNKS, Operand, Work, split


class _Calendar:
    """Busy intervals of one shared resource (the DRAM channel)."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def reserve(self, t0: int, dur: int) -> int:
        """Book ``dur`` cycles at the earliest gap starting at or after ``t0``."""
        k = max(0, bisect.bisect_right(self.starts, t0) - 1)
        start = t0
        while k < len(self.starts):
            if self.ends[k] <= start:
                k += 1
                continue
            if self.starts[k] >= start + dur:
                break
            start = self.ends[k]
            k += 1
        k = bisect.bisect_right(self.starts, start)
        self.starts.insert(k, start)
        self.ends.insert(k, start + dur)
        return start


def program_work(program: Program, cfg: DeviceConfig) -> list[Work]:
    """The :class:`Work` of every instruction of ``program``."""
    wbase = program.memory_map["weights"][0]
    wdesc = {wbase + t.addr: t for t in program.weight_tensors}
    default = cfg.format()
    out = []
    for i in program.instructions:
        fmt, wbytes, host_io = default, 0, ((), ())
        if isinstance(i, isa.MvMul) and i.weights in wdesc:
            t = wdesc[i.weights]
            wbytes = t.nbytes
            fmt = cfg.format(t.dtype if t.dtype != "float32" else "fp32")
        if isinstance(i, isa.HostCall):
            h = program.host_ops[i.index]
            host_io = (tuple(Operand(t.addr, t.nbytes) for t in h.in_dram(h.inputs)),
                       tuple(Operand(t.addr, t.nbytes) for t in h.in_dram(h.outputs)))
        out.append(timing.work(i, cfg, fmt, wbytes, host_io))
    return out


def schedule(program: Program, cfg: DeviceConfig, works: list[Work] | None = None
             ) -> RunStats:
    """Schedule ``program`` on ``cfg``: the timeline and the cycle statistics
    (``works``: :func:`program_work`'s, when the caller has them)."""
    works = program_work(program, cfg) if works is None else works
    keys = [rec.get("tensor") or f"#{k}" for k, rec in enumerate(program.layers)]
    traffic = plan(works, keys, cfg.activation_buffer_kib * 1024)
    names = [(rec["name"], rec["op"]) for rec in program.layers]
    return simulate(works, traffic, cfg, names, program.instructions)


def simulate(works: list[Work], traffic: list[Traffic], cfg: DeviceConfig,
             names: list[tuple[str, str]] | None = None,
             instructions: tuple[isa.Instruction, ...] | None = None) -> RunStats:
    """Run the queues over priced instructions: the timeline and the statistics.

    ``names`` gives each instruction's ``(layer name, op)`` for the report. A
    matrix-vector unit (:mod:`npusim.simulator.mvu`) also needs the ``instructions``.
    """
    names = names or [(f"#{k}", w.unit) for k, w in enumerate(works)]
    if cfg.mvu is None:
        return _Scheduler(cfg).run(works, traffic, names)
    if instructions is None or len(instructions) != len(works):
        raise ValueError("a matrix-vector unit is scheduled from the program's instructions")
    from npusim.simulator.mvu import MvuScheduler  # it builds on _Scheduler
    consumers: list[list[int]] = [[] for _ in works]
    for k, tr in enumerate(traffic):
        for p in sorted(set(tr.after) | set(tr.load_after)):
            consumers[p].append(k)
    return MvuScheduler(cfg, instructions, consumers).run(works, traffic, names)


class _Scheduler:
    def __init__(self, cfg: DeviceConfig) -> None:
        self.cfg = cfg
        self.dram = _Calendar()
        self.load_free = self.store_free = self.compute_free = self.host_free = 0
        self.slot_free: list[int] = []  # per load chunk: when its slot is released
        self.dram_ready: dict[int, int] = {}  # instruction -> its result is in DRAM
        self.done: dict[int, int] = {}  # instruction -> its last compute or host job ended
        self.slices: list[Slice] = []

    def _xfer(self, nbytes: int) -> int:
        return math.ceil(nbytes / self.cfg.dram_bytes_per_cycle)

    def _store(self, i: int, t0: int, nbytes: int, what: str) -> tuple[int, int]:
        """A store job; returns (transfer end, data in DRAM)."""
        dur = self._xfer(nbytes)
        start = self.dram.reserve(max(self.store_free, t0), dur)
        self.store_free = start + dur
        self.slices.append(Slice("store", i, start, start + dur, what, nbytes))
        return start + dur, start + dur + self.cfg.dram_latency_cycles

    def _writebacks(self, i: int, tr: Traffic) -> int:
        done = 0
        for nbytes, producer in tr.writebacks:
            _, ready = self._store(i, self.done.get(producer, 0), nbytes, "writeback")
            self.dram_ready[producer] = ready
            done = max(done, ready)
        return done

    def run(self, works: list[Work], traffic: list[Traffic],
            names: list[tuple[str, str]]) -> RunStats:
        cfg = self.cfg
        layers, retire = [], 0
        host_units = {k for k, w in enumerate(works) if w.unit == "host"}
        totals = {"ideal": 0, "dram": 0, "host": 0}
        for i, (w, tr, rec) in enumerate(zip(works, traffic, names)):
            first = len(self.slices)
            wb_done = self._writebacks(i, tr)
            dep_dram = max((self.dram_ready.get(p, 0) for p in tr.load_after), default=0)
            stalls = {"load": 0, "store": 0, "host": 0}
            if w.unit == "host":
                dur = (w.host_transfers * cfg.host_latency_cycles
                       + math.ceil(w.host_bytes / cfg.host_bytes_per_cycle))
                start = max(self.host_free, dep_dram, wb_done)
                self.host_free = start + dur
                self.slices.append(Slice("host", i, start, start + dur, "transfer",
                                         w.host_bytes))
                self.done[i] = self.dram_ready[i] = start + dur
            elif w.unit in ("matrix", "vector"):
                self._compute(i, w, tr, wb_done, dep_dram, stalls,
                              any(p in host_units for p in tr.load_after))
            mine = self.slices[first:]
            end = max((s.end for s in mine), default=retire)
            start = min((s.start for s in mine), default=retire)
            cycles, retire = max(retire, end) - retire, max(retire, end)
            layers.append(self._layer(rec, w, mine, start, end, cycles, stalls, totals))
        roof = max(totals["ideal"], self._xfer(totals["dram"])) + totals["host"]
        return RunStats(retire, cfg.clock_mhz, cfg.peak_macs_per_cycle, tuple(layers), roof,
                        tuple(self.slices))

    def _chunks(self, w: Work, tr: Traffic) -> list[int]:
        """Compute cycles per chunk; a vector op that streams is cut so that one chunk's
        operands and results, double-buffered, fit the activation memory."""
        if w.unit != "vector" or not (tr.load_bytes or tr.store_bytes):
            return list(w.compute)
        capacity = self.cfg.activation_buffer_kib * 1024
        n = min(MAX_CHUNKS, max(1, math.ceil(2 * (tr.load_bytes + tr.store_bytes) / capacity)))
        return split(w.compute_cycles, n)

    def _load(self, i: int, nbytes: int, after: int, what: str) -> tuple[int, int]:
        """A load job into the next free slot; returns (start, data on chip)."""
        g = len(self.slot_free)
        slot = self.slot_free[g - 2] if g >= 2 else 0
        dur = self._xfer(nbytes)
        start = self.dram.reserve(max(self.load_free, after, slot), dur)
        self.load_free = start + dur
        self.slices.append(Slice("load", i, start, start + dur, what, nbytes))
        self.slot_free.append(1 << 62)  # until its compute chunk is done
        return start, start + dur + self.cfg.dram_latency_cycles

    def _compute(self, i: int, w: Work, tr: Traffic, wb_done: int, dep_dram: int,
                 stalls: dict[str, int], waits_on_host: bool) -> None:
        compute = self._chunks(w, tr)
        n = len(compute)
        loads = [a + b for a, b in zip(split(w.weight_bytes, n), split(tr.load_bytes, n))]
        stores = split(tr.store_bytes, n)
        dep = max([wb_done] + [self.done.get(p, 0) for p in tr.after])
        what = ("activations" if not w.weight_bytes else
                "weights" if not tr.load_bytes else "weights+activations")
        issued: dict[int, tuple[int, int, int]] = {}  # chunk -> (start, ready, slot index)

        def issue(k: int) -> None:
            if k < n and loads[k]:
                start, ready = self._load(i, loads[k], dep_dram, what)
                issued[k] = (start, ready, len(self.slot_free) - 1)

        issue(0)
        issue(1)  # double buffering: two loads in flight before the first compute
        freed: list[int] = []  # per chunk: when its output slot is emptied
        for k in range(n):
            start, ready, slot = issued.get(k, (-1, 0, -1))
            out_slot = freed[k - 2] if k >= 2 else 0
            begin = max(self.compute_free, ready, dep, out_slot)
            gap = begin - self.compute_free
            if gap > 0:  # charge the idle compute unit to what it waited for
                if begin == ready:
                    host_bound = waits_on_host and start == dep_dram
                    stalls["host" if host_bound else "load"] += gap
                elif begin in (out_slot, wb_done):
                    stalls["store"] += gap
                else:
                    stalls["host"] += gap
            self.compute_free = begin + compute[k]
            self.slices.append(Slice(w.unit, i, begin, self.compute_free, "compute"))
            if slot >= 0:
                self.slot_free[slot] = self.compute_free
            issue(k + 2)  # the slot is free again: prefetch ahead of this chunk's store
            if stores[k]:
                end, in_dram = self._store(i, self.compute_free, stores[k], "activations")
                self.dram_ready[i] = in_dram
                freed.append(end)
            else:
                freed.append(0)
        self.done[i] = self.compute_free

    def _layer(self, rec: tuple[str, str], w: Work, mine: list[Slice], start: int, end: int,
               cycles: int, stalls: dict[str, int], totals: dict[str, int]) -> LayerStats:
        cfg = self.cfg
        dram_bytes = sum(s.nbytes for s in mine if s.track in ("load", "store"))
        dma = sum(s.end - s.start for s in mine if s.track in ("load", "store"))
        host = sum(s.end - s.start for s in mine if s.track == "host")
        compute = sum(s.end - s.start for s in mine if s.track in ("matrix", "vector"))
        ideal = math.ceil(w.macs / cfg.peak_macs_per_cycle) if w.unit == "matrix" else compute
        roof = max(ideal, self._xfer(dram_bytes)) + host
        totals["ideal"] += ideal
        totals["dram"] += dram_bytes
        totals["host"] += host
        busiest = max((compute, "compute"), (dma, "memory"), (host, "host"))[1]
        if w.unit == "control":
            busiest = "none"
        span = max(1, end - start)
        return LayerStats(rec[0], rec[1], w.unit, start, end, cycles, compute, w.macs,
                          dram_bytes, w.host_bytes, w.pinned,
                          {c: v for c, v in stalls.items() if v}, busiest, roof,
                          w.macs / (span * cfg.peak_macs_per_cycle))
