# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench of systolic_array.sv: whole GEMMs against the golden matrix product.

The testbench plays the matrix unit's sequencer, its weight DMA and its accumulator
memory. A GEMM ``[N, K] @ [O, K].T`` is cut into column tiles of ``COLS`` outputs (zero
weights in the unused columns) and K passes of ``ROWS`` (the last one zero-padded); each
(tile, pass) is a *job*: one weight tile and the N activation rows that stream through
it, the previous pass's outputs as ``acc_in`` (+0.0 on the first pass). The final
outputs must equal ``numerics.matmul(a, numerics.quantize(w, fmt), fmt)`` bit for bit
(NaN: both NaN).

The weight DMA queues every job's tile, one column per beat, as soon as the GEMM starts;
the array takes a tile into its shadow bank only when that bank is free, so the next
tile loads while the current tile's rows stream. The first row of each job carries
``in_swap_i``. Two sequencers feed the rows:

* ``serial`` (what ``simulator/timing.py`` prices): a job's rows start once the previous
  job's last result has come out; a wave fills and drains the array.
* ``overlap``: a job's rows follow the previous job's at once, except that a row of a
  later K pass waits for its own row of the pass before (its ``acc_in``). Rows of two
  tiles are then in the array together, which exercises the bank rules.

Cycles: from the first weight beat of the GEMM to its last output handshake, both
counted, weight loads included. Serial and always valid/ready, that is ``COLS`` (the
first tile's load, exposed) plus ``N + LATENCY`` per job (every later load hides under
the job before), checked against ``simulator/timing.py`` ``gemm_cycles`` on the pytest
side; overlapped, the cocotb side checks the array's own weight-timing rules
(:func:`overlap_cycles`).
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # the repository, for npusim.rtl.tb under plain `pytest`
    sys.path.insert(0, str(HERE.parents[1]))

from npusim.rtl.tb.runner import report, requires_simulator, run  # noqa: E402
from npusim.simulator import numerics  # noqa: E402
from npusim.simulator.numerics import Format, get_format  # noqa: E402

cocotb = pytest.importorskip("cocotb", reason="cocotb 2.x is not installed")

from npusim.rtl.tb.bench import (  # noqa: E402
    BACKPRESSURE,
    IDLE,
    StreamBench,
    format_from_dut,
    hdl_parameters,
)
from npusim.rtl.tb.stream import ALWAYS, StreamSource  # noqa: E402

CYCLE_SHAPES = [(1, 8, 8), (16, 8, 8), (16, 24, 8), (7, 40, 16), (32, 16, 5), (49, 64, 8),
                (1, 24, 16), (2, 40, 24), (3, 72, 40), (4, 16, 33)]
"""(n, k, o) GEMMs whose cycles are measured against the model (sized for the tiny
device's 8x8 array): many rows per job, and 1 to 4 rows, fewer than a tile's beats."""

OVERLAP_SHAPES = [(1, 8, 40), (2, 8, 40), (4, 8, 40), (12, 8, 40), (40, 8, 40)]
"""(n, k, o) GEMMs of independent jobs (one K pass on every build) run overlapped."""

W_IDLE = (1, 1, 0)
"""The weight source idles one cycle in three."""

BUILDS = {
    # name: (ROWS, COLS, format name, native_dim)
    "tiny": (8, 8, "msfp8", 8),       # the tiny device preset with msfp8 numerics
    "msfp12": (32, 16, "msfp12", 128),  # 2 blocks (segments) per column
    "narrow": (16, 4, "msfp8", 8),
}


# --- stimulus ------------------------------------------------------------------------

BLOCK_KINDS = {"gauss": 3.0, "zero": 1.0, "equal": 1.0, "max_exp": 0.15, "min_exp": 1.0,
               "tiny": 0.5, "saturate": 1.0, "ties": 1.0, "negzero": 1.0, "nonfinite": 0.15}
"""Corner-case kinds of a block and how often each is drawn (rare ones spread inf/NaN
over a whole output row or column)."""


