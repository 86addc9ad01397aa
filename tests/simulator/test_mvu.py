# SPDX-License-Identifier: Apache-2.0
"""npusim.simulator.mvu: the matrix-vector unit's timing (the `intel-npu` preset), its layout,
its chained vector passes, the recurrence it serializes, and the compiler's step-by-step
unrolling for it, which must not change a bit."""

from __future__ import annotations

import exporter_graphs_recurrent
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler import compile_full
from npusim.compiler.frontend import to_graph
from npusim.compiler.interpret import Numerics, evaluate
from npusim.compiler.options import CompileOptions
from npusim.compiler.pipeline import run_passes
from npusim.runtime import Session
from npusim.runtime.zoo.npu_workloads import build
from npusim.simulator import isa, mvu
from npusim.simulator.config import load_device
from npusim.simulator.mvu import layout, mvu_latency, place, product
from npusim.simulator.schedule import schedule

NPU = load_device("intel-npu")


def test_preset_is_the_npu_of_its_sources():
    # 2 cores x 7 tiles x 40 engines x 40 lanes x 3 rows: 67,200 MACs, 40.32 TOPS at 300 MHz
    assert NPU.matrix_unit == "mvu" and NPU.peak_macs_per_cycle == 67_200
    assert NPU.peak_tops == pytest.approx(40.32)
    assert mvu_latency(NPU.mvu, NPU) == 7 * 2 + 34 + 9


@pytest.mark.parametrize("size, v, groups, chunks", [
    (256, 1, 12, [12]),              # fewer than 12 row groups: padded to 12
    (512, 2, 13, [13]),              # 13 < 24: one chunk
    (1024, 4, 26, [12, 14]),         # the last chunk takes what is left (12..23)
    (1152, 5, 29, [12, 17]),
    (1792, 7, 45, [12, 12, 21])])
def test_layout_follows_that_npus_compiler(size, v, groups, chunks):
    """v = ceil(C / 280) words, G = ceil(R / 40) row groups (at least 12), chunks of 12."""
    got_v, got_groups, (n, q, last) = layout(size, size, NPU)
    assert (got_v, got_groups, [q] * n + [last]) == (v, groups, chunks)


def _gemv_cycles(name: str) -> int:
    program = compile_full(build(name), NPU).program
    busy = [s for s in schedule(program, NPU).timeline
            if s.track in ("matrix", "vector", "loader")]
    return NPU.mvu.start_cycles + max(s.end for s in busy) - min(s.start for s in busy)


@pytest.mark.parametrize("name, size", [("01_gemv_512x512", 512), ("02_gemv_1024x1024", 1024),
                                        ("05_gemv_1792x1792", 1792)])
def test_gemv_is_the_sum_of_its_stages(name, size):
    """Load the rows (7 tiles x (v words x 3 rows + 1)), wait for the tag, issue v * G
    words, the last chunk's A row groups drain at 3 vectors per 4 cycles after the MVU's
    latency, then the vector chain and the loader: with the preset's figures that is
    159 + 21 v + v G + 3 A, the closed form that fits that NPU's published RTL cycles."""
    m = NPU.mvu
    v, groups, (_, _, a) = layout(size, size, NPU)
    load = NPU.tiles * (v * m.dot_rows + m.init_cycles)
    chain = m.evrf_cycles + m.mfus * m.mfu_cycles
    derived = (m.start_cycles + load + m.loader_cycles + m.tag_cycles + m.init_cycles
               + v * groups - a + mvu_latency(m, NPU) + a * (m.dot_rows + m.output_bubble)
               + chain + m.loader_cycles)
    assert derived == 159 + 21 * v + v * groups + 3 * a
    assert _gemv_cycles(name) == derived


def test_rows_from_the_host_come_in_pass_by_pass():
    """Batch 18 is three passes of 6 rows (3 a core). That NPU's compiler emits load,
    mv_mul, write-back for each group, every group's rows at the same register-file
    addresses, and its loader runs in order: the first layer's passes are a round trip
    apart. Each pass's rows take 7 x (v D + i) loader cycles, are seen l + g later, the
    MVU issues after i, the one chunk's first result leaves (v - 1) A + L later, its A row
    groups come out D + b cycles apart through the vector chain (e + F f) and the loader
    writes them back: then the next rows come in. The later layers read rows on chip and
    issue their three passes back to back."""
    m = NPU.mvu
    program = compile_full(build("19_mlp3_1024_512_256_256_batched"), NPU).program
    tl = schedule(program, NPU).timeline
    first, second, _ = [k for k, ins in enumerate(program.instructions)
                        if isinstance(ins, isa.MvMul)]
    v, groups, (n, _, a) = layout(1024, 512, NPU)
    assert (v, groups, n) == (4, 13, 0)  # one chunk
    rows = NPU.tiles * (v * m.dot_rows + m.init_cycles)
    drain = a * (m.dot_rows + m.output_bubble)
    assert drain >= a * m.dot_rows + NPU.tiles * m.init_cycles  # the queue, not the loader
    period = (rows + m.loader_cycles + m.tag_cycles + m.init_cycles + (v - 1) * a
              + mvu_latency(m, NPU) + drain + m.evrf_cycles + m.mfus * m.mfu_cycles)
    assert period == 297

    def starts(layer, track, what):
        return [s.start for s in tl if s.layer == layer and s.track == track and s.what == what]

    loads, issues = starts(first, "loader", "input"), starts(first, "matrix", "compute")
    assert [y - x for x, y in zip(loads, loads[1:])] == [period, period]
    assert [y - x for x, y in zip(issues, issues[1:])] == [period, period]
    assert [y - x for x, y in zip(loads, issues)] == [rows + m.loader_cycles
                                                       + m.tag_cycles] * 3
    on_chip = [s for s in tl if s.layer == second and s.track == "matrix"]
    v2, groups2, _ = layout(512, 256, NPU)
    assert len(on_chip) == 1 and on_chip[0].end - on_chip[0].start == 3 * (
        m.init_cycles + v2 * groups2)


