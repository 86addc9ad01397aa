# SPDX-License-Identifier: Apache-2.0
"""First timing model: each instruction priced analytically, instructions in sequence.

``docs/timing.md`` derives every formula. In short, for an ``MV_MUL`` the matrix
unit is weight-stationary: each ``native_dim x array_cols`` weight tile is loaded
and the layer's activation vectors stream through it, one per cycle, plus the
array's fill and drain; the tiles share the tile jobs. Weights pinned on chip cost
no DRAM traffic at run time; streamed weights are fetched with double buffering,
so the layer takes the longer of compute and transfer, plus one DRAM latency.
"""

from __future__ import annotations

from dataclasses import dataclass

from simulator import isa
from simulator.config import DeviceConfig


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Cost:
    """The price of one instruction."""

    cycles: int
    macs: int = 0
    compute_cycles: int = 0
    memory_cycles: int = 0
    unit: str = "vector"


def conv_output_hw(i: isa.MvMul | isa.VPool) -> tuple[int, int]:
    dil_h = getattr(i, "dilation_h", 1)
    dil_w = getattr(i, "dilation_w", 1)
    eff_h = (i.kernel_h - 1) * dil_h + 1
    eff_w = (i.kernel_w - 1) * dil_w + 1
    rnd = _ceil if getattr(i, "ceil_mode", 0) else (lambda a, b: a // b)
    oh = rnd(i.height + i.pad_top + i.pad_bottom - eff_h, i.stride_h) + 1
    ow = rnd(i.width + i.pad_left + i.pad_right - eff_w, i.stride_w) + 1
    return oh, ow


def mv_mul_cost(i: isa.MvMul, cfg: DeviceConfig, weight_bytes: int) -> Cost:
    oh, ow = conv_output_hw(i)
    rows = i.batch * oh * ow
    k = i.kernel_h * i.kernel_w * i.channels // i.groups
    o = i.out_channels // i.groups
    jobs = i.groups * _ceil(k, cfg.native_dim) * _ceil(o, cfg.array_cols)
    waves = _ceil(jobs, cfg.tiles)
    compute = waves * (rows + cfg.native_dim + cfg.array_cols)
    memory = 0 if i.pinned else _ceil(weight_bytes, max(1, int(cfg.dram_bytes_per_cycle)))
    cycles = max(compute, memory) + (0 if i.pinned else cfg.dram_latency_cycles)
    return Cost(cycles, rows * k * i.out_channels, compute, memory, "matrix")


def vector_cost(elements: int, cfg: DeviceConfig) -> Cost:
    compute = _ceil(elements, cfg.vector_lanes)
    return Cost(compute, 0, compute, 0, "vector")


def host_cost(nbytes: int, cfg: DeviceConfig) -> Cost:
    transfer = _ceil(nbytes, max(1, int(cfg.host_bytes_per_cycle)))
    return Cost(cfg.host_latency_cycles + transfer, 0, 0, transfer, "host")


def host_call_cost(nbytes_in: int, nbytes_out: int, cfg: DeviceConfig) -> Cost:
    """Operands go to the host and results come back over the host link.

    The host's own compute time is not modelled: it is not the device's.
    """
    transfer = _ceil(nbytes_in + nbytes_out, max(1, int(cfg.host_bytes_per_cycle)))
    return Cost(2 * cfg.host_latency_cycles + transfer, 0, 0, transfer, "host")


def cost(i: isa.Instruction, cfg: DeviceConfig, weight_bytes: int = 0,
         host_bytes: tuple[int, int] = (0, 0)) -> Cost:
    """The price of instruction ``i`` on ``cfg``."""
    if isinstance(i, isa.HostCall):
        return host_call_cost(*host_bytes, cfg)
    if isinstance(i, isa.MvMul):
        return mv_mul_cost(i, cfg, weight_bytes)
    if isinstance(i, (isa.VRd, isa.VWr)):
        return host_cost(i.nbytes, cfg)
    if isinstance(i, (isa.VvAdd, isa.VRelu, isa.VvAlu, isa.VUnary)):
        return vector_cost(i.length, cfg)
    if isinstance(i, isa.VCopy):
        return vector_cost(i.rows * i.row_len, cfg)
    if isinstance(i, isa.VSoftmax):
        return vector_cost(3 * i.rows * i.cols, cfg)  # max, exp-sum, scale passes
    if isinstance(i, isa.VPool):
        if i.mode in (isa.PoolMode.GLOBAL_AVG, isa.PoolMode.GLOBAL_MAX):
            return vector_cost(i.batch * i.channels * i.height * i.width, cfg)
        oh, ow = conv_output_hw(i)
        return vector_cost(i.batch * i.channels * oh * ow * i.kernel_h * i.kernel_w, cfg)
    return Cost(1, unit="control")
