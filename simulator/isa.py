# SPDX-License-Identifier: Apache-2.0
"""The device's instruction set: coarse, Brainwave-style compound instructions.

One instruction drives a whole loop nest over the on-chip buffers (a whole
convolution, a whole pooling layer), so ResNet-50 is a few hundred instructions.
Each instruction is a frozen dataclass; ``encode`` packs it into one
``INSTRUCTION_BYTES``-byte little-endian word (opcode in the low 8 bits, then the
fields in declaration order, LSB first) and range-checks every field against the
widths derived from the device configuration in :class:`FieldWidths`.

Addresses are byte addresses in device DRAM; the program's memory map places the
weight image, the constant image and the activation arena there.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

from npusim.simulator.config import DeviceConfig
from npusim.simulator.isa_fields import (  # noqa: F401  (field values, re-exported)
    AluOp,
    CoordMode,
    EncodingError,
    NearestMode,
    PadMode,
    PoolMode,
    ReduceMode,
    ResizeMode,
    UnaryFn,
    bits_f32,
    f32_bits,
    from_u32,
    to_u32,
)

INSTRUCTION_BYTES = 64
OPCODE_BITS = 8


class Opcode(IntEnum):
    # host link
    V_RD = 0x01
    V_WR = 0x02
    # matrix unit
    MV_MUL = 0x10
    MM_MUL = 0x11
    # vector unit
    VV_ADD = 0x20
    V_RELU = 0x21
    V_POOL = 0x22
    V_SOFTMAX = 0x23
    VV_ALU = 0x24
    V_UNARY = 0x25
    V_COPY = 0x26
    V_REDUCE = 0x27
    V_NORM = 0x28
    V_RESIZE = 0x29
    V_MOVE = 0x2A
    V_PAD = 0x2B
    V_GATHER = 0x2C
    # host
    HOST_CALL = 0x30
    # control
    END_CHAIN = 0xFF


@dataclass(frozen=True)
class FieldWidths:
    """Bit widths of instruction fields, all derived from the configuration here."""

    addr: int
    """Byte address in device DRAM: log2 of its size."""
    dim: int = 16
    """Tensor extents (channels, rows, spatial size)."""
    length: int = 32
    """Element or byte counts."""
    small: int = 8
    """Kernel sizes, strides, pads, dilations, I/O slots."""
    flag: int = 1

    @classmethod
    def for_device(cls, cfg: DeviceConfig) -> FieldWidths:
        return cls(addr=math.ceil(math.log2(cfg.dram_mib * 2**20)))


def _f(kind: str, default: int | None = None):
    if default is None:
        return field(metadata={"kind": kind})
    return field(default=default, metadata={"kind": kind})


@dataclass(frozen=True)
class Instruction:
    OPCODE: ClassVar[Opcode]

    def encode(self, widths: FieldWidths) -> bytes:
        word, pos = int(self.OPCODE), OPCODE_BITS
        for f in dataclasses.fields(self):
            bits = getattr(widths, f.metadata["kind"])
            raw = getattr(self, f.name)
            try:
                value = operator.index(raw)
            except TypeError:
                raise EncodingError(f"{self.OPCODE.name} field '{f.name}': value {raw!r} "
                                    "is not an integer") from None
            if not 0 <= value < (1 << bits):
                raise EncodingError(f"{self.OPCODE.name} field '{f.name}': value {value} "
                                    f"doesn't fit in {bits} bits")
            word |= value << pos
            pos += bits
        if pos > INSTRUCTION_BYTES * 8:
            raise EncodingError(f"{self.OPCODE.name} needs {pos} bits, more than a word")
        return word.to_bytes(INSTRUCTION_BYTES, "little")

    @staticmethod
    def decode(data: bytes, widths: FieldWidths) -> Instruction:
        if len(data) != INSTRUCTION_BYTES:
            raise EncodingError(f"instruction word has {len(data)} bytes, "
                                f"expected {INSTRUCTION_BYTES}")
        word = int.from_bytes(data, "little")
        code = word & ((1 << OPCODE_BITS) - 1)
        try:
            cls = _BY_OPCODE[Opcode(code)]
        except ValueError:
            raise EncodingError(f"unknown opcode 0x{code:02x}") from None
        pos, values = OPCODE_BITS, {}
        for f in dataclasses.fields(cls):
            bits = getattr(widths, f.metadata["kind"])
            values[f.name] = (word >> pos) & ((1 << bits) - 1)
            pos += bits
        if word >> pos:
            raise EncodingError(f"{cls.OPCODE.name} word has bits set past its last field")
        return cls(**values)


@dataclass(frozen=True)
class VRd(Instruction):
    """Host -> DRAM: ``dram[dst : dst + nbytes] = host_input[io]``."""

    OPCODE: ClassVar[Opcode] = Opcode.V_RD
    io: int = _f("small")
    dst: int = _f("addr")
    nbytes: int = _f("length")


@dataclass(frozen=True)
class VWr(Instruction):
    """DRAM -> host: ``host_output[io] = dram[src : src + nbytes]``."""

    OPCODE: ClassVar[Opcode] = Opcode.V_WR
    io: int = _f("small")
    src: int = _f("addr")
    nbytes: int = _f("length")


@dataclass(frozen=True)
class MvMul(Instruction):
    """A convolution (a dense layer is the 1x1 case) with its epilogue, as one loop nest::

        for g in groups, for (kt, ot) weight tiles of [native_dim x array_cols]:
            load W tile (pinned: once at program load; streamed: DMA, double-buffered)
            for n in batch*OH*OW output pixels:            # stream activation vectors
                acc[n, ot] += bfp_dot(im2col(x)[n, kt], W[kt, ot])   # block by block
        y = relu?(acc + bias + residual?)                  # epilogue, fp32
        y = min(max(y, clip_lo), clip_hi) if clip          # ReLU6 and the like

    ``in_dil_h``/``in_dil_w`` > 1 (a transposed convolution) make im2col read a virtual
    input with ``in_dil - 1`` zeros between pixels, ``(H-1)*in_dil_h+1`` by
    ``(W-1)*in_dil_w+1``; the pads apply around it.
    """

    OPCODE: ClassVar[Opcode] = Opcode.MV_MUL
    src: int = _f("addr")
    dst: int = _f("addr")
    weights: int = _f("addr")
    bias: int = _f("addr")
    residual: int = _f("addr")
    batch: int = _f("dim")
    channels: int = _f("dim")
    height: int = _f("dim")
    width: int = _f("dim")
    out_channels: int = _f("dim")
    groups: int = _f("dim")
    kernel_h: int = _f("small")
    kernel_w: int = _f("small")
    stride_h: int = _f("small")
    stride_w: int = _f("small")
    pad_top: int = _f("small")
    pad_left: int = _f("small")
    pad_bottom: int = _f("small")
    pad_right: int = _f("small")
    dilation_h: int = _f("small")
    dilation_w: int = _f("small")
    in_dil_h: int = _f("small")
    in_dil_w: int = _f("small")
    relu: int = _f("flag")
    has_residual: int = _f("flag")
    pinned: int = _f("flag")
    clip: int = _f("flag", 0)
    clip_lo: int = _f("length", 0)
    """fp32 bits of the clip's lower bound."""
    clip_hi: int = _f("length", 0)
    """fp32 bits of the clip's upper bound."""


