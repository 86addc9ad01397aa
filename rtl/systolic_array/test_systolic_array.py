# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench of systolic_array.sv: whole GEMMs against the golden matrix product.

The testbench plays the matrix unit's sequencer and accumulator memory. A GEMM
``[N, K] @ [O, K].T`` is cut into column tiles of ``COLS`` outputs (zero weights in the
unused columns) and K passes of ``ROWS`` (the last one zero-padded); for each (tile,
pass) it loads the weight tile through the weight port (untimed), streams the N
activation rows with the previous pass's outputs as ``acc_in`` (+0.0 on the first pass)
and collects the N output rows. The final outputs must equal
``numerics.matmul(a, numerics.quantize(w, fmt), fmt)`` bit for bit (NaN: both NaN).

The next tile's weights are offered as soon as the last row of a tile has been
accepted, so the weight port's rule (no load while data is in flight) is exercised: a
load that slipped in early would change the tile's outputs.

Cycles: under always-valid/always-ready, each pass takes N + LATENCY cycles from its
first input handshake to its last output handshake, both counted; the per-shape sums
are checked against simulator/timing.py gemm_cycles (the pytest side).
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
from simulator import numerics  # noqa: E402
from simulator.numerics import Format, get_format  # noqa: E402

cocotb = pytest.importorskip("cocotb", reason="cocotb 2.x is not installed")
from cocotb.triggers import ReadOnly, RisingEdge  # noqa: E402

from rtl.tb.bench import (  # noqa: E402
    BACKPRESSURE,
    IDLE,
    StreamBench,
    format_from_dut,
    hdl_parameters,
)
from rtl.tb.stream import ALWAYS  # noqa: E402

CYCLE_SHAPES = [(1, 8, 8), (16, 8, 8), (16, 24, 8), (7, 40, 16), (32, 16, 5), (49, 64, 8)]
"""(n, k, o) GEMMs whose cycles are measured (sized for the tiny device's 8x8 array)."""

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


# --- testbench -----------------------------------------------------------------------


class WeightDriver:
    """Drives one weight column per beat on ``w_*`` and waits for ``w_ready_o``."""

    def __init__(self, dut, cycles) -> None:
        self.dut, self.cycles = dut, cycles
        self.accepted: list[int] = []
        """Cycle of each weight handshake."""
        dut.w_valid_i.value = 0

    async def load(self, beats: list[dict[str, int]]) -> None:
        clk = self.dut.clk_i
        for beat in beats:
            await RisingEdge(clk)
            for name, value in beat.items():
                getattr(self.dut, name).value = value
            self.dut.w_valid_i.value = 1
            while True:
                await ReadOnly()
                if int(self.dut.w_ready_o.value):
                    self.accepted.append(self.cycles.now)
                    break
                await RisingEdge(clk)
        await RisingEdge(clk)
        self.dut.w_valid_i.value = 0


