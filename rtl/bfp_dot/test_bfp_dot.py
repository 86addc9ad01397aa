# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench of bfp_dot.sv against the golden per-block partial.

The golden model of one block pair is ``block_partials`` (the exact integer) and
``block_scales`` (the two scales, NaN for a non-finite block); ``accumulate_blocks_reference``
over that single pair gives the fp32 block product the accumulator adds. The RTL's
``(dot, esum, nan)`` is checked against all three, bit for bit.
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
from npusim.simulator.numerics import (  # noqa: E402
    BfpTensor,
    Format,
    accumulate_blocks_reference,
    block_partials,
    block_scales,
    get_format,
    quantize_reference,
)

cocotb = pytest.importorskip("cocotb", reason="cocotb 2.x is not installed")
from npusim.rtl.tb.bench import (  # noqa: E402
    BACKPRESSURE,
    FORMATS,
    IDLE,
    StreamBench,
    format_from_dut,
    hdl_parameters,
)
from npusim.rtl.tb.stream import ALWAYS  # noqa: E402

LATENCY = 1
"""Cycles from the accepting edge to out_valid_o (one register stage)."""


# --- stimulus: a block is (stored exponent, list of (sign, mantissa)) -----------------

Block = tuple[int, list[tuple[int, int]]]


def corner_pairs(fmt: Format) -> list[tuple[Block, Block]]:
    b, top = fmt.block_size, fmt.max_mantissa
    lo, hi, nan = 0, fmt.nan_exponent - 1, fmt.nan_exponent
    mid = fmt.exponent_bias
    zero = [(0, 0)] * b
    neg_zero = [(1, 0)] * b
    pos_max = [(0, top)] * b
    neg_max = [(1, top)] * b
    alt_max = [(i & 1, top) for i in range(b)]
    alt_one = [((i >> 1) & 1, 1 + i % top) for i in range(b)]
    ramp = [(0, i % (top + 1)) for i in range(b)]
    return [
        ((mid, zero), (mid, zero)), ((lo, zero), (hi, pos_max)), ((mid, neg_zero), (mid, neg_max)),
        ((mid, pos_max), (mid, pos_max)), ((mid, neg_max), (mid, neg_max)),  # largest +|p|
        ((mid, pos_max), (mid, neg_max)), ((hi, neg_max), (lo, pos_max)),    # largest -|p|
        ((mid, alt_max), (mid, pos_max)), ((mid, alt_max), (mid, alt_max)),
        ((mid, alt_one), (mid, ramp)),
        ((lo, pos_max), (lo, pos_max)), ((hi, pos_max), (hi, pos_max)),      # extreme exponents
        ((lo, neg_max), (hi, pos_max)), ((hi, ramp), (lo, alt_max)),
        ((nan, zero), (mid, pos_max)), ((mid, pos_max), (nan, zero)),        # non-finite
        ((nan, zero), (nan, zero)), ((nan, pos_max), (hi, pos_max)), ((lo, alt_max), (nan, ramp)),
    ]


def _blocks_of(t: BfpTensor) -> list[Block]:
    return [(int(t.exponents[r, 0]), [(int(q < 0), abs(int(q))) for q in t.q[r].tolist()])
            for r in range(t.q.shape[0])]