@dataclass(frozen=True)
class VvAdd(Instruction):
    """``for i < length: dst[i] = relu?(src0[i] + src1[i])`` (fp32)."""

    OPCODE: ClassVar[Opcode] = Opcode.VV_ADD
    src0: int = _f("addr")
    src1: int = _f("addr")
    dst: int = _f("addr")
    length: int = _f("length")
    relu: int = _f("flag")


@dataclass(frozen=True)
class VRelu(Instruction):
    """``for i < length: dst[i] = max(src[i], 0)``."""

    OPCODE: ClassVar[Opcode] = Opcode.V_RELU
    src: int = _f("addr")
    dst: int = _f("addr")
    length: int = _f("length")


@dataclass(frozen=True)
class VPool(Instruction):
    """Windowed max or average over each channel plane::

        for b, c, oy, ox: dst[b, c, oy, ox] = reduce(src[b, c, window(oy, ox)])
    """

    OPCODE: ClassVar[Opcode] = Opcode.V_POOL
    src: int = _f("addr")
    dst: int = _f("addr")
    mode: int = _f("small")
    batch: int = _f("dim")
    channels: int = _f("dim")
    height: int = _f("dim")
    width: int = _f("dim")
    kernel_h: int = _f("small")
    kernel_w: int = _f("small")
    stride_h: int = _f("small")
    stride_w: int = _f("small")
    pad_top: int = _f("small")
    pad_left: int = _f("small")
    pad_bottom: int = _f("small")
    pad_right: int = _f("small")
    ceil_mode: int = _f("flag")
    count_include_pad: int = _f("flag")