class ArrayTB(StreamBench):
    """The sequencer (tiles, passes, weight loads, accumulator memory) on top of the
    stream drivers of :class:`StreamBench`, the golden model and the checker, kept apart."""

    def __init__(self, dut, in_pattern=ALWAYS, out_pattern=ALWAYS) -> None:
        super().__init__(dut, format_from_dut(dut), {"x": dut.in_x_i, "acc": dut.in_acc_i},
                         {"acc": dut.out_acc_o}, in_pattern, out_pattern)
        self.rows, self.cols = int(dut.ROWS.value), int(dut.COLS.value)
        self.latency = int(dut.LATENCY.value)
        self.weights = WeightDriver(dut, self.cycles)
        self.passes: list[dict] = []
        """Per pass: rows, index of its first input / output, cycles (filled by gemm)."""

    async def reset(self) -> None:
        self.dut.w_valid_i.value = 0
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
            beats.append({"w_col_i": c, "w_exps_i": exps, "w_codes_i": codes})
        return beats

    def send(self, x_rows: np.ndarray, acc_rows: np.ndarray) -> None:
        """Stream one pass: ``x_rows`` fp32 ``[N, ROWS]``, ``acc_rows`` fp32 bits
        ``[N, COLS]``."""
        xb = x_rows.astype(np.float32).view(np.uint32)
        for n in range(x_rows.shape[0]):
            self.source.send({"x": _join(xb[n], 32), "acc": _join(acc_rows[n], 32)})
            self.sent.append(n)
            self.expected.append(n)

    async def gemm(self, a: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Run ``a @ w.T`` through the array; the fp32 result bits ``[N, O]``."""
        n, k = a.shape
        o = w.shape[0]
        wq = numerics.quantize(w, self.fmt)
        kpasses, tiles = -(-k // self.rows), -(-o // self.cols)
        xp = np.zeros((n, kpasses * self.rows), np.float32)
        xp[:, :k] = a
        out = np.zeros((n, tiles * self.cols), np.uint32)
        last_of_tile = []
        for tile in range(tiles):
            acc = np.zeros((n, self.cols), np.uint32)          # +0.0
            for p in range(kpasses):
                if p > 0:                                      # acc_in = the last pass
                    await self.drain(limit=20 * (n + self.latency) + 200)
                    acc = self._outputs(self.passes[-1])
                else:                                          # all rows of the last tile in
                    while len(self.source.accepted) < len(self.expected):
                        await RisingEdge(self.dut.clk_i)
                await self.weights.load(self.weight_beats(wq, tile, p))
                # w_ready_o must have waited for every row in flight to come out
                assert len(self.sink.received) == len(self.expected), "weights loaded early"
                self.passes.append({"rows": n, "first_in": len(self.expected),
                                    "first_out": len(self.expected)})
                self.send(xp[:, p * self.rows:(p + 1) * self.rows], acc)
            last_of_tile.append(self.passes[-1])
        await self.drain(limit=20 * (n + self.latency) + 200)
        for tile, ps in enumerate(last_of_tile):
            out[:, tile * self.cols:(tile + 1) * self.cols] = self._outputs(ps)
        return out[:, :o]

    def _outputs(self, ps: dict) -> np.ndarray:
        got = [self.sink.received[ps["first_out"] + i]["acc"] for i in range(ps["rows"])]
        return np.array([_split(v, 32, self.cols) for v in got], np.uint32)

    def pass_cycles(self, ps: dict) -> int:
        """First input handshake to last output handshake of a pass, both counted; checks
        one row per cycle after LATENCY."""
        first = self.source.accepted[ps["first_in"]]
        ins = self.source.accepted[ps["first_in"]:ps["first_in"] + ps["rows"]]
        outs = self.sink.times[ps["first_out"]:ps["first_out"] + ps["rows"]]
        assert ins == list(range(first, first + ps["rows"])), "input stalled"
        assert outs[0] - first == self.latency, f"latency {outs[0] - first} != {self.latency}"
        assert outs == list(range(outs[0], outs[0] + ps["rows"])), "output not one per cycle"
        return outs[-1] - first + 1

    # -- checker
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


async def _run_numeric(dut, in_pattern, out_pattern, seed: int) -> ArrayTB:
    tb = ArrayTB(dut, in_pattern, out_pattern)
    await tb.start()
    for name, a, w in numeric_cases(tb, seed):
        tb.check(a, w, await tb.gemm(a, w), name)
    return tb


@cocotb.test()
async def array_numerics(dut):
    """Always valid, always ready: corner-case GEMMs bit-exact, one row per cycle."""
    tb = await _run_numeric(dut, ALWAYS, ALWAYS, seed=1)
    for ps in tb.passes:
        tb.pass_cycles(ps)
    report("numerics", vectors=tb.checked, rows=len(tb.sink.received), passes=len(tb.passes))


@cocotb.test()
async def array_idle_backpressure(dut):
    """Source idles one cycle in four, the sink stalls in a 7-cycle pattern: bit-exact."""
    tb = await _run_numeric(dut, IDLE, BACKPRESSURE, seed=2)
    report("idle_backpressure", vectors=tb.checked, rows=len(tb.sink.received),
           passes=len(tb.passes))


@cocotb.test()
async def array_cycles(dut):
    """The GEMM shapes of CYCLE_SHAPES, always valid/ready: bit-exact, and the cycles of
    each shape summed over its passes (weight loads excluded)."""
    tb = ArrayTB(dut)
    # the array's LATENCY counts the quantizers' latency; it must be theirs
    assert int(dut.QUANT_LATENCY.value) == int(dut.g_quant[0].u_quant.LATENCY.value)
    await tb.start()
    rng = np.random.default_rng(3)
    for n, k, o in CYCLE_SHAPES:
        first = len(tb.passes)
        a, w = gauss_matrix(rng, n, k), gauss_matrix(rng, o, k)
        tb.check(a, w, await tb.gemm(a, w), f"shape {(n, k, o)}")
        passes = tb.passes[first:]
        report(f"cycles_{n}_{k}_{o}", n=n, k=k, o=o, passes=len(passes),
               rtl_cycles=sum(tb.pass_cycles(ps) for ps in passes), latency=tb.latency,
               vectors=n * o)


# --- pytest --------------------------------------------------------------------------


CYCLE_TOLERANCE = 0.0
"""Relative error allowed between the RTL's cycles and simulator.timing's: none. The model
prices a wave as the array is built (N + native_dim + array_cols + converter depth)."""


@pytest.mark.rtl
@requires_simulator()
@pytest.mark.parametrize("build", list(BUILDS))
def test_systolic_array(build: str) -> None:
    """Bit-exact GEMM tiles, and their cycles against the timing model of the same array
    (the tiny preset's shape for the ``tiny`` build)."""
    from simulator.config import load_device
    from simulator.timing import gemm_cycles

    rows, cols, name, native_dim = BUILDS[build]
    fmt = get_format(name, native_dim)
    stats = run("systolic_array", {"ROWS": rows, "COLS": cols, **hdl_parameters(fmt)}, __file__)
    shapes = {f"cycles_{n}_{k}_{o}" for n, k, o in CYCLE_SHAPES}
    assert set(stats) == {"numerics", "idle_backpressure"} | shapes
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
