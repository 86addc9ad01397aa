# SPDX-License-Identifier: Apache-2.0
"""The timing of a Brainwave-style matrix-vector unit (``matrix_unit = "mvu"``).

The device has ``cores`` identical cores; each takes its share of an instruction's
activation rows, ``dot_rows`` at a time, and they run in step, so every figure here is
one core's. A core is a chain of in-order units joined by queues:

* the **MVU**: ``tiles`` tile engines of ``array_cols`` dot-product engines, each
  reducing ``native_dim`` lanes for ``dot_rows`` rows per cycle. A weight matrix of
  ``O x K`` is laid out as ``v = ceil(K / (tiles * native_dim))`` words per row group of
  ``array_cols`` outputs, ``G = max(ceil(O / array_cols), row_chunk)`` row groups; one
  ``mv_mul`` over ``dot_rows`` rows issues ``v * G`` matrix words, one per cycle, in
  chunks of ``row_chunk`` row groups (the last chunk up to twice that): for each chunk,
  ``v`` passes over its row groups, results leaving on the last pass. A result leaves
  the MVU ``tiles * hop_cycles + tile_cycles + accum_cycles`` after its word issued; the
  output queue then gives ``dot_rows`` vectors and pauses ``output_bubble`` cycles;
* the **vector chain**: the external vector register file, then ``mfus``
  multifunction units (each activation -> add/sub/max -> multiply), one vector of
  ``vector_lanes`` elements per cycle. Every result passes it, so the vector ops that
  follow a product and read only its result ride along in the same pass
  (``mv_mul -> vv_add -> v_sigm -> vv_mul -> v_wr``) at no cost but their place in the
  chain; any other vector op is a pass of its own, started from the register file;
* the **loader**: writes each pass's vectors back (to the ``tiles`` MVU register files
  when a product reads them), and loads the host's inputs into the MVU's register
  files. In order, one vector a cycle, ``init_cycles`` per macro-op. The host's rows
  come in one pass at a time, each pass's behind the write-back of the pass before, as
  that NPU's compiler orders them, so a product of several passes fed by the host pays a
  round trip per pass; a product that reads rows on chip issues its passes back to back.

A unit waits for its operands by the loader's write-back count: a consumer starts
``loader_cycles + tag_cycles`` after the write-back it needs has ended, so a recurrence
(step ``t + 1``'s product reading step ``t``'s state) pays the whole round trip
MVU -> chain -> loader -> MVU every step. ``docs/timing.md`` gives the formulas and the
published figures they are checked against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npusim.simulator import isa
from npusim.simulator.config import DeviceConfig, MvuConfig
from npusim.simulator.residency import Traffic
from npusim.simulator.schedule import _Scheduler
from npusim.simulator.stats import Slice
from npusim.simulator.timing import MAX_CHUNKS, Work, ceil_div, conv_output_hw, work

ACT, ADD, MUL = 0, 1, 2
"""The stages of one multifunction unit, in the order a vector passes them."""


def layout(k: int, o: int, cfg: DeviceConfig) -> tuple[int, int, tuple[int, int, int]]:
    """``(v, G, (n, Q, A))`` of an ``O x K`` matrix: words per row group, row groups, and
    its accumulator chunks: ``n`` of ``Q`` row groups, then a last one of ``A`` (``Q`` to
    ``2Q - 1``)."""
    m = cfg.mvu
    v = ceil_div(k, cfg.tiles * cfg.native_dim)
    groups = max(ceil_div(o, cfg.array_cols), m.row_chunk)
    n = groups // m.row_chunk - 1
    return v, groups, (n, m.row_chunk, groups - n * m.row_chunk)


def mvu_latency(m: MvuConfig, cfg: DeviceConfig) -> int:
    """From a matrix word's issue to its result at the MVU's output queue."""
    return cfg.tiles * m.hop_cycles + m.tile_cycles + m.accum_cycles


@dataclass
class _Product:
    """One product's passes through the MVU, as offsets from its first issue cycle."""

    issue: int
    """Cycles the MVU is busy."""
    first: int
    """First result delivered by the output queue."""
    last: int
    """Last result delivered."""
    vectors: int
    """Result vectors (of ``array_cols`` elements, one row each)."""
    load: int
    """Loader cycles to bring its activation rows from the host's input into the MVU."""
    passes: int
    """``mv_mul`` macro-ops (each ``dot_rows`` rows of one matrix)."""