@dataclass(frozen=True)
class VSoftmax(Instruction):
    """``for r < rows: dst[r, :] = exp(src[r, :] - max) / sum(exp(...))`` over ``cols``."""

    OPCODE: ClassVar[Opcode] = Opcode.V_SOFTMAX
    src: int = _f("addr")
    dst: int = _f("addr")
    rows: int = _f("length")
    cols: int = _f("length")


@dataclass(frozen=True)
class VvAlu(Instruction):
    """Element-wise arithmetic, the second operand broadcast by ``div`` and ``mod``::

        for i < length:
            a, b = src0[i], src1[(i // div) % mod]
            dst[i] = rev ? (b <op> a) : (a <op> b)          # fp32

    ``length`` is a multiple of ``div * mod``: a scalar is ``div = mod = 1``, a same-shape
    operand ``div = 1, mod = length``, an NCHW per-channel one ``div = H*W, mod = C``, a
    trailing bias ``[D]`` ``div = 1, mod = D``. ``rev`` puts the broadcast operand first
    (``2 - x``, ``1 / x``).
    """

    OPCODE: ClassVar[Opcode] = Opcode.VV_ALU
    src0: int = _f("addr")
    src1: int = _f("addr")
    dst: int = _f("addr")
    length: int = _f("length")
    op: int = _f("small")
    rev: int = _f("flag")
    div: int = _f("length")
    mod: int = _f("length")


@dataclass(frozen=True)
class VUnary(Instruction):
    """``for i < length: dst[i] = fn(src[i]; alpha, beta)``; ``fn`` a :class:`UnaryFn`,
    alpha/beta fp32 bit patterns (LeakyRelu slope; Clip min and max; ...)."""

    OPCODE: ClassVar[Opcode] = Opcode.V_UNARY
    src: int = _f("addr")
    dst: int = _f("addr")
    length: int = _f("length")
    fn: int = _f("small")
    alpha: int = _f("length")
    beta: int = _f("length")


@dataclass(frozen=True)
class VCopy(Instruction):
    """A strided copy (one Concat operand into its place)::

        for r < rows: dst[r * dst_stride : + row_len] = src[r * src_stride : + row_len]
    """

    OPCODE: ClassVar[Opcode] = Opcode.V_COPY
    src: int = _f("addr")
    dst: int = _f("addr")
    rows: int = _f("length")
    row_len: int = _f("length")
    src_stride: int = _f("length")
    dst_stride: int = _f("length")