def random_pairs(fmt: Format, count: int, seed: int) -> list[tuple[Block, Block]]:
    """Half raw random codes and exponents (the NaN exponent included), half blocks the
    golden quantizer made from Gaussian data at random scales."""
    rng = np.random.default_rng(seed)
    b = fmt.block_size
    pairs = []
    for i in range(count // 2):
        def raw() -> Block:
            exp = int(rng.integers(0, fmt.nan_exponent + 1))
            return exp, [(int(s), int(m)) for s, m in zip(rng.integers(0, 2, b),
                                                         rng.integers(0, fmt.max_mantissa + 1, b))]
        pairs.append((raw(), raw()))
    x = rng.standard_normal((count - count // 2, b)) * 2.0 ** rng.integers(-30, 30, (1, 1))
    y = rng.standard_normal((count - count // 2, b)) * 2.0 ** rng.integers(-30, 30, (1, 1))
    pairs += zip(_blocks_of(quantize_reference(x.astype(np.float32), fmt)),
                 _blocks_of(quantize_reference(y.astype(np.float32), fmt)), strict=True)
    return pairs


# --- testbench -----------------------------------------------------------------------


class DotTB(StreamBench):
    """A source driving block pairs, a sink collecting (dot, esum, nan) (clock, reset and
    the drivers from :class:`StreamBench`), the golden model and the checker, kept apart."""

    def __init__(self, dut, fmt: Format, in_pattern=ALWAYS, out_pattern=ALWAYS) -> None:
        super().__init__(dut, fmt,
                         {"a_exp": dut.a_exp_i, "a_codes": dut.a_codes_i,
                          "w_exp": dut.w_exp_i, "w_codes": dut.w_codes_i},
                         {"dot": dut.out_dot_o, "esum": dut.out_esum_o, "nan": dut.out_nan_o},
                         in_pattern, out_pattern, signed=("dot", "esum"))

    def _tensor(self, block: Block) -> BfpTensor:
        exp, elems = block
        q = np.array([[-m if s else m for s, m in elems]], np.int8)
        return BfpTensor(self.fmt, q, np.array([[exp]], np.uint8), self.fmt.block_size)

    def model(self, a: Block, w: Block) -> dict:
        """The golden partial of one block pair: integer, scale product, fp32 product."""
        ta, tw = self._tensor(a), self._tensor(w)
        partials = block_partials(ta, tw)
        sa, sw = block_scales(ta), block_scales(tw)
        return {"dot": int(partials[0, 0, 0]), "scale": float(sa[0, 0] * sw[0, 0]),
                "fp32": accumulate_blocks_reference(partials, sa, sw)[0, 0]}

    def _codes(self, elems: list[tuple[int, int]]) -> int:
        mb = self.fmt.mantissa_bits
        return sum(((s << mb) | m) << (i * (mb + 1)) for i, (s, m) in enumerate(elems))

    def send(self, a: Block, w: Block) -> None:
        self.source.send({"a_exp": a[0], "a_codes": self._codes(a[1]),
                          "w_exp": w[0], "w_codes": self._codes(w[1])})
        self.sent.append((a, w))
        self.expected.append(self.model(a, w))

    def check(self) -> None:
        shift = 2 * (self.fmt.mantissa_bits - 1)
        assert len(self.sink.received) == len(self.expected)
        for pair, want, got in zip(self.sent, self.expected, self.sink.received, strict=True):
            golden_nan = bool(np.isnan(want["scale"]))
            # the RTL's (dot, esum, nan) through the golden accumulator: same fp32 bits?
            scale = np.nan if got["nan"] else 2.0 ** (got["esum"] - shift)
            value = accumulate_blocks_reference(np.array([[[got["dot"]]]], np.float32),
                                                np.array([[scale]]), np.array([[1.0]]))[0, 0]
            ok = (got["dot"] == want["dot"] and bool(got["nan"]) == golden_nan
                  and (got["esum"] == 0 if golden_nan
                       else 2.0 ** (got["esum"] - shift) == want["scale"])
                  and (np.isnan(value) if golden_nan
                       else value.view(np.uint32) == want["fp32"].view(np.uint32)))
            assert ok, f"pair {pair}: RTL {got} ({value}), golden {want}"
            self.checked += 1


async def _run_stream(dut, in_pattern, out_pattern, seed: int) -> DotTB:
    tb = DotTB(dut, format_from_dut(dut), in_pattern, out_pattern)
    await tb.start()
    pairs = corner_pairs(tb.fmt) + random_pairs(tb.fmt, 400, seed)
    for a, w in pairs:
        tb.send(a, w)
    await tb.drain(limit=8 * len(pairs) + 50)
    tb.check()
    return tb


@cocotb.test()
async def dot_streaming(dut):
    """Always valid, always ready: bit-exact, and the measured latency and throughput."""
    tb = await _run_stream(dut, ALWAYS, ALWAYS, seed=1)
    report("streaming", **tb.streaming_rate(LATENCY, "pair"))


@cocotb.test()
async def dot_idle_backpressure(dut):
    """Source idles one cycle in four, the sink stalls in a 7-cycle pattern: bit-exact."""
    tb = await _run_stream(dut, IDLE, BACKPRESSURE, seed=2)
    report("idle_backpressure", vectors=tb.checked)


# --- pytest --------------------------------------------------------------------------


@pytest.mark.rtl
@requires_simulator()
@pytest.mark.parametrize(("name", "native_dim"), FORMATS, ids=[f[0] for f in FORMATS])
def test_bfp_dot(name: str, native_dim: int) -> None:
    fmt = get_format(name, native_dim)
    stats = run("bfp_dot", hdl_parameters(fmt), __file__)
    assert set(stats) == {"streaming", "idle_backpressure"}
    assert all(s["vectors"] > 0 for s in stats.values())
