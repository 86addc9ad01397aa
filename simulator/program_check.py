# SPDX-License-Identifier: Apache-2.0
"""Whole-program checks: what a loaded program may ask of the device.

After :mod:`npusim.simulator.program_schema` has checked each JSON section on its own, this
module checks the program as a whole, so that the executor and the timing model can
trust what they are given:

* the memory map: the three regions in order, without overlap, inside device DRAM, the
  weight and constant images exactly their regions' size;
* every tensor descriptor: a known element type, ``nbytes`` equal to its shape's size,
  inside a region (model inputs and everything the device or a host call writes inside
  the activation arena);
* every weight tensor: a whole packed image of its shape and format inside the weights;
* every instruction: enum fields in range, no zero divisor or empty extent, a geometry
  with an output, and every byte it reads or writes (as :func:`npusim.simulator.timing.work`
  lists them, plus the operands the timing model does not move: biases, norm scales)
  inside a region; writes only in the activation arena;
* the host calls: each names an entry of the host table; the I/O instructions name an
  I/O slot and that slot's exact bytes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from npusim.simulator import isa, timing
from npusim.simulator.numerics import FORMAT_NAMES, packed_size
from npusim.simulator.program_schema import NUMERIC_DTYPES

if TYPE_CHECKING:
    from npusim.simulator.program import Program, TensorDesc

MAX_NATIVE_DIM = 4096
"""Largest block (array rows) a program's target may declare: the quantizer pads every
reduction to a whole block, so the block bounds the simulator's scratch memory."""

MAX_WINDOW_WORK = 1 << 32
"""Element reads one pooling instruction may make (a large model's largest pool makes
about 10**8): a window and a stride that pass every other check cannot ask for hours."""

_ENUMS: dict[type, dict[str, type]] = {
    isa.VPool: {"mode": isa.PoolMode},
    isa.VvAlu: {"op": isa.AluOp},
    isa.VUnary: {"fn": isa.UnaryFn},
    isa.VReduce: {"mode": isa.ReduceMode},
    isa.VResize: {"mode": isa.ResizeMode, "coord": isa.CoordMode, "nearest": isa.NearestMode},
    isa.VPad: {"mode": isa.PadMode},
}
_AT_LEAST_ONE: dict[type, tuple[str, ...]] = {
    isa.MvMul: ("batch", "channels", "height", "width", "out_channels", "groups", "kernel_h",
                "kernel_w", "stride_h", "stride_w", "dilation_h", "dilation_w", "in_dil_h",
                "in_dil_w"),
    isa.MmMul: ("batch", "m", "k", "n"),
    isa.VPool: ("batch", "channels", "height", "width"),
    isa.VvAdd: ("length",),
    isa.VRelu: ("length",),
    isa.VUnary: ("length",),
    isa.VvAlu: ("length", "div", "mod"),
    isa.VSoftmax: ("rows", "cols"),
    isa.VReduce: ("outer", "mid", "inner"),
    isa.VNorm: ("rows", "cols"),
    isa.VResize: ("planes", "in_h", "in_w", "out_h", "out_w"),
    isa.VMove: ("d0", "d1", "d2", "d3", "d4", "d5"),
    isa.VPad: ("outer", "height", "width"),
    isa.VGather: ("outer", "count", "axis_len", "inner"),
    isa.VCopy: ("rows", "row_len"),
}


class CheckError(ValueError):
    """A program whose parts do not fit together."""


def dtype_size(dtype: str) -> int:
    return np.dtype(dtype).itemsize


def check_program(p: Program) -> None:
    """Raise :class:`CheckError` naming the first thing in ``p`` a device cannot trust."""
    if p.target.native_dim > MAX_NATIVE_DIM:
        raise CheckError(f"target native_dim {p.target.native_dim} exceeds {MAX_NATIVE_DIM}")
    regions = _memory_map(p)
    held = {n for h in p.host_ops for n in h.on_host}
    for t in p.inputs:
        _tensor(t, "input", regions, writable=True)
    for t in p.outputs:
        if t.name in held:
            _host_held(t, "output")
        else:
            _tensor(t, "output", regions)
    weights = _weight_tensors(p)
    for k, h in enumerate(p.host_ops):
        names = {t.name for t in h.inputs + h.outputs}
        stray = sorted(set(h.on_host) - names)
        if stray:
            raise CheckError(f"host op {k} keeps '{stray[0]}' on the host, which it neither "
                             "reads nor writes")
        for t in h.inputs + h.outputs:
            if t.name in h.on_host:
                _host_held(t, f"host op {k} tensor")
            else:
                _tensor(t, f"host op {k} tensor", regions, writable=t in h.outputs)
    if len(p.layers) != len(p.instructions):
        raise CheckError(f"{len(p.layers)} layer records for {len(p.instructions)} "
                         "instructions")
    if not p.instructions or not isinstance(p.instructions[-1], isa.EndChain) \
            or any(isinstance(i, isa.EndChain) for i in p.instructions[:-1]):
        raise CheckError("the program must end with its only END_CHAIN")
    for k, i in enumerate(p.instructions):
        try:
            _instruction(i, p, regions, weights)
        except CheckError as exc:
            raise CheckError(f"instruction {k} ({i.OPCODE.name}): {exc}") from None


