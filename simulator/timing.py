# SPDX-License-Identifier: Apache-2.0
"""What each instruction asks of the device's units: compute cycles, MACs, bytes, operands.

This module prices one instruction in isolation; :mod:`npusim.simulator.schedule` places the
pieces on the load, compute, store and host queues and lets them overlap.
``docs/timing.md`` derives every formula.

The matrix unit is weight stationary. An ``MV_MUL`` is cut into *waves*: in one wave
each of the ``tiles`` arrays holds one ``native_dim x array_cols`` weight tile and
the layer's activation vectors stream through it, one per cycle; the wave ends when
the last result has drained out of the array (:func:`mv_mul_waves`). Activations
entering the array are converted to block floating point on the way in, which adds the
depth of the converter's pipeline (a max tree over the block, then shift and round) to
each wave. Each array has a second (shadow) weight bank: the next wave's tile loads
into it while a wave runs, so only an instruction's first tile load is exposed
(:func:`weight_load_cycles`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from npusim.simulator import isa
from npusim.simulator.config import DeviceConfig
from npusim.simulator.numerics import Format
from npusim.simulator.vector import move_span

MAX_CHUNKS = 64
"""An instruction is pipelined in at most this many chunks (groups of waves)."""


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Operand:
    """A byte range of device DRAM an instruction reads or writes."""

    addr: int
    nbytes: int


@dataclass(frozen=True)
class Work:
    """The price of one instruction, before scheduling."""

    unit: str
    """``matrix``, ``vector``, ``host`` or ``control``: the unit that executes it."""
    compute: tuple[int, ...] = ()
    """Cycles of the compute unit, per chunk (the chunks are pipelined with the DMAs)."""
    macs: int = 0
    weight_bytes: int = 0
    """Weight bytes streamed from DRAM per run (0 when the layer's weights are pinned)."""
    pinned: bool | None = None
    """Whether the layer's weights stay on chip (matrix unit only)."""
    reads: tuple[Operand, ...] = ()
    """Activation operands (constants and weights are not listed)."""
    writes: tuple[Operand, ...] = ()
    host_bytes: int = 0
    """Bytes over the host link (host unit only)."""
    host_transfers: int = 0
    """Separate host-link transfers, each paying the link latency."""

    @property
    def compute_cycles(self) -> int:
        return sum(self.compute)


def conv_output_hw(i: isa.MvMul | isa.VPool) -> tuple[int, int]:
    """Output extent; an ``MV_MUL``'s input dilation enlarges the input it slides over."""
    dil_h = getattr(i, "dilation_h", 1)
    dil_w = getattr(i, "dilation_w", 1)
    eff_h = (i.kernel_h - 1) * dil_h + 1
    eff_w = (i.kernel_w - 1) * dil_w + 1
    height = (i.height - 1) * getattr(i, "in_dil_h", 1) + 1
    width = (i.width - 1) * getattr(i, "in_dil_w", 1) + 1
    rnd = ceil_div if getattr(i, "ceil_mode", 0) else (lambda a, b: a // b)
    oh = rnd(height + i.pad_top + i.pad_bottom - eff_h, i.stride_h) + 1
    ow = rnd(width + i.pad_left + i.pad_right - eff_w, i.stride_w) + 1
    return oh, ow


def bfp_convert_depth(fmt: Format) -> int:
    """Pipeline depth of the fp32 -> BFP converter in front of the array.

    The shared exponent is the maximum over a block: a ``log2(block)``-deep comparator
    tree, then one cycle to shift the mantissas and one to round. fp32 has no converter.
    """
    if fmt.name == "fp32":
        return 0
    return math.ceil(math.log2(fmt.block_size)) + 2


def split(total: int, parts: int) -> list[int]:
    """``total`` in ``parts`` near-equal integers (the larger ones first)."""
    base, extra = divmod(total, parts)
    return [base + (k < extra) for k in range(parts)]


def mv_mul_waves(i: isa.MvMul, cfg: DeviceConfig) -> tuple[int, int]:
    """``(waves, cycles per wave)`` of an ``MV_MUL``, before the converter's depth.

    A group's reduction of length ``K`` takes ``ceil(K / native_dim)`` passes and its
    ``O`` outputs ``ceil(O / array_cols)``. A wave streams the layer's ``N`` activation
    vectors through each tile: ``N`` cycles, plus ``native_dim`` for a partial sum to run
    down a column and ``array_cols`` for the rows to skew across the array and come out
    de-skewed. A tile that uses fewer rows or columns still pays the whole array: the
    partial sums pass every row. ``rtl/systolic_array`` takes exactly these cycles; a
    wave starts once the previous one has drained. Loading the tiles is priced apart
    (:func:`wave_cycles`).
    With an input dilation the address generator makes up the zeros between pixels: they
    stream through the array like real pixels (``N`` counts every output of the dilated
    input), but are never read from DRAM.
    """
    oh, ow = conv_output_hw(i)
    rows = i.batch * oh * ow
    k = i.kernel_h * i.kernel_w * i.channels // i.groups
    o = i.out_channels // i.groups
    jobs = i.groups * ceil_div(k, cfg.native_dim) * ceil_div(o, cfg.array_cols)
    return ceil_div(jobs, cfg.tiles), rows + cfg.native_dim + cfg.array_cols


def weight_load_cycles(cfg: DeviceConfig) -> int:
    """Cycles to load one weight tile into an array's shadow bank: one column per cycle,
    ``array_cols`` in all (``rtl/systolic_array``'s weight port). The ``tiles`` arrays
    load their tiles in parallel."""
    return cfg.array_cols


def wave_cycles(waves: int, wave: int, load: int, chunks: int) -> tuple[int, ...]:
    """The cycles of ``waves`` waves of ``wave`` cycles each in ``chunks`` chunks, weight
    loads included: the first tile's ``load`` is exposed (an instruction is priced
    alone, as if it started on an idle array), and each wave but the last takes
    ``max(wave, load)``, its successor's tile loading into the shadow bank meanwhile
    (for the systolic array a wave, at least ``1 + native_dim + array_cols``, always
    outlasts a load). The first chunk carries the exposed load, the last one the last
    wave."""
    step = max(wave, load)
    compute = [n * step for n in split(waves, chunks)]
    compute[0] += load
    compute[-1] -= step - wave
    return tuple(compute)


def mv_mul_work(i: isa.MvMul, cfg: DeviceConfig, fmt: Format, weight_bytes: int) -> Work:
    oh, ow = conv_output_hw(i)
    waves, wave = mv_mul_waves(i, cfg)
    wave += bfp_convert_depth(fmt)
    compute = wave_cycles(waves, wave, weight_load_cycles(cfg), min(waves, MAX_CHUNKS))
    k = i.kernel_h * i.kernel_w * i.channels // i.groups
    reads = [Operand(i.src, 4 * i.batch * i.channels * i.height * i.width)]
    out = Operand(i.dst, 4 * i.batch * i.out_channels * oh * ow)
    if i.has_residual:
        reads.append(Operand(i.residual, out.nbytes))
    return Work("matrix", compute, i.batch * oh * ow * k * i.out_channels,
                0 if i.pinned else weight_bytes, bool(i.pinned), tuple(reads), (out,))


def mm_mul_work(i: isa.MmMul, cfg: DeviceConfig, fmt: Format) -> Work:
    """A product of two activations. ``B`` is the stationary operand, so its tiles are
    loaded into the array like a layer's weights, but they were computed at run time:
    each tile passes the fp32 -> BFP converter and is shifted into the array's rows
    (``native_dim`` cycles) before ``A``'s ``M`` rows stream through it. The shadow
    weight bank does not help: its port takes BFP codes, and the only converter is the
    one in front of the array's rows, so each tile is converted and shifted in while the
    array waits. ``B`` is read from DRAM as an activation (4 bytes per element)."""
    jobs = i.batch * ceil_div(i.k, cfg.native_dim) * ceil_div(i.n, cfg.array_cols)
    waves = ceil_div(jobs, cfg.tiles)
    wave = i.m + 2 * cfg.native_dim + cfg.array_cols + 2 * bfp_convert_depth(fmt)
    compute = tuple(n * wave for n in split(waves, min(waves, MAX_CHUNKS)))
    b_rows = 1 if i.b_shared else i.batch
    reads = (Operand(i.src_a, 4 * i.batch * i.m * i.k), Operand(i.src_b, 4 * b_rows * i.k * i.n))
    return Work("matrix", compute, i.batch * i.m * i.k * i.n, 0, None, reads,
                (Operand(i.dst, 4 * i.batch * i.m * i.n),))


def gemm_cycles(n: int, k: int, o: int, cfg: DeviceConfig, fmt: Format | None = None) -> int:
    """Compute cycles the matrix unit takes for ``[n, k] @ [o, k].T`` with pinned weights,
    weight-tile loads included.

    The same pricing as a compiled dense layer of that shape (an ``MV_MUL`` over ``n``
    activation vectors); the RTL testbench of the systolic array checks it.

    >>> from npusim.simulator.config import load_device
    >>> tiny = load_device("tiny").replace(numerics="msfp8")  # 8 x 8 array, block 8
    >>> gemm_cycles(1, 24, 16, tiny)  # 8 (first load) + 6 waves of 1 + 8 + 8 + 5
    140
    """
    i = isa.MvMul(src=0, dst=0, weights=0, bias=0, residual=0, batch=1, channels=k,
                  height=n, width=1, out_channels=o, groups=1, kernel_h=1, kernel_w=1,
                  stride_h=1, stride_w=1, pad_top=0, pad_left=0, pad_bottom=0, pad_right=0,
                  dilation_h=1, dilation_w=1, in_dil_h=1, in_dil_w=1, relu=0, has_residual=0,
                  pinned=1)
    return sum(mv_mul_work(i, cfg, fmt or cfg.format(), 0).compute)


def vector_cycles(elements: int, cfg: DeviceConfig) -> int:
    return ceil_div(elements, cfg.vector_lanes)


def _vector(elements: int, cfg: DeviceConfig, reads, writes) -> Work:
    return Work("vector", (vector_cycles(elements, cfg),), reads=tuple(reads),
                writes=tuple(writes))


def work(i: isa.Instruction, cfg: DeviceConfig, fmt: Format, weight_bytes: int = 0,
         host_io: tuple[tuple[Operand, ...], tuple[Operand, ...]] = ((), ())) -> Work:
    """The :class:`Work` of instruction ``i`` on ``cfg`` in format ``fmt``.

    ``weight_bytes`` is the packed size of an ``MV_MUL``'s weights; ``host_io`` the
    operands a ``HOST_CALL`` sends to the host and receives back.
    """
    op = Operand
    if isinstance(i, isa.MvMul):
        return mv_mul_work(i, cfg, fmt, weight_bytes)
    if isinstance(i, isa.MmMul):
        return mm_mul_work(i, cfg, fmt)
    if isinstance(i, isa.VRd):
        return Work("host", writes=(op(i.dst, i.nbytes),), host_bytes=i.nbytes,
                    host_transfers=1)
    if isinstance(i, isa.VWr):
        return Work("host", reads=(op(i.src, i.nbytes),), host_bytes=i.nbytes,
                    host_transfers=1)
    if isinstance(i, isa.HostCall):
        ins, outs = host_io
        # one transfer each way that carries data (values the host keeps never cross);
        # a call that moves nothing still pays one link latency to be dispatched
        return Work("host", reads=ins, writes=outs,
                    host_bytes=sum(t.nbytes for t in ins + outs),
                    host_transfers=max(1, bool(ins) + bool(outs)))
    if isinstance(i, isa.VvAdd):
        n = 4 * i.length
        return _vector(i.length, cfg, [op(i.src0, n), op(i.src1, n)], [op(i.dst, n)])
    if isinstance(i, (isa.VRelu, isa.VUnary)):
        n = 4 * i.length
        return _vector(i.length, cfg, [op(i.src, n)], [op(i.dst, n)])
    if isinstance(i, isa.VvAlu):  # the broadcast operand's span is one period: mod values
        n = 4 * i.length
        return _vector(i.length, cfg, [op(i.src0, n), op(i.src1, 4 * i.mod)], [op(i.dst, n)])
    if isinstance(i, isa.VReduce):
        n = i.outer * i.mid * i.inner
        return _vector(n, cfg, [op(i.src, 4 * n)], [op(i.dst, 4 * i.outer * i.inner)])
    if isinstance(i, isa.VNorm):  # mean, variance and scale: three passes over the rows
        n = i.rows * i.cols
        return _vector(3 * n, cfg, [op(i.src, 4 * n)], [op(i.dst, 4 * n)])
    if isinstance(i, isa.VResize):  # a nearest output reads one input, a bilinear one four
        outs = i.planes * i.out_h * i.out_w
        taps = 4 if i.mode == isa.ResizeMode.LINEAR else 1
        return _vector(outs * taps, cfg, [op(i.src, 4 * i.planes * i.in_h * i.in_w)],
                       [op(i.dst, 4 * outs)])
    if isinstance(i, isa.VMove):
        n = math.prod(i.dims)
        lo, hi = move_span(i.dims, i.strides)
        reads = [op(i.src + 4 * lo, 4 * (hi - lo + 1))] if n else []
        return _vector(n, cfg, reads, [op(i.dst, 4 * n)])
    if isinstance(i, isa.VPad):
        outs = i.outer * (i.height + i.pad_top + i.pad_bottom) * \
            (i.width + i.pad_left + i.pad_right)
        return _vector(outs, cfg, [op(i.src, 4 * i.outer * i.height * i.width)],
                       [op(i.dst, 4 * outs)])
    if isinstance(i, isa.VGather):
        n = i.outer * i.count * i.inner
        return _vector(n, cfg, [op(i.src, 4 * i.outer * i.axis_len * i.inner),
                                op(i.table, 4 * i.count)], [op(i.dst, 4 * n)])
    if isinstance(i, isa.VCopy):
        n = i.rows * i.row_len
        src = op(i.src, 4 * ((i.rows - 1) * i.src_stride + i.row_len))
        dst = op(i.dst, 4 * ((i.rows - 1) * i.dst_stride + i.row_len))
        return _vector(n, cfg, [src], [dst])
    if isinstance(i, isa.VSoftmax):  # max, exp-sum and scale: three passes over the rows
        n = i.rows * i.cols
        return _vector(3 * n, cfg, [op(i.src, 4 * n)], [op(i.dst, 4 * n)])
    if isinstance(i, isa.VPool):
        plane_in = i.batch * i.channels * i.height * i.width
        if i.mode in (isa.PoolMode.GLOBAL_AVG, isa.PoolMode.GLOBAL_MAX):
            return _vector(plane_in, cfg, [op(i.src, 4 * plane_in)],
                           [op(i.dst, 4 * i.batch * i.channels)])
        oh, ow = conv_output_hw(i)
        outs = i.batch * i.channels * oh * ow
        return _vector(outs * i.kernel_h * i.kernel_w, cfg, [op(i.src, 4 * plane_in)],
                       [op(i.dst, 4 * outs)])
    return Work("control")