def test_many_passes_are_priced_in_closed_form(monkeypatch):
    """Past the first passes every pass repeats the one before a period later: a product
    of 1,000 passes from the host ends where the pass-by-pass loop ends, with the same
    busy cycles on every track, in a bounded number of slices."""
    w = numpy_helper.from_array(np.ones((280, 40), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6000, 280])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [6000, 40])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    program = compile_full(model, NPU).program
    closed, cap = schedule(program, NPU), mvu.MAX_CHUNKS
    monkeypatch.setattr(mvu, "MAX_CHUNKS", 10**6)
    looped = schedule(program, NPU)

    def busy(st):
        return {t: sum(s.end - s.start for s in st.timeline if s.track == t)
                for t in ("matrix", "vector", "loader")}

    assert len([s for s in looped.timeline if s.track == "matrix"]) == 1000
    assert closed.cycles == looped.cycles and busy(closed) == busy(looped)
    assert [(x.cycles, x.compute_cycles) for x in closed.layers] == [
        (x.cycles, x.compute_cycles) for x in looped.layers]
    assert len([s for s in closed.timeline if s.track == "matrix"]) <= cap + 2


def test_output_queue_paces_a_short_product():
    """v = 1: every word issued is a result, three vectors a cycle, but the queue gives
    three per four cycles, so delivery, not issue, sets the end."""
    p = product(6, 280, 480, 1, NPU)
    assert p.issue == 1 + 12 and p.vectors == 12 * 3
    assert p.last - p.first == 12 * 4


def test_a_hostile_shape_is_priced_in_constant_time():
    """A program may come from anyone: a matrix of 2**30 row groups, one per chunk, is
    priced by formula, not by a loop over its chunks."""
    import dataclasses
    import time

    cfg = NPU.replace(array_cols=1, mvu=dataclasses.replace(NPU.mvu, row_chunk=1))
    t0 = time.perf_counter()
    p = product(6, 1, 2**30, 1, cfg)
    assert time.perf_counter() - t0 < 0.1 and p.last > 2**30


def test_chain_stages_run_in_order():
    # stages are act, add, mul per multifunction unit, two units
    assert place(-1, [1, 0], 2) == 3      # add in MFU0, then the activation of MFU1
    assert place(-1, [2, 1, 2], 2) == 5   # mul, add (MFU1), mul (MFU1)
    assert place(4, [1], 2) is None       # no add after MFU1's add


def _lstm_cycles(steps: int) -> int:
    g = exporter_graphs_recurrent.lstm_peephole(steps=steps)
    return schedule(compile_full(g.model, NPU).program, NPU).cycles


def test_each_step_waits_for_the_last():
    """A step's recurrent product reads the state the previous step wrote back: each step
    adds at least one product's round trip through the MVU, the chain and the loader."""
    one_trip = mvu_latency(NPU.mvu, NPU) + NPU.mvu.evrf_cycles + 2 * NPU.mvu.mfu_cycles
    c5, c9 = _lstm_cycles(5), _lstm_cycles(9)
    assert c9 - c5 >= 4 * one_trip


def test_sole_consumer_rides_in_the_products_pass():
    """An RNN step is one pass: h R + x W (residual) -> tanh, one write-back; the unfused
    program would write the product back, then read it again for the tanh."""
    program = compile_full(build("06_rnn_512_8"), NPU).program
    tl = schedule(program, NPU).timeline
    kinds = [type(program.instructions[s.layer]).__name__ for s in tl
             if s.track == "loader" and s.what == "write-back"]
    steps = kinds.count("VUnary")
    assert steps == 8 and kinds.count("MvMul") == 7  # 7 input products: x_t W, t >= 1
    assert not any(s.track == "vector" and isinstance(program.instructions[s.layer], isa.MvMul)
                   and program.instructions[s.layer].has_residual for s in tl)


@pytest.mark.parametrize("name", list(exporter_graphs_recurrent.BUILDERS))
def test_step_by_step_products_change_no_bit(name):
    """A matrix-vector unit's programs take each step's input products on their own; the
    rows are independent, so every format gives the bits of the all-steps product."""
    g = exporter_graphs_recurrent.BUILDERS[name]()
    for fmt in ("mxint8", "msfp12"):
        opts = CompileOptions.make(NPU, fmt)
        numerics = Numerics(opts.format, opts.rounding, opts.seed)
        whole = evaluate(run_passes(to_graph(g.model), opts), g.feeds, numerics)
        steps = evaluate(run_passes(to_graph(g.model, per_step=True), opts), g.feeds, numerics)
        fp32 = evaluate(to_graph(g.model), g.feeds)
        for k in whole:
            assert not np.array_equal(whole[k], fp32[k]), "the format is applied"
            np.testing.assert_array_equal(steps[k], whole[k], strict=True, err_msg=f"{fmt} {k}")


@pytest.mark.parametrize("name", ["torch_lstm_two_layers", "gru_reset_before"])
def test_program_for_the_npu_matches_golden(name):
    g = exporter_graphs_recurrent.BUILDERS[name]()
    comp = compile_full(g.model, NPU)
    outs = Session(comp.program).run(None, g.feeds)
    o = comp.options
    gold = evaluate(comp.graph, g.feeds, Numerics(o.format, o.rounding, o.seed))
    for out, vi in zip(outs, g.model.graph.output):
        np.testing.assert_array_equal(out, gold[vi.name], strict=True)