def special_block(rng: np.random.Generator, fmt: Format, kind: str, size: int) -> np.ndarray:
    """``size`` float32 values of one block of the given corner-case ``kind``."""
    m, emin, emax = fmt.mantissa_bits, fmt.emin, fmt.emax
    sign = np.where(rng.random(size) < 0.5, -1.0, 1.0)
    lo, hi = max(emin, -40), min(emax, 40)      # products of two such blocks stay finite
    e = int(rng.integers(lo, hi + 1))
    if kind == "gauss":
        x = rng.standard_normal(size) * 2.0 ** int(rng.integers(lo - 4, hi + 3))
    elif kind == "zero":
        x = np.where(rng.random(size) < 0.5, -0.0, 0.0)
    elif kind == "equal":                       # every element has the same exponent
        x = sign * rng.uniform(1.0, 2.0, size) * 2.0 ** e
    elif kind == "max_exp":                     # at and past the largest exponent
        x = sign * rng.uniform(0.5, 2.0, size) * 2.0 ** min(emax, 126)
        x[rng.integers(size)] = sign[0] * 2.0 ** min(emax + 1, 127) * 1.5
    elif kind == "min_exp":                     # at and below the smallest (subnormals)
        x = sign * rng.uniform(0.0, 2.0, size) * 2.0 ** emin
        x[rng.integers(size)] *= 2.0 ** -int(rng.integers(1, 8))
    elif kind == "tiny":                        # products near fp32's subnormal range
        x = rng.standard_normal(size) * 2.0 ** int(rng.integers(emin // 2 - 14, emin // 2 - 6))
    elif kind == "saturate":                    # rounds to 2**M, saturates to 2**M - 1
        ulp = 2.0 ** (e - (m - 1))
        x = sign * np.where(rng.random(size) < 0.5, (2 ** m - 0.5) * ulp,
                            (2 ** m - 0.25) * ulp)
    elif kind == "ties":                        # halfway between two mantissas
        ulp = 2.0 ** (e - (m - 1))
        x = sign * (rng.integers(0, 2 ** m - 1, size) + 0.5) * ulp
        x[0] = 2.0 ** e                         # pins the shared exponent at e
    elif kind == "negzero":
        x = np.where(rng.random(size) < 0.5, -0.0, rng.standard_normal(size) * 2.0 ** e)
    elif kind == "nonfinite":
        x = rng.standard_normal(size) * 2.0 ** e
        x[rng.integers(size)] = rng.choice([np.nan, np.inf, -np.inf])
    else:
        raise ValueError(kind)
    return x.astype(np.float32)


def special_matrix(rng: np.random.Generator, fmt: Format, rows: int, k: int,
                   kinds: dict[str, float] = BLOCK_KINDS) -> np.ndarray:
    """``[rows, k]`` float32, each block of each row an independent random kind."""
    b = fmt.block_size
    names = list(kinds)
    p = np.array([kinds[n] for n in names]) / sum(kinds.values())
    out = np.empty((rows, k), np.float32)
    for r in range(rows):
        for j in range(0, k, b):
            out[r, j:j + b] = special_block(rng, fmt, str(rng.choice(names, p=p)),
                                            min(b, k - j))
    return out


def gauss_matrix(rng: np.random.Generator, rows: int, k: int) -> np.ndarray:
    """Gaussian rows, each at a random scale."""
    return (rng.standard_normal((rows, k)) * 2.0 ** rng.integers(-8, 8, (rows, 1))).astype(
        np.float32)


# --- testbench ---------------------------------------------------------------------


class ArrayTB(StreamBench):
    """The sequencer (jobs, weight DMA, accumulator memory) on top of the stream drivers
    of :class:`StreamBench`, the golden model and the checker, kept apart."""

    def __init__(self, dut, in_pattern=ALWAYS, out_pattern=ALWAYS, w_pattern=ALWAYS) -> None:
        super().__init__(dut, format_from_dut(dut),
                         {"x": dut.in_x_i, "acc": dut.in_acc_i, "swap": dut.in_swap_i},
                         {"acc": dut.out_acc_o}, in_pattern, out_pattern)
        self.rows, self.cols = int(dut.ROWS.value), int(dut.COLS.value)
        self.latency = int(dut.LATENCY.value)
        self.weights = StreamSource(dut.clk_i, dut.w_valid_i, dut.w_ready_o,
                                    {"col": dut.w_col_i, "exps": dut.w_exps_i,
                                     "codes": dut.w_codes_i}, self.cycles, w_pattern)
        self.jobs: list[dict] = []
        """Per job: rows, index of its first row (input and output) and of its first
        weight beat (filled by gemm)."""

    async def start(self) -> None:
        await super().start()
        self.weights.start()

    async def reset(self) -> None:
        self.dut.in_swap_i.value = 0
        await super().reset()

    # -- golden model
    def model(self, a: np.ndarray, w: np.ndarray) -> np.ndarray:
        return numerics.matmul(a, numerics.quantize(w, self.fmt), self.fmt)

    # -- sequencer
    def weight_beats(self, wq: numerics.BfpTensor, tile: int, kpass: int) -> list[dict]:
        """The weight tile (column tile ``tile``, K pass ``kpass``) as one beat per column:
        stored exponents and codes of ``wq``, zeros past its columns and its K."""
        fmt, b = self.fmt, self.fmt.block_size
        segs, code_w = self.rows // b, fmt.element_bits
        o_total, k_total = wq.q.shape
        beats = []
        for c in range(self.cols):
            o = tile * self.cols + c
            exps = codes = 0
            if o < o_total:
                for j in range(segs):
                    blk = (kpass * self.rows) // b + j
                    if blk < wq.exponents.shape[1]:
                        exps |= int(wq.exponents[o, blk]) << (fmt.exponent_bits * j)
                for r in range(self.rows):
                    k = kpass * self.rows + r
                    if k < k_total:
                        q = int(wq.q[o, k])
                        codes |= ((int(q < 0) << fmt.mantissa_bits) | abs(q)) << (code_w * r)
            beats.append({"col": c, "exps": exps, "codes": codes})
        return beats

    def _row(self, x: np.ndarray, swap: bool, acc_from: int | None):
        """Row ``x`` as a transaction; its ``acc_in`` is output ``acc_from`` (read when the
        row is offered, so after that output came out) or +0.0."""
        xbits = _join(x.astype(np.float32).view(np.uint32), 32)

        def txn() -> dict[str, int]:
            acc = 0 if acc_from is None else self.sink.received[acc_from]["acc"]
            return {"x": xbits, "acc": acc, "swap": int(swap)}
        return txn

    async def gemm(self, a: np.ndarray, w: np.ndarray, mode: str = "serial") -> dict:
        """Run ``a @ w.T`` through the array from an idle array; returns ``out`` (the fp32
        result bits ``[N, O]``), ``jobs`` (this GEMM's) and ``cycles`` (first weight beat
        to last output handshake, both counted)."""
        assert mode in ("serial", "overlap"), mode
        assert not self.source.queue and len(self.sink.received) == len(self.expected)
        n, k = a.shape
        o = w.shape[0]
        wq = numerics.quantize(w, self.fmt)
        kpasses, tiles = -(-k // self.rows), -(-o // self.cols)
        xp = np.zeros((n, kpasses * self.rows), np.float32)
        xp[:, :k] = a
        beat0, jobs = len(self.weights.accepted), []
        for tile in range(tiles):
            for p in range(kpasses):
                for beat in self.weight_beats(wq, tile, p):
                    self.weights.send(beat)
                first = len(self.expected)
                prev = first - n if p > 0 else None  # the pass before: its outputs are acc_in
                for r in range(n):
                    acc_from = None if prev is None else prev + r
                    if mode == "serial":   # the previous job has drained
                        when = functools.partial(self._outputs_at_least, first)
                    elif acc_from is not None:  # this row's acc_in has come out
                        when = functools.partial(self._outputs_at_least, acc_from + 1)
                    else:
                        when = None
                    self.source.send(self._row(xp[r, p * self.rows:(p + 1) * self.rows],
                                               r == 0, acc_from), when)
                    self.sent.append(r)
                    self.expected.append(r)
                jobs.append({"rows": n, "first": first, "beat": beat0 + len(jobs) * self.cols})
        await self.drain(limit=40 * len(jobs) * (n + self.latency + self.cols) + 200)
        self.jobs += jobs
        out = np.zeros((n, tiles * self.cols), np.uint32)
        for tile in range(tiles):
            last = jobs[(tile + 1) * kpasses - 1]
            got = [self.sink.received[last["first"] + i]["acc"] for i in range(n)]
            out[:, tile * self.cols:(tile + 1) * self.cols] = [_split(v, 32, self.cols)
                                                               for v in got]
        self.check_bank_rules(jobs)
        cycles = self.sink.times[jobs[-1]["first"] + n - 1] - self.weights.accepted[beat0] + 1
        return {"out": out[:, :o], "jobs": jobs, "cycles": cycles}

    def _outputs_at_least(self, count: int) -> bool:
        return len(self.sink.received) >= count

    # -- checker
    def check_bank_rules(self, jobs: list[dict]) -> None:
        """The weight port's rules, from the handshake cycles: a job's first row (its swap)
        comes after the last beat of its tile; a tile's first beat comes after the swap of
        the job before it (its bank was the shadow until then) and after the last output
        of the job two before (the last rows that used the bank)."""
        beats, ins, outs = self.weights.accepted, self.source.accepted, self.sink.times
        for j, job in enumerate(jobs):
            first_beat, last_beat = beats[job["beat"]], beats[job["beat"] + self.cols - 1]
            assert ins[job["first"]] > last_beat, f"job {j}: a row met a half-loaded tile"
            if j >= 1:
                assert first_beat > ins[jobs[j - 1]["first"]], f"job {j}: loaded before swap"
            if j >= 2:
                old = jobs[j - 2]
                assert first_beat > outs[old["first"] + old["rows"] - 1], \
                    f"job {j}: tile overwritten under rows in flight"

    def job_cycles(self, job: dict) -> int:
        """First input handshake to last output handshake of a job, both counted; checks
        one row per cycle after LATENCY."""
        first, rows = self.source.accepted[job["first"]], job["rows"]
        ins = self.source.accepted[job["first"]:job["first"] + rows]
        outs = self.sink.times[job["first"]:job["first"] + rows]
        assert ins == list(range(first, first + rows)), "input stalled"
        assert outs[0] - first == self.latency, f"latency {outs[0] - first} != {self.latency}"
        assert outs == list(range(outs[0], outs[0] + rows)), "output not one per cycle"
        return outs[-1] - first + 1

    def check_serial_timing(self, run: dict) -> int:
        """Always valid/ready, serial: the first tile's ``COLS`` beats come back to back
        and its swap row follows the last one; every job takes ``N + LATENCY`` and the next
        one starts the cycle after its last output (its tile was loaded under it). Returns
        the cycles from the first beat to the first row: the load nothing hides."""
        jobs, ins, outs = run["jobs"], self.source.accepted, self.sink.times
        beats = self.weights.accepted[jobs[0]["beat"]:jobs[0]["beat"] + self.cols]
        assert beats == list(range(beats[0], beats[0] + self.cols)), "first tile stalled"
        assert ins[jobs[0]["first"]] == beats[-1] + 1, "first row not right after the load"
        for prev, job in zip(jobs, jobs[1:]):
            gap = ins[job["first"]] - outs[prev["first"] + prev["rows"] - 1] - 1
            assert gap == 0, f"a job waited {gap} cycles for its tile"
        assert run["cycles"] == self.cols + sum(self.job_cycles(j) for j in jobs)
        return ins[jobs[0]["first"]] - beats[0]

    def check(self, a: np.ndarray, w: np.ndarray, got: np.ndarray, what: str) -> None:
        want = self.model(a, w)
        wb = want.view(np.uint32)
        gf = got.view(np.float32)
        both_nan = np.isnan(want) & np.isnan(gf)
        bad = ~(both_nan | (got == wb))
        if bad.any():
            idx = [tuple(int(v) for v in i) for i in np.argwhere(bad)[:8]]
            detail = ", ".join(f"{i}: RTL {got[i]:08x} ({gf[i]!r}) golden {wb[i]:08x} "
                               f"({want[i]!r})" for i in idx)
            raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} outputs differ: "
                                 f"{detail}")
        self.checked += got.size


def overlap_cycles(n: int, jobs: int, cols: int, latency: int) -> tuple[int, int]:
    """Cycles of ``jobs`` independent jobs of ``n`` rows, overlapped, always valid/ready,
    from the array's weight-timing rules (systolic_array.sv header), and the cycles the
    rows waited for a tile. Cycles count from the first beat (cycle 0). Tile ``j``'s
    first beat ``b[j]`` comes the cycle after job ``j - 1``'s swap and after the output of
    the last row of job ``j - 2`` (the rows on its bank); its swap row ``s[j]`` after its
    ``cols`` beats, and not before the job before has sent its ``n`` rows."""
    b, s = [0], [cols]
    for j in range(1, jobs):
        free = s[j - 2] + n + latency if j >= 2 else 0
        b.append(max(s[j - 1] + 1, free))
        s.append(max(b[j] + cols, s[j - 1] + n))
    waited = s[0] + sum(s[j] - s[j - 1] - n for j in range(1, jobs))
    return s[-1] + n + latency, waited


def _join(values, width: int) -> int:
    return sum(int(v) << (width * i) for i, v in enumerate(values))


def _split(value: int, width: int, count: int) -> list[int]:
    mask = (1 << width) - 1
    return [(value >> (width * i)) & mask for i in range(count)]


# --- cocotb tests --------------------------------------------------------------------


def numeric_cases(tb: ArrayTB, seed: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """GEMMs with K not a multiple of BLOCK (nor of ROWS) and O not a multiple of COLS."""
    rng = np.random.default_rng(seed)
    fmt, rows, cols, b = tb.fmt, tb.rows, tb.cols, tb.fmt.block_size
    k1, o1 = 2 * rows + b // 2 + 3, cols + cols // 2 + 1
    k2, o2 = 3 * rows - 5, 2 * cols - 3
    finite = {n: w for n, w in BLOCK_KINDS.items() if n != "nonfinite"}
    return [
        ("gauss", gauss_matrix(rng, 6, k1), gauss_matrix(rng, o1, k1)),
        ("special", special_matrix(rng, fmt, 24, k2), special_matrix(rng, fmt, o2, k2)),
        ("finite", special_matrix(rng, fmt, 12, k1, finite),
         special_matrix(rng, fmt, o1, k1, finite)),
        ("underflow", special_matrix(rng, fmt, 6, k1, {"tiny": 4.0, "zero": 1.0}),
         special_matrix(rng, fmt, o1, k1, {"tiny": 1.0})),
    ]


async def _run_numeric(dut, mode: str, in_pattern=ALWAYS, out_pattern=ALWAYS,
                       w_pattern=ALWAYS, seed: int = 0) -> tuple[ArrayTB, list[dict]]:
    tb = ArrayTB(dut, in_pattern, out_pattern, w_pattern)
    await tb.start()
    runs = []
    for name, a, w in numeric_cases(tb, seed):
        runs.append(await tb.gemm(a, w, mode))
        tb.check(a, w, runs[-1]["out"], name)
    return tb, runs


@cocotb.test()
async def array_numerics(dut):
    """Always valid, always ready, serial: corner-case GEMMs bit-exact, one row per cycle,
    every tile but the first loaded under the job before."""
    tb, runs = await _run_numeric(dut, "serial", seed=1)
    for r in runs:
        tb.check_serial_timing(r)
    report("numerics", vectors=tb.checked, rows=len(tb.sink.received), jobs=len(tb.jobs))


@cocotb.test()
async def array_idle_backpressure(dut):
    """Overlapped jobs; the row source idles one cycle in four, the weight source one in
    three, the sink stalls in a 7-cycle pattern: bit-exact, bank rules kept."""
    tb, _ = await _run_numeric(dut, "overlap", IDLE, BACKPRESSURE, W_IDLE, seed=2)
    report("idle_backpressure", vectors=tb.checked, rows=len(tb.sink.received),
           jobs=len(tb.jobs))


@cocotb.test()
async def array_cycles(dut):
    """The GEMM shapes of CYCLE_SHAPES, serial, always valid/ready: bit-exact, and the
    cycles from the first weight beat to the last output (weight loads included)."""
    tb = ArrayTB(dut)
    # the array's LATENCY counts the quantizers' latency; it must be theirs
    assert int(dut.QUANT_LATENCY.value) == int(dut.g_quant[0].u_quant.LATENCY.value)
    await tb.start()
    rng = np.random.default_rng(3)
    for n, k, o in CYCLE_SHAPES:
        a, w = gauss_matrix(rng, n, k), gauss_matrix(rng, o, k)
        r = await tb.gemm(a, w, "serial")
        tb.check(a, w, r["out"], f"shape {(n, k, o)}")
        report(f"cycles_{n}_{k}_{o}", n=n, k=k, o=o, jobs=len(r["jobs"]),
               rtl_cycles=r["cycles"], load_exposed=tb.check_serial_timing(r),
               latency=tb.latency, vectors=n * o)


@cocotb.test()
async def array_overlap(dut):
    """Overlapped jobs, always valid/ready: the corner-case GEMMs bit-exact with rows of
    two tiles in the array at once, and the cycles of OVERLAP_SHAPES as the array's
    weight-timing rules give them (:func:`overlap_cycles`); with few rows per job the
    next tile's load cannot hide."""
    tb, _ = await _run_numeric(dut, "overlap", seed=4)
    rng = np.random.default_rng(5)
    for n, k, o in OVERLAP_SHAPES:
        assert k <= tb.rows, "independent jobs: one K pass"
        a, w = gauss_matrix(rng, n, k), gauss_matrix(rng, o, k)
        r = await tb.gemm(a, w, "overlap")
        tb.check(a, w, r["out"], f"overlapped shape {(n, k, o)}")
        want, waited = overlap_cycles(n, len(r["jobs"]), tb.cols, tb.latency)
        assert r["cycles"] == want, f"{(n, k, o)}: {r['cycles']} cycles, rules give {want}"
        report(f"overlap_{n}_{k}_{o}", jobs=len(r["jobs"]), rtl_cycles=r["cycles"],
               load_wait=waited, serial=tb.cols + len(r["jobs"]) * (n + tb.latency),
               vectors=n * o)
    report("overlap_numerics", vectors=tb.checked, jobs=len(tb.jobs))


# --- pytest --------------------------------------------------------------------------


CYCLE_TOLERANCE = 0.0
"""Relative error allowed between the RTL's cycles and npusim.simulator.timing's: none. The model
prices a wave as the array is built (N + native_dim + array_cols + converter depth) and
the first weight tile's load (array_cols beats) as exposed."""


@pytest.mark.rtl
@requires_simulator()
@pytest.mark.parametrize("build", [pytest.param(b, marks=pytest.mark.slow) if b != "tiny"
                                   else b for b in BUILDS])  # msfp12: 45 s, narrow: 16 s
def test_systolic_array(build: str) -> None:
    """Bit-exact GEMMs, and their cycles (weight loads included) against the timing model
    of the same array (the tiny preset's shape for the ``tiny`` build)."""
    from npusim.simulator.config import load_device
    from npusim.simulator.timing import gemm_cycles

    rows, cols, name, native_dim = BUILDS[build]
    fmt = get_format(name, native_dim)
    stats = run("systolic_array", {"ROWS": rows, "COLS": cols, **hdl_parameters(fmt)}, __file__)
    shapes = {f"cycles_{n}_{k}_{o}" for n, k, o in CYCLE_SHAPES}
    overlapped = {f"overlap_{n}_{k}_{o}" for n, k, o in OVERLAP_SHAPES}
    assert set(stats) == {"numerics", "idle_backpressure", "overlap_numerics"} | shapes | \
        overlapped
    assert all(s["vectors"] > 0 for s in stats.values())
    cfg = load_device("tiny").replace(native_dim=rows, array_cols=cols, numerics=name)
    if build == "tiny":
        assert cfg == load_device("tiny").replace(numerics=name)  # the preset's own shape
    for n, k, o in CYCLE_SHAPES:
        s = stats[f"cycles_{n}_{k}_{o}"]
        s["model_cycles"] = gemm_cycles(n, k, o, cfg, fmt)  # npusim verify shows both
        assert abs(s["rtl_cycles"] - s["model_cycles"]) <= CYCLE_TOLERANCE * s["model_cycles"], (
            f"{build} GEMM {n}x{k}x{o}: RTL {s['rtl_cycles']} cycles, model "
            f"{s['model_cycles']}")