def _memory_map(p: Program) -> dict[str, tuple[int, int]]:
    mm = p.memory_map
    order = sorted(("weights", "constants", "activations"), key=lambda r: mm[r][0])
    end = 0
    for r in order:
        base, size = mm[r]
        if base < end:
            raise CheckError(f"memory map: region {r} at {base} overlaps the one before")
        end = base + size
    dram = p.target.dram_mib * 2**20
    if end > dram:
        raise CheckError(f"memory map ends at byte {end}, past the target's {dram} bytes "
                         "of DRAM")
    for r, image in (("weights", p.weights), ("constants", p.constants)):
        if mm[r][1] != len(image):
            raise CheckError(f"memory map: region {r} has {mm[r][1]} bytes, its image "
                             f"{len(image)}")
    return {r: (mm[r][0], mm[r][0] + mm[r][1]) for r in mm}


def _inside(addr: int, nbytes: int, regions: dict[str, tuple[int, int]], writable: bool,
            what: str) -> None:
    if nbytes == 0:
        return
    allowed = ("activations",) if writable else ("weights", "constants", "activations")
    for r in allowed:
        lo, hi = regions[r]
        if lo <= addr and addr + nbytes <= hi:
            return
    where = "the activation arena" if writable else "any memory region"
    raise CheckError(f"{what}: bytes [{addr}, {addr + nbytes}) are outside {where}")