@dataclass(frozen=True)
class VReduce(Instruction):
    """A reduction over the middle axis of ``src`` viewed as ``[outer, mid, inner]``::

        for o < outer, i < inner: dst[o, i] = reduce(src[o, m, i] for m < mid)

    ``mode`` a :class:`ReduceMode`; sums accumulate in float64, rounded once to fp32.
    """

    OPCODE: ClassVar[Opcode] = Opcode.V_REDUCE
    src: int = _f("addr")
    dst: int = _f("addr")
    outer: int = _f("length")
    mid: int = _f("length")
    inner: int = _f("length")
    mode: int = _f("small")


@dataclass(frozen=True)
class VNorm(Instruction):
    """Layer or instance normalization of the ``rows`` rows of ``src`` ``[rows, cols]``::

        for r < rows:
            mu, var = mean(src[r, :]), mean((src[r, :] - mu) ** 2)
            for c < cols:
                y = (src[r, c] - mu) / sqrt(var + epsilon)
                k = c if channels == 0 else r % channels    # per column / per channel
                dst[r, c] = y * scale[k] + bias[k]

    ``epsilon`` is an fp32 bit pattern; ``scale`` and ``bias`` are fp32 arrays.
    """

    OPCODE: ClassVar[Opcode] = Opcode.V_NORM
    src: int = _f("addr")
    dst: int = _f("addr")
    scale: int = _f("addr")
    bias: int = _f("addr")
    rows: int = _f("length")
    cols: int = _f("length")
    channels: int = _f("length")
    epsilon: int = _f("length")


@dataclass(frozen=True)
class VResize(Instruction):
    """ONNX Resize on the last two axes of ``src`` ``[planes, in_h, in_w]``::

        for p < planes, y < out_h, x < out_w:
            sy = coord(y, scale_h, out_h, in_h); sx = coord(x, scale_w, out_w, in_w)  # fp32
            dst[p, y, x] = NEAREST: src[p, nearest(sy), nearest(sx)]
                           LINEAR:  bilinear(src[p], clamp(sy), clamp(sx))

    ``mode``, ``coord``, ``nearest`` are :class:`ResizeMode`, :class:`CoordMode`,
    :class:`NearestMode`; ``scale_h``/``scale_w`` the fp32 bit patterns of the model's
    scale factors (``out / in`` when it gives sizes).
    """

    OPCODE: ClassVar[Opcode] = Opcode.V_RESIZE
    src: int = _f("addr")
    dst: int = _f("addr")
    planes: int = _f("length")
    in_h: int = _f("length")
    in_w: int = _f("length")
    out_h: int = _f("length")
    out_w: int = _f("length")
    mode: int = _f("small")
    coord: int = _f("small")
    nearest: int = _f("small")
    scale_h: int = _f("length")
    scale_w: int = _f("length")


@dataclass(frozen=True)
class VMove(Instruction):
    """A general strided copy of fp32 elements (Transpose, Slice, Split, Expand, ...)::

        for (i0, ..., i5) < (d0, ..., d5), row-major:
            dst[flat(i0, ..., i5)] = src[i0*s0 + i1*s1 + ... + i5*s5]

    ``src`` is the element where every index is 0; ``s0``..``s5`` are signed element
    strides (32-bit two's complement, :func:`to_u32`): negative for a reversed slice, 0 to
    repeat (Expand). Unused leading dims are 1.
    """

    OPCODE: ClassVar[Opcode] = Opcode.V_MOVE
    src: int = _f("addr")
    dst: int = _f("addr")
    d0: int = _f("length")
    d1: int = _f("length")
    d2: int = _f("length")
    d3: int = _f("length")
    d4: int = _f("length")
    d5: int = _f("length")
    s0: int = _f("length")
    s1: int = _f("length")
    s2: int = _f("length")
    s3: int = _f("length")
    s4: int = _f("length")
    s5: int = _f("length")

    @property
    def dims(self) -> tuple[int, ...]:
        return (self.d0, self.d1, self.d2, self.d3, self.d4, self.d5)

    @property
    def strides(self) -> tuple[int, ...]:
        """The signed element strides."""
        return tuple(from_u32(s) for s in (self.s0, self.s1, self.s2, self.s3, self.s4,
                                           self.s5))


