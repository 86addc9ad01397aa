# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench of vector_unit.sv against the golden vector kernels.

The golden model of one vector is ``npusim.simulator.kernels``: ``relu(a)`` (op 0),
``alu("add", a, b)`` (op 1) and ``max_step(a, b)`` (op 2). Every lane is compared bit for
bit, except that a NaN result is compared as "both NaN": the adder returns the canonical
NaN 7FC00000 while numpy returns an operand's payload (or the x86 default NaN), and
numpy's NaN payload for ``np.maximum`` is a property of its build, not of the device. The
ops are interleaved vector by vector, under a free-running stream and under
idle/backpressure patterns.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE.parents[1]) not in sys.path:  # the repository, for npusim.rtl.tb under plain `pytest`
    sys.path.insert(0, str(HERE.parents[1]))

from npusim.rtl.tb.runner import report, requires_simulator, run  # noqa: E402
from npusim.simulator.kernels import alu, max_step, relu  # noqa: E402

cocotb = pytest.importorskip("cocotb", reason="cocotb 2.x is not installed")
from npusim.rtl.tb.bench import BACKPRESSURE, IDLE, StreamBench  # noqa: E402
from npusim.rtl.tb.stream import ALWAYS  # noqa: E402

LATENCY = 1
"""Cycles from the accepting edge to out_valid_o (one register stage)."""

RELU, ADD, MAX = 0, 1, 2
OPS = {RELU: "relu", ADD: "add", MAX: "max"}
LANES = (8, 4)


# --- stimulus: operand pairs as uint32 bit patterns -----------------------------------

SPECIALS = [
    0x00000000, 0x80000000,                          # +-0
    0x7F800000, 0xFF800000,                          # +-inf
    0x7FC00000, 0xFFC00000, 0x7FC00123, 0x7FA00001,  # quiet and signalling NaNs
    0xFF800001, 0x7FFFFFFF,
    0x00000001, 0x80000001, 0x007FFFFF, 0x807FFFFF,  # subnormals
    0x00800000, 0x80800000, 0x00800001,              # smallest normals
    0x3F800000, 0xBF800000, 0x3F800001, 0xBF7FFFFF,  # around 1
    0x7F7FFFFF, 0xFF7FFFFF, 0x7F000000,              # largest
]


def _u32(values) -> np.ndarray:
    return np.asarray(values, dtype=np.uint64).astype(np.uint32)


def _f32bits(values) -> np.ndarray:
    return np.asarray(values, dtype=np.float32).view(np.uint32)


def _compose(sign, exp, mant) -> np.ndarray:
    return _u32((np.asarray(sign, np.uint64) << 31) | (np.asarray(exp, np.uint64) << 23)
                | np.asarray(mant, np.uint64))


def _special_pairs() -> tuple[np.ndarray, np.ndarray]:
    a, b = np.meshgrid(_u32(SPECIALS), _u32(SPECIALS), indexing="ij")
    return a.ravel(), b.ravel()