def product(n_rows: int, k: int, o: int, matrices: int, cfg: DeviceConfig) -> _Product:
    """``matrices`` products of ``O x K`` matrices with ``n_rows`` activation rows each."""
    m = cfg.mvu
    v, groups, (n, q, a) = layout(k, o, cfg)
    passes = matrices * ceil_div(n_rows, m.cores * m.dot_rows)
    lat = mvu_latency(m, cfg)
    deliver = m.dot_rows + m.output_bubble  # cycles per row group at the output queue
    # one pass, chunk by chunk: chunk c's results leave on its last word pass, at
    # out_c = init + c v Q + (v - 1) Q + L, and the queue delivers them in order; out_c
    # grows by v Q a chunk, the queue takes Q (D + b), so the queue is busiest from the
    # first chunk on or from the last equal chunk on (closed form: no loop over chunks)
    out0 = m.init_cycles + (v - 1) * q + lat
    free = max(out0 + n * q * deliver, out0 + (n - 1) * v * q + q * deliver) if n else 0
    out_last = m.init_cycles + n * v * q + (v - 1) * a + lat
    first = out0 if n else out_last
    free = max(free, out_last) + a * deliver
    period = m.init_cycles + v * groups  # one mv_mul macro-op
    last = max((passes - 1) * period + free, first + passes * groups * deliver)
    load = passes * cfg.tiles * (v * m.dot_rows + m.init_cycles)
    return _Product(passes * period, first, last, passes * groups * m.dot_rows, load,
                    passes)