@dataclass(frozen=True)
class VPad(Instruction):
    """ONNX Pad on the last two axes of ``src`` ``[outer, height, width]``::

        for o, y < pad_top + height + pad_bottom, x < pad_left + width + pad_right:
            dst[o, y, x] = src[o, y - pad_top, x - pad_left]   if inside
                         = value (fp32 bits)                    CONSTANT
                         = src[o, mirror/clamp/wrap(...)]      REFLECT / EDGE / WRAP
    """

    OPCODE: ClassVar[Opcode] = Opcode.V_PAD
    src: int = _f("addr")
    dst: int = _f("addr")
    outer: int = _f("length")
    height: int = _f("length")
    width: int = _f("length")
    pad_top: int = _f("dim")
    pad_left: int = _f("dim")
    pad_bottom: int = _f("dim")
    pad_right: int = _f("dim")
    mode: int = _f("small")
    value: int = _f("length")


@dataclass(frozen=True)
class VGather(Instruction):
    """Gather rows along the middle axis of ``src`` ``[outer, axis_len, inner]``::

        for o < outer, j < count: dst[o, j, :] = src[o, table[j], :]

    ``table`` holds ``count`` little-endian int32 indices in ``[0, axis_len)``.
    """

    OPCODE: ClassVar[Opcode] = Opcode.V_GATHER
    src: int = _f("addr")
    dst: int = _f("addr")
    table: int = _f("addr")
    outer: int = _f("length")
    count: int = _f("length")
    axis_len: int = _f("length")
    inner: int = _f("length")


@dataclass(frozen=True)
class MmMul(Instruction):
    """A product of two activations (attention's Q.K^T and scores.V), batched::

        for b in batch:                                  # heads, windows, ...
            W = quantize(B[b if not b_shared else 0].T)  # B is the stationary operand,
            for (kt, nt) tiles of W [native_dim x array_cols]:   # converted on its way in
                load W tile (from DRAM: B was computed at run time)
                for m in M rows of A[b]:                 # stream A's rows
                    acc[b, m, nt] += bfp_dot(A[b, m, kt], W[kt, nt])
        dst[b] = acc[b]                                  # [batch, M, N], fp32
    """

    OPCODE: ClassVar[Opcode] = Opcode.MM_MUL
    src_a: int = _f("addr")
    src_b: int = _f("addr")
    dst: int = _f("addr")
    batch: int = _f("length")
    m: int = _f("length")
    k: int = _f("length")
    n: int = _f("length")
    b_shared: int = _f("flag")


@dataclass(frozen=True)
class HostCall(Instruction):
    """Run host op ``index`` of the program's host section (onnxruntime on the CPU)::

        h = host_ops[index]                        # one op, or a run of them, as one model
        inputs  = [host_mem[d] if d in h.on_host else dram[d.addr : d.addr + d.nbytes]
                   for d in h.inputs]                                            # to host
        outputs = onnx_model(h.model)(inputs)
        for d, y in zip(h.outputs, outputs):
            host_mem[d] = y if d in h.on_host else (dram[d.addr ...] = y)        # to device
    """

    OPCODE: ClassVar[Opcode] = Opcode.HOST_CALL
    index: int = _f("dim")


@dataclass(frozen=True)
class EndChain(Instruction):
    """End of the program: results are ready for the host."""

    OPCODE: ClassVar[Opcode] = Opcode.END_CHAIN


_BY_OPCODE: dict[Opcode, type[Instruction]] = {
    cls.OPCODE: cls for cls in (VRd, VWr, MvMul, MmMul, VvAdd, VRelu, VPool, VSoftmax, VvAlu,
                                VUnary, VCopy, VReduce, VNorm, VResize, VMove, VPad, VGather,
                                HostCall, EndChain)}
INSTRUCTIONS = tuple(_BY_OPCODE.values())