def add_pairs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Operand pairs for ADD, about 4800: every class of the adder's datapath."""
    def rbits(n):
        return _u32(rng.integers(0, 1 << 32, n, dtype=np.uint64))

    def rsign(n):
        return rng.integers(0, 2, n)

    def rmant(n):
        return rng.integers(0, 1 << 23, n)

    parts = [_special_pairs()]
    parts.append((rbits(1000), rbits(1000)))                           # raw bit patterns
    # close exponents (alignment, carries, cancellations) over every exponent range
    n = 1000
    ea = rng.integers(0, 255, n)
    eb = np.clip(ea + rng.integers(-27, 28, n), 0, 254)
    parts.append((_compose(rsign(n), ea, rmant(n)), _compose(rsign(n), eb, rmant(n))))
    # subnormal + subnormal, subnormal + small normal
    n = 300
    parts.append((_compose(rsign(n), 0, rmant(n)), _compose(rsign(n), 0, rmant(n))))
    parts.append((_compose(rsign(n), 0, rmant(n)),
                  _compose(rsign(n), rng.integers(1, 26, n), rmant(n))))
    # rounding: y just around x's guard / round / sticky positions
    n = 200
    ex = rng.integers(28, 250, n)
    xs = _compose(rsign(n), ex, rmant(n))
    for d in (23, 24, 25, 26, 27):
        for mant in (np.zeros(n, np.int64), np.ones(n, np.int64), rmant(n)):
            parts.append((xs, _compose(rsign(n), ex - d, mant)))
    ulp = 2.0 ** -23
    one = [1.0] * 8 + [1.0 + ulp] * 4 + [2.0 - ulp] * 2 + [1.5] * 2
    tiny = [2 ** -24, 3 * 2 ** -24, -2 ** -24, -3 * 2 ** -24, 2 ** -24 + 2 ** -47,
            -(2 ** -24 + 2 ** -47), 2 ** -25, -2 ** -25 - 2 ** -48,
            2 ** -24, -2 ** -24, 3 * 2 ** -24, -3 * 2 ** -24, ulp, -ulp, 2 ** -24, -2 ** -24]
    parts.append((_f32bits(one), _f32bits(tiny)))
    # exact cancellation x + (-x) (either order), and near cancellation x - (x +- 1 ulp)
    n = 200
    xs = _compose(rsign(n), rng.integers(0, 255, n), rmant(n))
    parts.append((xs, xs ^ np.uint32(0x80000000)))
    near = (xs ^ np.uint32(0x80000000)).astype(np.int64) + rng.choice([-1, 1], n)
    parts.append((xs, _u32(np.where((xs & 0x7FFFFFFF) == 0, 0x80000001, near))))
    parts.append((_u32([0, 0, 0x80000000, 0x80000000]), _u32([0, 0x80000000, 0, 0x80000000])))
    # overflow: near the largest finite value, with half-ulp ties (2**103)
    big = [0x7F7FFFFF, 0x7F7FFFFE, 0x7F000000, 0x7F7FFFFF]
    half = [0x73000000, 0x73000000, 0x7F000000, 0x72FFFFFF]
    parts.append((_u32(big + [b | 0x80000000 for b in big]),
                  _u32(half + [h | 0x80000000 for h in half])))
    n = 100
    parts.append((_compose(rsign(n), rng.integers(250, 255, n), rmant(n)),
                  _compose(rsign(n), rng.integers(250, 255, n), rmant(n))))
    # NaN operands with random payloads against random values
    n = 60
    nans = _compose(rsign(n), 255, rng.integers(1, 1 << 23, n))
    parts.append((nans, rbits(n)))
    parts.append((rbits(n), nans))
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def max_pairs(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Operand pairs for MAX (and, with b ignored, RELU): specials against each other,
    random bits, equal values, equal magnitudes of opposite sign, 1-ulp neighbours."""
    n = 300
    x = _u32(rng.integers(0, 1 << 32, n, dtype=np.uint64))
    parts = [_special_pairs(),
             (_u32(rng.integers(0, 1 << 32, 600, dtype=np.uint64)),
              _u32(rng.integers(0, 1 << 32, 600, dtype=np.uint64))),
             (x, x), (x, x ^ np.uint32(0x80000000)),
             (x, _u32(np.where((x & 0x7FFFFFFF) == 0x7FFFFFFF, x,
                               x.astype(np.int64) + rng.choice([-1, 1], n))))]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))


def vectors(lanes: int, seed: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(op, a, b) vectors of every op, in a random order so the op changes cycle by cycle;
    the last vector of each op is padded with zeros."""
    rng = np.random.default_rng(seed)
    out = []
    for op, (a, b) in ((ADD, add_pairs(rng)), (MAX, max_pairs(rng)), (RELU, max_pairs(rng))):
        pad = (-a.size) % lanes
        a = np.concatenate([a, np.zeros(pad, np.uint32)]).reshape(-1, lanes)
        b = np.concatenate([b, np.zeros(pad, np.uint32)]).reshape(-1, lanes)
        out += [(op, a[i], b[i]) for i in range(a.shape[0])]
    return [out[i] for i in rng.permutation(len(out))]


# --- testbench -----------------------------------------------------------------------


class VectorTB(StreamBench):
    """A source driving (op, a, b), a sink collecting y (clock, reset and the drivers from
    :class:`StreamBench`), the golden model and the checker, kept apart."""

    def __init__(self, dut, in_pattern=ALWAYS, out_pattern=ALWAYS) -> None:
        super().__init__(dut, None, {"op": dut.op_i, "a": dut.a_i, "b": dut.b_i},
                         {"y": dut.y_o}, in_pattern, out_pattern)
        self.lanes = int(dut.LANES.value)
        self.lanes_checked = dict.fromkeys(OPS.values(), 0)
        self.nan_results = dict.fromkeys(OPS.values(), 0)
        self.nan_bit_exact = dict.fromkeys(OPS.values(), 0)

    @staticmethod
    def model(op: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """The golden kernels on fp32 lanes (a, b are uint32 bit patterns)."""
        fa, fb = a.view(np.float32), b.view(np.float32)
        if op == RELU:
            return relu(fa)
        if op == ADD:
            return alu("add", fa, fb)
        return max_step(fa, fb)

    @staticmethod
    def _pack(lanes: np.ndarray) -> int:
        return sum(int(v) << (32 * i) for i, v in enumerate(lanes.tolist()))

    def send(self, op: int, a: np.ndarray, b: np.ndarray) -> None:
        self.source.send({"op": op, "a": self._pack(a), "b": self._pack(b)})
        self.sent.append((op, a, b))
        self.expected.append(self.model(op, a, b))

    def check(self) -> None:
        assert len(self.sink.received) == len(self.expected)
        for (op, a, b), want, got in zip(self.sent, self.expected, self.sink.received,
                                         strict=True):
            y = np.array([(got["y"] >> (32 * i)) & 0xFFFFFFFF for i in range(self.lanes)],
                         np.uint32)
            w = want.view(np.uint32)
            nan = np.isnan(want)
            ok = np.where(nan, np.isnan(y.view(np.float32)), y == w)
            assert ok.all(), "\n".join(
                f"{OPS[op]} lane {i}: a {a[i]:08X} b {b[i]:08X} -> RTL {y[i]:08X}, "
                f"golden {w[i]:08X}" for i in np.flatnonzero(~ok))
            self.checked += 1
            self.lanes_checked[OPS[op]] += self.lanes
            self.nan_results[OPS[op]] += int(nan.sum())
            self.nan_bit_exact[OPS[op]] += int((nan & (y == w)).sum())

    def counters(self) -> dict[str, int]:
        """Lanes checked per op; NaN results per op, and how many of them had numpy's
        exact bits (informative: NaN is compared as "both NaN")."""
        return {**{f"{k}_lanes": v for k, v in self.lanes_checked.items()},
                **{f"{k}_nan": v for k, v in self.nan_results.items()},
                **{f"{k}_nan_bit_exact": v for k, v in self.nan_bit_exact.items()}}


async def _run_stream(dut, in_pattern, out_pattern, seed: int) -> VectorTB:
    tb = VectorTB(dut, in_pattern, out_pattern)
    await tb.start()
    vecs = vectors(tb.lanes, seed)
    for op, a, b in vecs:
        tb.send(op, a, b)
    await tb.drain(limit=8 * len(vecs) + 50, what="vectors")
    tb.check()
    return tb


@cocotb.test()
async def vector_streaming(dut):
    """Always valid, always ready: bit-exact, and the measured latency and throughput."""
    tb = await _run_stream(dut, ALWAYS, ALWAYS, seed=1)
    report("streaming", **tb.streaming_rate(LATENCY, "vector"), **tb.counters())


@cocotb.test()
async def vector_idle_backpressure(dut):
    """Source idles one cycle in four, the sink stalls in a 7-cycle pattern: bit-exact."""
    tb = await _run_stream(dut, IDLE, BACKPRESSURE, seed=2)
    report("idle_backpressure", vectors=tb.checked, **tb.counters())


# --- pytest --------------------------------------------------------------------------


@pytest.mark.rtl
@requires_simulator()
@pytest.mark.parametrize("lanes", [pytest.param(n, marks=pytest.mark.slow) if n != LANES[0]
                                   else n for n in LANES], ids=[f"lanes{n}" for n in LANES])
def test_vector_unit(lanes: int) -> None:
    stats = run("vector_unit", {"LANES": lanes}, __file__)
    assert set(stats) == {"streaming", "idle_backpressure"}
    assert all(s["vectors"] > 0 and s["add_lanes"] > 4000 for s in stats.values())
    assert stats["streaming"]["latency"] == LATENCY