def product_of(i: isa.Instruction, cfg: DeviceConfig, one_pass: bool = False) -> _Product:
    """The product ``i`` makes; with ``one_pass``, one ``mv_mul`` macro-op of an
    ``MV_MUL``."""
    if isinstance(i, isa.MvMul):
        oh, ow = conv_output_hw(i)
        k = i.kernel_h * i.kernel_w * i.channels // i.groups
        if one_pass:
            return product(cfg.mvu.cores * cfg.mvu.dot_rows, k, i.out_channels // i.groups,
                           1, cfg)
        return product(i.batch * oh * ow, k, i.out_channels // i.groups, i.groups, cfg)
    # MM_MUL: the stationary operand B is written into the matrix register files first,
    # one word per engine per cycle (the rate they are read at), then used as weights
    p = product(i.m, i.k, i.n, i.batch, cfg)
    v, groups, _ = layout(i.k, i.n, cfg)
    fill = (1 if i.b_shared else i.batch) * (v * groups + cfg.mvu.init_cycles)
    return _Product(p.issue + fill, p.first + fill, p.last + fill, p.vectors, p.load,
                    p.passes)


def round_trip(i: isa.Instruction, cfg: DeviceConfig) -> int:
    """Cycles from ``i``'s issue to its result being usable by the next instruction, on
    an idle device: what the compiler orders instructions by."""
    m = cfg.mvu
    back = m.evrf_cycles + m.mfus * m.mfu_cycles + m.loader_cycles + m.tag_cycles
    if isinstance(i, (isa.MvMul, isa.MmMul)):
        return product_of(i, cfg).last + back
    w = work(i, cfg, cfg.format())
    if w.unit != "vector":
        return 0
    return m.init_cycles + ceil_div(w.compute_cycles, m.cores) + back


def stages(i: isa.Instruction) -> list[int] | None:
    """The multifunction-unit stages a vector op needs, in order; ``None`` if it is not
    one a multifunction unit does (it then makes a pass of its own)."""
    if isinstance(i, (isa.VRelu, isa.VUnary)):
        return [ACT]
    if isinstance(i, isa.VvAdd):
        return [ADD, ACT] if i.relu else [ADD]
    if isinstance(i, isa.VvAlu):  # a broadcast operand is a vector in the unit's file
        if i.op in (isa.AluOp.ADD, isa.AluOp.SUB, isa.AluOp.MAX):
            return [ADD]
        if i.op == isa.AluOp.MUL:
            return [MUL]
    return None


def place(used: int, need: list[int], mfus: int) -> int | None:
    """The last stage index after placing ``need`` past stage index ``used`` (stages
    numbered ``3 * mfu + stage``), or ``None`` if the chain has no room."""
    for s in need:
        k = used + 1
        while k < 3 * mfus and k % 3 != s:
            k += 1
        if k >= 3 * mfus:
            return None
        used = k
    return used


@dataclass
class _Chain:
    """A pass through the vector chain, still open to the vector ops that follow."""

    head: int
    """The instruction whose vectors enter the chain."""
    ready: int
    """First vector at the chain's entry."""
    arrive: int
    """Last vector at the chain's entry."""
    vectors: int
    used: int
    """The last multifunction stage index taken (-1: none)."""
    members: list[int] = field(default_factory=list)
    operands: int = 0
    """When every other operand the chain's ops read is written."""
    passes: int = 1
    """Write-backs (one per ``mv_mul`` macro-op)."""
    rest: int = 0
    """Passes of its product still to run, each on host rows the loader brings behind the
    write-back of the pass before."""
    step: _Product | None = None
    """One of those passes."""
    slot: int | None = None
    """The load slot of its product's operands, freed when the last pass has read them."""


_OPEN = 1 << 62
"""The ready time of an instruction whose pass is not written back yet."""


def _overlaps(ops, op) -> bool:
    return any(o.addr < op.addr + op.nbytes and op.addr < o.addr + o.nbytes for o in ops)


class MvuScheduler(_Scheduler):
    """:class:`npusim.simulator.schedule._Scheduler` with the matrix-vector unit's compute."""

    def __init__(self, cfg: DeviceConfig, instructions, consumers) -> None:
        super().__init__(cfg)
        m = cfg.mvu
        self.m = m
        self.instructions = instructions
        self.consumers = consumers
        self.mvu_free = self.chain_free = self.loader_free = m.start_cycles
        self.loaded: dict[tuple[int, int], int] = {}  # (host op, address) -> rows written
        self.stepped: set[int] = set()  # products that bring their host rows pass by pass
        self.chain: _Chain | None = None
        self.lat_chain = m.evrf_cycles + m.mfus * m.mfu_cycles

    def run(self, works, traffic, names):
        self.works = works
        # the host's rows each product reads, and the next product that reads other rows
        # of the same input (the loader fetches those as soon as this product's results
        # are written back, double-buffering the MVU's register files)
        self.fed = {i: {(q, ins.src) for q in tr.after + tr.load_after
                        if works[q].unit == "host"}
                    for i, (ins, tr) in enumerate(zip(self.instructions, traffic))
                    if isinstance(ins, (isa.MvMul, isa.MmMul))}
        self.ahead: dict[int, int] = {}
        last: dict[int, int] = {}  # host op -> the last product that read it
        for i, keys in self.fed.items():
            for q, _ in keys:
                if q in last and self.fed[last[q]] != keys:
                    self.ahead.setdefault(last[q], i)
                last[q] = i
        return super().run(works, traffic, names)

    def _fetch(self, i: int, data: int) -> int:
        """Load product ``i``'s rows from the host's input (in the loader's order, after
        what it already holds; only its first pass's rows if it has several passes);
        returns when they can be read."""
        new = [k for k in self.fed[i] if k not in self.loaded]
        if new:
            step = self._step(i)
            if step:
                self.stepped.add(i)
            n = step.load if step else product_of(self.instructions[i], self.cfg).load
            ready = self._load_rows(i, n, max([data] + [self.done.get(q, 0) for q, _ in new]))
            for k in new:
                self.loaded[k] = ready
        return max((self.loaded[k] for k in self.fed[i]), default=0)

    def _step(self, i: int) -> _Product | None:
        """One pass (``mv_mul`` macro-op) of product ``i`` if it has several: the host's
        rows it reads then come in pass by pass, each pass's behind the write-back of the
        pass before. That NPU's compiler emits load, ``mv_mul``, write-back for each group
        of rows, every group's rows at the same register-file addresses
        (compiler/npu_layers.py 19-55), and its loader runs them in order (rtl/ld.sv
        170-182)."""
        ins = self.instructions[i]
        if isinstance(ins, isa.MvMul) and product_of(ins, self.cfg).passes > 1:
            return product_of(ins, self.cfg, one_pass=True)
        return None

    def _load_rows(self, i: int, n: int, data: int) -> int:
        """``n`` loader cycles of host rows for product ``i``, in the loader's order;
        returns when the MVU can read them."""
        start = max(self.loader_free, data)
        self.loader_free = start + n
        written = self.loader_free + self.m.loader_cycles
        self.slices.append(Slice("loader", i, start, written, "input"))
        return written + self.m.tag_cycles

    def _writebacks(self, i: int, tr: Traffic) -> int:
        if self.chain and any(p in self.chain.members for _, p in tr.writebacks):
            self._close()
        return super()._writebacks(i, tr)

    def _close(self) -> None:
        """Write the open chain back: its vectors through the chain and the loader; then
        the passes of its product still to run, one at a time."""
        c, self.chain = self.chain, None
        if c is None:
            return
        done = self._write_back(c)
        begins: list[int] = []
        while c.rest:
            if len(begins) == MAX_CHUNKS - 1 and c.rest > 1:
                self._repeat(c, c.rest - 1, begins[-1] - begins[-2])
                c.rest = 1
            c.rest -= 1
            # the next rows come in behind this write-back: the loader is in order
            begins.append(max(self.mvu_free, self._load_rows(c.head, c.step.load, 0)))
            self.mvu_free = begins[-1] + c.step.issue
            self.slices.append(Slice("matrix", c.head, begins[-1], self.mvu_free, "compute"))
            if c.slot is not None:
                self.slot_free[c.slot] = self.mvu_free
            c.ready, c.arrive = begins[-1] + c.step.first, begins[-1] + c.step.last
            done = self._write_back(c)
        for k in c.members:
            self.done[k] = done
        if c.head in self.ahead:  # the next rows of its input, right behind
            self._fetch(self.ahead[c.head], 0)

    def _repeat(self, c: _Chain, n: int, period: int) -> None:
        """``n`` more passes of ``c`` in closed form. From the second pass on, each starts
        when its rows are in, behind the write-back of the one before, with every unit
        free: they repeat the last pass ``period`` cycles apart. Their jobs are summed
        into one slice per track, as the systolic arrays' waves are into chunks."""
        self.mvu_free += n * period
        self.chain_free += n * period
        self.loader_free += n * period
        rows, matrix, chain, back = self.slices[-4:]
        loader = rows.start + period + n * (rows.end - rows.start)
        for s, start in ((matrix, matrix.start + period), (chain, chain.start + period),
                         (rows, rows.start + period), (back, loader)):
            self.slices.append(Slice(s.track, s.layer, start, start + n * (s.end - s.start),
                                     s.what))

    def _write_back(self, c: _Chain) -> int:
        """One write-back of ``c``: its vectors through the chain and the loader; returns
        when a unit waiting on it can start."""
        m = self.m
        start = max(self.chain_free, c.ready, c.operands)
        end = max(start + c.vectors, c.arrive)  # queued vectors wait at the entry
        self.chain_free = end
        feeds_mvu = any(isinstance(self.instructions[j], (isa.MvMul, isa.MmMul))
                        for k in c.members for j in self.consumers[k])
        ops = c.passes * (self.cfg.tiles if feeds_mvu else 1)
        ld = max(self.loader_free, start + self.lat_chain)
        dur = max(c.vectors + ops * m.init_cycles, end + self.lat_chain - ld)
        ld_end = self.loader_free = ld + dur
        ld_end += m.loader_cycles  # the last vector written
        last = c.members[-1]
        self.slices.append(Slice("vector", last, start, end, "chain"))
        self.slices.append(Slice("loader", last, ld, ld_end, "write-back"))
        return ld_end + m.tag_cycles

    def _compute(self, i: int, w: Work, tr: Traffic, wb_done: int, dep_dram: int,
                 stalls: dict[str, int], waits_on_host: bool) -> None:
        m, ins = self.m, self.instructions[i]
        nbytes = w.weight_bytes + tr.load_bytes
        ready = self._load(i, nbytes, dep_dram, "operands")[1] if nbytes else 0
        slot = len(self.slot_free) - 1 if nbytes else None  # freed once the unit has read it
        c = self.chain
        need = stages(ins) if w.unit == "vector" else None
        if (c is not None and need is not None and c.members[-1] == i - 1
                and self.consumers[i - 1] == [i] and i - 1 in tr.after):
            used = place(c.used, need, m.mfus)
            if used is not None:  # rides along in the open pass
                c.used = used
                c.members.append(i)
                c.operands = max([c.operands, ready] + [self.done.get(p, 0)
                                                       for p in tr.after if p != i - 1])
                self.done[i] = _OPEN
                if slot is not None:
                    self.slot_free[slot] = c.arrive
                self._finish(i, tr)
                return
        self._close()
        # the MVU waits for the rows it multiplies; a residual is added in the first
        # multifunction unit, which waits for it there
        late = set()
        if getattr(ins, "has_residual", 0):
            late = {q for q in tr.after if not _overlaps(self.works[q].writes, w.reads[0])}
        dep = max([wb_done, ready] + [self.done.get(q, 0) for q in tr.after if q not in late])
        if w.unit == "matrix":
            operands = max([0] + [self.done.get(q, 0) for q in late])
            dep = max(dep, self._fetch(i, ready))
            # rows it brought from the host pass by pass: the first pass now, the others
            # when the chain closes, each behind the write-back of the one before
            step = self._step(i) if i in self.stepped else None
            p = step or product_of(ins, self.cfg)
            begin = max(self.mvu_free, dep)
            self.mvu_free = begin + p.issue
            if slot is not None:
                self.slot_free[slot] = self.mvu_free
            self.slices.append(Slice("matrix", i, begin, self.mvu_free, "compute"))
            used = -1
            if getattr(ins, "has_residual", 0):
                used = place(used, [ADD], m.mfus)
            if getattr(ins, "relu", 0):
                used = place(used, [ACT], m.mfus)
            rest = product_of(ins, self.cfg).passes - 1 if step else 0
            self.chain = _Chain(i, begin + p.first, begin + p.last, p.vectors,
                                -1 if used is None else used, [i], operands, p.passes,
                                rest, step, slot)
        else:
            vectors = ceil_div(w.compute_cycles, m.cores)
            begin = dep + m.init_cycles
            used = place(-1, need, m.mfus) if need else None
            self.chain = _Chain(i, begin, begin + vectors, vectors,
                                3 * m.mfus - 1 if used is None else used, [i])
            if slot is not None:
                self.slot_free[slot] = max(self.chain_free, begin) + vectors
        self.done[i] = _OPEN
        self._finish(i, tr)

    def _finish(self, i: int, tr: Traffic) -> None:
        """Close the pass now if nothing can join it; stores follow the write-back."""
        nxt = i + 1
        joinable = (nxt < len(self.instructions) and self.consumers[i] == [nxt]
                    and stages(self.instructions[nxt]) is not None
                    and self.works[nxt].unit == "vector")
        if not joinable:
            self._close()
        if tr.store_bytes:
            self._close()
            self.dram_ready[i] = self._store(i, self.done[i], tr.store_bytes,
                                             "activations")[1]