def _elements(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _tensor(t: TensorDesc, what: str, regions, writable: bool = False) -> None:
    what = f"{what} '{t.name[:80]}'"
    if t.dtype not in NUMERIC_DTYPES:
        raise CheckError(f"{what}: element type {t.dtype!r} cannot live in device DRAM")
    if any(d < 0 for d in t.shape):
        raise CheckError(f"{what}: shape {list(t.shape)} has an unknown dimension")
    if t.nbytes != _elements(t.shape) * dtype_size(t.dtype):
        raise CheckError(f"{what}: {t.nbytes} bytes for shape {list(t.shape)} {t.dtype}")
    _inside(t.addr, t.nbytes, regions, writable, what)


def _host_held(t: TensorDesc, what: str) -> None:
    if t.addr or t.nbytes:
        raise CheckError(f"{what} '{t.name[:80]}' stays on the host but has a DRAM address")


def _weight_tensors(p: Program) -> dict[int, TensorDesc]:
    wbase = p.memory_map["weights"][0]
    out = {}
    for t in p.weight_tensors:
        what = f"weight tensor '{t.name[:80]}'"
        if len(t.shape) != 2 or min(t.shape) < 1:
            raise CheckError(f"{what}: shape {list(t.shape)} is not a [rows, cols] matrix")
        if t.dtype == "float32":
            size = 4 * _elements(t.shape)
        elif t.dtype in FORMAT_NAMES and t.dtype != "fp32":
            size = packed_size(t.shape, p.target.format(t.dtype))
        else:
            raise CheckError(f"{what}: {t.dtype!r} is not a weight format")
        if t.nbytes != size:
            raise CheckError(f"{what}: {t.nbytes} bytes, its shape and format take {size}")
        if t.addr + t.nbytes > len(p.weights):
            raise CheckError(f"{what}: runs past the end of the weight image")
        out[wbase + t.addr] = t
    return out


def _instruction(i: isa.Instruction, p: Program, regions, weights) -> None:
    for name, enum in _ENUMS.get(type(i), {}).items():
        value = getattr(i, name)
        if value not in enum._value2member_map_:
            raise CheckError(f"field '{name}' = {value} is not a {enum.__name__}")
    for name in _AT_LEAST_ONE.get(type(i), ()):
        if getattr(i, name) < 1:
            raise CheckError(f"field '{name}' must be at least 1")
    extra: list[tuple[int, int, str]] = []  # operands the timing model does not list
    if isinstance(i, isa.MvMul):
        _mv_mul(i, weights)
        extra.append((i.bias, 4 * i.out_channels, "bias"))
    elif isinstance(i, isa.VPool) and i.mode in (isa.PoolMode.MAX, isa.PoolMode.AVG):
        _pool(i)
    elif isinstance(i, isa.VvAlu) and i.length % (i.div * i.mod):
        raise CheckError(f"length {i.length} is not a multiple of div x mod")
    elif isinstance(i, isa.VNorm):
        n = i.channels or i.cols
        extra += [(i.scale, 4 * n, "scale"), (i.bias, 4 * n, "bias")]
    elif isinstance(i, isa.VResize):
        for name in ("scale_h", "scale_w"):
            s = isa.bits_f32(getattr(i, name))
            if not (math.isfinite(s) and s > 0):
                raise CheckError(f"field '{name}' = {s} is not a positive scale")
    elif isinstance(i, isa.VPad) and i.mode == isa.PadMode.REFLECT and (
            max(i.pad_top, i.pad_bottom) >= i.height or max(i.pad_left, i.pad_right) >= i.width):
        raise CheckError("a reflect pad must be smaller than the padded extent")
    elif isinstance(i, (isa.VRd, isa.VWr)):
        _io(i, p)
    elif isinstance(i, isa.HostCall) and i.index >= len(p.host_ops):
        raise CheckError(f"host op {i.index} is not in the host table "
                         f"({len(p.host_ops)} entries)")
    if isinstance(i, isa.HostCall):
        return  # the host table's tensors were checked with the table
    w = timing.work(i, p.target, p.target.format())
    for op in w.reads:
        _inside(op.addr, op.nbytes, regions, False, "reads")
    for op in w.writes:
        _inside(op.addr, op.nbytes, regions, True, "writes")
    for addr, nbytes, what in extra:
        _inside(addr, nbytes, regions, False, what)


def _window(i: isa.MvMul | isa.VPool, steps: tuple[int, ...]) -> None:
    if min(steps) < 1:
        raise CheckError("kernel and stride must be at least 1")
    oh, ow = timing.conv_output_hw(i)
    if oh < 1 or ow < 1:
        raise CheckError(f"the window leaves an output of {oh} x {ow}")


def _pool(i: isa.VPool) -> None:
    _window(i, (i.kernel_h, i.kernel_w, i.stride_h, i.stride_w))
    if max(i.pad_top, i.pad_bottom) >= i.kernel_h or max(i.pad_left, i.pad_right) >= i.kernel_w:
        raise CheckError("pads must be smaller than the pooling window")  # as onnxruntime's
    oh, ow = timing.conv_output_hw(i)
    if i.batch * i.channels * oh * ow * i.kernel_h * i.kernel_w > MAX_WINDOW_WORK:
        raise CheckError(f"{i.kernel_h} x {i.kernel_w} windows over {oh} x {ow} outputs: "
                         f"more than {MAX_WINDOW_WORK} element reads")


def _mv_mul(i: isa.MvMul, weights: dict[int, TensorDesc]) -> None:
    if i.channels % i.groups or i.out_channels % i.groups:
        raise CheckError(f"{i.channels} channels and {i.out_channels} outputs do not split "
                         f"into {i.groups} groups")
    _window(i, (i.kernel_h, i.kernel_w, i.stride_h, i.stride_w))
    t = weights.get(i.weights)
    if t is None:
        raise CheckError(f"no weight tensor starts at {i.weights}")
    want = (i.out_channels, i.kernel_h * i.kernel_w * i.channels // i.groups)
    if tuple(t.shape) != want:
        raise CheckError(f"weight tensor '{t.name[:80]}' is {list(t.shape)}, the layer "
                         f"needs {list(want)}")


def _io(i: isa.VRd | isa.VWr, p: Program) -> None:
    slots = p.inputs if isinstance(i, isa.VRd) else p.outputs
    if i.io >= len(slots):
        raise CheckError(f"I/O slot {i.io} does not exist ({len(slots)} slots)")
    t = slots[i.io]
    addr = i.dst if isinstance(i, isa.VRd) else i.src
    if (addr, i.nbytes) != (t.addr, t.nbytes) or (
            isinstance(i, isa.VWr) and any(t.name in h.on_host for h in p.host_ops)):
        raise CheckError(f"does not move the {t.nbytes} bytes of '{t.name[:80]}' at "
                         f"{t.addr}")
