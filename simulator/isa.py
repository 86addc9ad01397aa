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

from simulator.config import DeviceConfig

INSTRUCTION_BYTES = 64
OPCODE_BITS = 8


class Opcode(IntEnum):
    # host link
    V_RD = 0x01
    V_WR = 0x02
    # matrix unit
    MV_MUL = 0x10
    # vector unit
    VV_ADD = 0x20
    V_RELU = 0x21
    V_POOL = 0x22
    V_SOFTMAX = 0x23
    VV_ALU = 0x24
    V_UNARY = 0x25
    V_COPY = 0x26
    # host
    HOST_CALL = 0x30
    # control
    END_CHAIN = 0xFF


class PoolMode(IntEnum):
    MAX = 0
    AVG = 1
    GLOBAL_AVG = 2
    GLOBAL_MAX = 3


class AluOp(IntEnum):
    ADD = 0
    SUB = 1
    MUL = 2
    DIV = 3


class Broadcast(IntEnum):
    """How ``VV_ALU``'s second operand spreads over the first."""

    NONE = 0
    CHANNEL = 1
    """one value per channel of an NCHW (or NC) tensor"""
    SCALAR = 2


class UnaryFn(IntEnum):
    SIGMOID = 0
    TANH = 1
    LEAKY_RELU = 2
    CLIP = 3


class EncodingError(ValueError):
    """A field does not fit its width, or a word does not decode."""


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


def _f(kind: str):
    return field(metadata={"kind": kind})


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
    relu: int = _f("flag")
    has_residual: int = _f("flag")
    pinned: int = _f("flag")


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
    """Element-wise arithmetic, the second operand broadcast per ``bcast``::

        for i < length: dst[i] = src0[i] <op> src1[i]                 # NONE
                        dst[i] = src0[i] <op> src1[(i // plane) % channels]   # CHANNEL
                        dst[i] = src0[i] <op> src1[0]                 # SCALAR
    """

    OPCODE: ClassVar[Opcode] = Opcode.VV_ALU
    src0: int = _f("addr")
    src1: int = _f("addr")
    dst: int = _f("addr")
    length: int = _f("length")
    op: int = _f("small")
    bcast: int = _f("small")
    channels: int = _f("length")
    plane: int = _f("length")


@dataclass(frozen=True)
class VUnary(Instruction):
    """``for i < length: dst[i] = fn(src[i]; alpha, beta)``; alpha/beta are fp32 bit patterns
    (LeakyRelu slope; Clip min and max)."""

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
class HostCall(Instruction):
    """Run host op ``index`` of the program's host section (onnxruntime on the CPU)::

        inputs  = [dram[d.addr : d.addr + d.nbytes] for d in host_ops[index].inputs]   # to host
        outputs = onnx_model(host_ops[index].model)(inputs)
        dram[host_ops[index].output.addr ...] = outputs                                  # to device
    """

    OPCODE: ClassVar[Opcode] = Opcode.HOST_CALL
    index: int = _f("dim")


@dataclass(frozen=True)
class EndChain(Instruction):
    """End of the program: results are ready for the host."""

    OPCODE: ClassVar[Opcode] = Opcode.END_CHAIN


_BY_OPCODE: dict[Opcode, type[Instruction]] = {
    cls.OPCODE: cls for cls in (VRd, VWr, MvMul, VvAdd, VRelu, VPool, VSoftmax, VvAlu, VUnary,
                                VCopy, HostCall, EndChain)}
INSTRUCTIONS = tuple(_BY_OPCODE.values())
