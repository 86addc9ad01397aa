# SPDX-License-Identifier: Apache-2.0
"""The timing model: closed-form cases derived by hand, monotonicity, determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import helper
from onnx_helpers import conv_block, make_model, rand

from npusim.compiler import compile_model
from npusim.simulator import isa
from npusim.simulator.config import load_device
from npusim.simulator.residency import Traffic
from npusim.simulator.schedule import schedule, simulate
from npusim.simulator.timing import Work, bfp_convert_depth, gemm_cycles, wave_cycles

TINY = load_device("tiny")  # 8 x 8 array, 100 MHz: 8 DRAM bytes/cycle, 20 cycles DRAM latency;
# host link 4 bytes/cycle with a 100-cycle latency


def test_tiny_rates_used_below():
    assert TINY.dram_bytes_per_cycle == 8 and TINY.dram_latency_cycles == 20
    assert TINY.host_bytes_per_cycle == 4 and TINY.host_latency_cycles == 100


# --- the queues alone, on hand-made work ---

def test_pinned_layer_costs_its_compute_only():
    n, c = 5, 40
    st = simulate([Work("matrix", (c,) * n, pinned=True)], [Traffic()], TINY)
    assert st.cycles == n * c
    assert st.layers[0].stalls == {} and st.layers[0].dram_bytes == 0


def test_streamed_memory_bound_layer():
    # each chunk loads 400 bytes = x = 50 cycles, computes c = 22; lat + c = 42 <= x, so the
    # loads run back to back (each slot is free again before it is needed) and the last
    # chunk computes after its load lands: n * x + lat + c.
    n, x, c, lat = 6, 50, 22, 20
    w = Work("matrix", (c,) * n, weight_bytes=n * 8 * x, pinned=False)
    st = simulate([w], [Traffic()], TINY)
    assert st.cycles == n * x + lat + c
    assert st.layers[0].bound == "memory"
    assert st.layers[0].stalls == {"load": (x + lat) + (n - 1) * (x - c)}


def test_streamed_compute_bound_layer():
    # x = 10 cycles per load, c = 40 >= x + lat = 30: only the first load is exposed, every
    # later one is prefetched under the compute of the chunk before: x + lat + n * c.
    n, x, c, lat = 6, 10, 40, 20
    w = Work("matrix", (c,) * n, weight_bytes=n * 8 * x, pinned=False)
    st = simulate([w], [Traffic()], TINY)
    assert st.cycles == x + lat + n * c
    assert st.layers[0].bound == "compute"


def test_next_layer_weights_prefetch_under_this_layer():
    # two streamed compute-bound layers: the second one's first load happens while the first
    # layer computes, so only the very first load is exposed.
    n, x, c, lat = 4, 10, 40, 20
    w = Work("matrix", (c,) * n, weight_bytes=n * 8 * x, pinned=False)
    st = simulate([w, w], [Traffic(), Traffic()], TINY)
    assert st.cycles == x + lat + 2 * n * c


# --- compiled programs ---

def gemm(rows: int, k: int, o: int):
    rng = np.random.default_rng(0)
    return make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"])], {"x": [rows, k]},
                      {"y": [rows, o]}, {"w": rand(rng, k, o), "b": rand(rng, o)})


def test_single_gemm_tile():
    # [4 x 8] @ [8 x 8] on the tiny 8 x 8 array: one pinned weight tile, one wave.
    prog = compile_model(gemm(4, 8, 8), "tiny")
    st = schedule(prog, TINY)
    nbytes = 4 * 8 * 4                       # 128 bytes in, 128 out (fp32)
    host = 100 + nbytes // 4                 # latency + 4 bytes/cycle: 132
    dram = nbytes // 8                       # 16 cycles
    depth = math.ceil(math.log2(TINY.format().block_size)) + 2
    load = 8                                 # the tile's 8 columns, one per cycle, exposed
    wave = 4 + 8 + 8 + depth                 # 4 vectors stream, 8 rows fill, 8 columns drain
    # V_RD (host -> DRAM); load x (+ latency); compute; write y back; V_WR (DRAM -> host)
    expected = host + (dram + 20) + load + wave + (dram + 20) + host
    assert st.cycles == expected
    mv = st.layers[1]
    assert mv.compute_cycles == load + wave and mv.macs == 4 * 8 * 8 and mv.pinned is True
    assert mv.roofline_cycles == max(1, math.ceil(mv.macs / 64), dram)


def test_memory_bound_copy():
    # a Relu over 264 floats (1,056 bytes in and out) with a 2 KiB activation memory: the
    # operands do not fit together, so the op streams in ceil(2 * 2112 / 2048) = 3 chunks of
    # 352 bytes (44 DRAM cycles) and 11 vector cycles each. With T = end of V_RD = 364:
    #   L0 [T, T+44) lands T+64; L1 [T+44, T+88) lands T+108
    #   C0 [T+64, T+75); its slot frees L2 [T+88, T+132), lands T+152
    #   S0 takes the next free DRAM gap [T+132, T+176); C1 [T+108, T+119)
    #   S1 [T+176, T+220); C2 waits for S0 to empty its output slot: [T+176, T+187)
    #   S2 [T+220, T+264), in DRAM at T+284; V_WR 100 + 1056 / 4 = 364 cycles
    cfg = TINY.replace(activation_buffer_kib=2)
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [1, 264]},
                       {"y": [1, 264]})
    st = schedule(compile_model(model, cfg), cfg)
    t = 100 + 1056 // 4
    assert st.cycles == t + 284 + 364
    relu = st.layers[1]
    assert relu.bound == "memory" and relu.dram_bytes == 2 * 1056
    assert relu.compute_cycles == 33


def test_pinned_and_streamed_layer():
    model = gemm(1, 64, 64)
    pinned = compile_model(model, "tiny")
    small = TINY.replace(weight_buffer_kib=1)  # the 64 x 64 weights (> 2 KiB) don't fit
    streamed = compile_model(model, small)
    mv = [i for i in pinned.instructions if isinstance(i, isa.MvMul)]
    assert [i.pinned for i in mv] == [1]
    mv = [i for i in streamed.instructions if isinstance(i, isa.MvMul)]
    assert [i.pinned for i in mv] == [0]
    wbytes = streamed.weight_tensors[0].nbytes
    assert streamed.metadata["streamed_weight_bytes"] == wbytes
    a, b = schedule(pinned, TINY), schedule(streamed, small)
    assert b.layers[1].dram_bytes == wbytes + 64 * 4  # the weights and the input vector
    # the first tile's 8 columns, then 64 waves of (1 + 8 + 8 + depth) cycles, each hiding
    # the next tile's 8-cycle load; streaming at 8 bytes/cycle is slower
    wave = 1 + 8 + 8 + bfp_convert_depth(TINY.format())
    assert a.layers[1].compute_cycles == b.layers[1].compute_cycles == 8 + 64 * wave
    assert b.cycles > a.cycles


def test_weight_tile_loads():
    # msfp8 on tiny: block 8, so d = log2(8) + 2 = 5 and a wave of N rows is N + 8 + 8 + 5.
    # [1 x 24] @ [24 x 16]: ceil(24 / 8) = 3 passes x ceil(16 / 8) = 2 column tiles = 6
    # waves of 22 cycles. The first tile's 8 columns load before any row can enter; each
    # later tile loads into the shadow bank during the wave before it (8 <= 22).
    cfg = TINY.replace(numerics="msfp8")
    assert gemm_cycles(1, 24, 16, cfg) == 8 + 6 * 22
    # two arrays: 3 waves, and the two tiles of a wave load side by side (still 8 cycles)
    assert gemm_cycles(1, 24, 16, cfg.replace(tiles=2)) == 8 + 3 * 22
    # a 16-wide array: 3 waves of 1 + 8 + 16 + 5 = 30, each tile 16 columns
    assert gemm_cycles(1, 24, 16, cfg.replace(array_cols=16)) == 16 + 3 * 30
    # 70 waves in 64 chunks (6 of two waves, 58 of one): the first carries the exposed load
    compute = wave_cycles(70, 22, 8, 64)
    assert compute[:7] == (8 + 44, 44, 44, 44, 44, 44, 22) and sum(compute) == 8 + 70 * 22
    # a load longer than a wave (not this array's case) stretches every wave but the last:
    # 25 + (25 + 25) + 10 over 3 waves of 10 cycles, in 2 chunks (2 waves, then 1)
    assert wave_cycles(3, 10, 25, 2) == (25 + 25 + 25, 10)


def test_pinning_prefers_the_layers_that_would_stall():
    # a big and a small layer; only one fits beside the streaming buffers: the one whose
    # streaming stalls the array more per byte is pinned
    rng = np.random.default_rng(0)
    model = make_model([helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
                        helper.make_node("Gemm", ["h", "w2", "b2"], ["y"])],
                       {"x": [1, 128]}, {"y": [1, 16]},
                       {"w1": rand(rng, 128, 128), "b1": rand(rng, 128),
                        "w2": rand(rng, 128, 16), "b2": rand(rng, 16)})
    cfg = TINY.replace(weight_buffer_kib=8)
    prog = compile_model(model, cfg)
    flags = [i.pinned for i in prog.instructions if isinstance(i, isa.MvMul)]
    assert sorted(flags) == [0, 1]
    assert prog.metadata["pinned_weight_bytes"] + prog.metadata["streamed_weight_bytes"] == \
        sum(t.nbytes for t in prog.weight_tensors)


# --- properties ---

@pytest.fixture(scope="module")
def block():
    return conv_block()


def test_more_bandwidth_never_slows_a_program_down(block):
    base = TINY.replace(weight_buffer_kib=1, activation_buffer_kib=1)
    last = None
    for gbps in (0.2, 0.4, 0.8, 1.6, 3.2, 12.8):
        cfg = base.replace(dram_gbps=gbps)
        cycles = schedule(compile_model(block, cfg), cfg).cycles
        assert last is None or cycles <= last, gbps
        last = cycles


def test_more_host_bandwidth_never_slows_a_program_down(block):
    last = None
    for gbps in (0.1, 0.4, 1.6):
        cfg = TINY.replace(host_link_gbps=gbps)
        cycles = schedule(compile_model(block, cfg), cfg).cycles
        assert last is None or cycles <= last
        last = cycles


# More tiles only cut waves. A wider array is not in this list: every wave pays the
# whole array's drain, so widening past a layer's outputs adds cycles, as in the RTL.
@pytest.mark.parametrize("field,values", [("tiles", (1, 2, 3, 4, 8))])
def test_more_tiles_never_add_compute_cycles(block, field, values):
    last = None
    for v in values:
        cfg = TINY.replace(**{field: v})
        st = schedule(compile_model(block, cfg), cfg)
        compute = sum(layer.compute_cycles for layer in st.layers if layer.unit == "matrix")
        assert last is None or compute <= last, (field, v)
        last = compute


def test_the_schedule_is_deterministic(block):
    a = schedule(compile_model(block, "tiny"), TINY)
    b = schedule(compile_model(block, "tiny"), TINY)
    assert a == b and a.timeline == b.timeline


def test_invariants_of_a_real_program(block):
    st = schedule(compile_model(block, "tiny"), TINY)
    assert st.cycles == sum(layer.cycles for layer in st.layers)
    assert st.roofline_ratio >= 1.0
    for track in ("load", "store", "host"):
        spans = sorted((s.start, s.end) for s in st.timeline if s.track == track)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), track  # in-order queues
    dram = sorted((s.start, s.end) for s in st.timeline if s.track in ("load", "store"))
    assert all(a[1] <= b[0] for a, b in zip(dram, dram[1:]))  # one DRAM channel
    compute = sorted((s.start, s.end) for s in st.timeline if s.track in ("matrix", "vector"))
    assert all(a[1] <= b[0] for a, b in zip(compute, compute[1:]))



def test_a_program_larger_than_device_dram_is_refused():
    from npusim.compiler.errors import CompileError

    cfg = TINY.replace(dram_mib=1, numerics="fp32")  # 512 x 1024 fp32 weights: 2 MiB
    with pytest.raises(CompileError, match="2097152 bytes, more than the 1 MiB of DRAM of tiny"):
        compile_model(gemm(1, 512, 1024), cfg)  # one value larger than DRAM
    rng = np.random.default_rng(0)
    two = make_model([helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
                      helper.make_node("Gemm", ["h", "w2", "b2"], ["y"])], {"x": [1, 512]},
                     {"y": [1, 512]}, {"w1": rand(rng, 512, 320), "b1": rand(rng, 320),
                                       "w2": rand(rng, 320, 512), "b2": rand(rng, 512)})
    with pytest.raises(CompileError, match="bytes of device DRAM; tiny has 1 MiB"):
        compile_model(two, cfg)  # each weight fits, both do not


# --- the vector unit's instructions, one by one (tiny: 8 lanes) ---

def _mv(in_dil: int, **kw) -> isa.MvMul:
    base = dict(src=0, dst=4096, weights=0, bias=0, residual=0, batch=1, channels=4, height=5,
                width=5, out_channels=6, groups=1, kernel_h=3, kernel_w=3, stride_h=1,
                stride_w=1, pad_top=2, pad_left=2, pad_bottom=2, pad_right=2, dilation_h=1,
                dilation_w=1, in_dil_h=in_dil, in_dil_w=in_dil, relu=0, has_residual=0,
                pinned=1)
    return isa.MvMul(**{**base, **kw})


def test_vector_instructions_price_their_elements():
    from npusim.simulator.timing import Operand, work

    fmt = TINY.format()
    f32 = isa.f32_bits
    lo = -(2 * 20 + 2 * 2)  # V_MOVE of x[::-1, :, ::-2] from [3, 4, 5] starting at [2, 0, 4]
    cases = [  # (instruction, compute cycles, reads, writes)
        (isa.VvAlu(0, 2048, 1024, 120, isa.AluOp.POW, 1, 20, 3), 15,
         [Operand(0, 480), Operand(2048, 12)], [Operand(1024, 480)]),
        (isa.VUnary(0, 1024, 100, isa.UnaryFn.GELU, f32(1.0), 0), 13,
         [Operand(0, 400)], [Operand(1024, 400)]),
        (isa.VReduce(0, 1024, 3, 8, 6, isa.ReduceMode.L2), 18,
         [Operand(0, 576)], [Operand(1024, 72)]),
        (isa.VNorm(0, 1024, 4096, 4160, 24, 6, 0, f32(1e-5)), 54,  # three passes
         [Operand(0, 576)], [Operand(1024, 576)]),
        (isa.VResize(0, 1024, 3, 8, 6, 13, 4, isa.ResizeMode.NEAREST, 0, 0, f32(1.7), f32(.7)),
         20, [Operand(0, 576)], [Operand(1024, 624)]),
        (isa.VResize(0, 1024, 3, 8, 6, 13, 4, isa.ResizeMode.LINEAR, 0, 0, f32(1.7), f32(.7)),
         78, [Operand(0, 576)], [Operand(1024, 624)]),  # four taps per output
        (isa.VMove(1000, 4096, 1, 1, 1, 3, 4, 3, 0, 0, 0, isa.to_u32(-20), 5, isa.to_u32(-2)),
         5, [Operand(1000 + 4 * lo, 4 * (15 - lo + 1))], [Operand(4096, 144)]),
        (isa.VPad(0, 1024, 3, 8, 6, 1, 2, 2, 1, isa.PadMode.REFLECT, 0), 38,
         [Operand(0, 576)], [Operand(1024, 4 * 297)]),
        (isa.VGather(0, 1024, 2048, 2, 6, 5, 3), 5,
         [Operand(0, 120), Operand(2048, 24)], [Operand(1024, 144)]),
    ]
    for i, cycles, reads, writes in cases:
        w = work(i, TINY, fmt)
        assert w.unit == "vector" and w.compute == (cycles,), i
        assert list(w.reads) == reads and list(w.writes) == writes, i


def test_an_input_dilated_conv_streams_its_zeros_but_reads_only_its_pixels():
    from npusim.simulator.timing import conv_output_hw, mv_mul_waves, work

    plain, stuffed = _mv(1), _mv(2)
    assert conv_output_hw(plain) == (7, 7)
    assert conv_output_hw(stuffed) == (11, 11)  # (5-1)*2+1 = 9 wide, padded by 2 each side
    waves, wave = mv_mul_waves(stuffed, TINY)
    assert wave == 121 + 8 + 8  # every output of the dilated input streams through the array
    w = work(stuffed, TINY, TINY.format())
    assert w.reads[0].nbytes == 4 * 4 * 5 * 5  # the zeros are made up, not read
    assert w.writes[0].nbytes == 4 * 6 * 11 * 11
    assert w.macs == 121 * 9 * 4 * 6
    assert conv_output_hw(_mv(3, stride_h=2, in_dil_w=1)) == (8, 7)  # (13 + 4 - 3) // 2 + 1
