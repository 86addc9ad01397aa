# SPDX-License-Identifier: Apache-2.0
"""The values of instruction fields: mode enums and the signed and fp32 field encodings.

:mod:`npusim.simulator.isa` re-exports every name here.
"""

from __future__ import annotations

import struct
from enum import IntEnum


class EncodingError(ValueError):
    """A field does not fit its width, or a word does not decode."""


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
    MAX = 4
    MIN = 5
    POW = 6


class UnaryFn(IntEnum):
    """``V_UNARY`` functions; ``alpha``/``beta`` are the attributes noted."""

    SIGMOID = 0
    TANH = 1
    LEAKY_RELU = 2  # alpha: slope
    CLIP = 3  # alpha, beta: min, max
    HARD_SIGMOID = 4  # max(0, min(1, alpha * x + beta))
    HARD_SWISH = 5
    EXP = 6
    LOG = 7
    SQRT = 8
    RECIPROCAL = 9
    NEG = 10
    ABS = 11
    ERF = 12
    GELU = 13  # alpha: 0 exact (erf), 1 tanh approximation
    POW = 14  # x ** alpha
    ELU = 15  # alpha
    SOFTPLUS = 16
    SILU = 17
    SELU = 18  # alpha, gamma = beta
    SOFTSIGN = 19
    FLOOR = 20
    CEIL = 21
    ROUND = 22  # half to even
    SIGN = 23


class ReduceMode(IntEnum):
    SUM = 0
    MEAN = 1
    MAX = 2
    MIN = 3
    SUM_SQUARE = 4
    L2 = 5


class ResizeMode(IntEnum):
    NEAREST = 0
    LINEAR = 1


class CoordMode(IntEnum):
    """ONNX Resize ``coordinate_transformation_mode``."""

    HALF_PIXEL = 0
    ASYMMETRIC = 1
    ALIGN_CORNERS = 2
    PYTORCH_HALF_PIXEL = 3
    TF_HALF_PIXEL_FOR_NN = 4


class NearestMode(IntEnum):
    """ONNX Resize ``nearest_mode``."""

    ROUND_PREFER_FLOOR = 0
    ROUND_PREFER_CEIL = 1
    FLOOR = 2
    CEIL = 3


class PadMode(IntEnum):
    CONSTANT = 0
    REFLECT = 1
    EDGE = 2
    WRAP = 3


def to_u32(v: int) -> int:
    """A signed 32-bit value (a ``V_MOVE`` stride) as the two's complement field value."""
    if not -(1 << 31) <= v < (1 << 31):
        raise EncodingError(f"value {v} doesn't fit in a signed 32-bit field")
    return v & 0xFFFFFFFF


def from_u32(u: int) -> int:
    """Inverse of :func:`to_u32`."""
    return u - (1 << 32) if u & (1 << 31) else u


def f32_bits(x: float) -> int:
    """The fp32 bit pattern of ``x`` (``alpha``, ``epsilon``, ``scale_h`` ... fields)."""
    return int(struct.unpack("<I", struct.pack("<f", x))[0])


def bits_f32(u: int) -> float:
    """Inverse of :func:`f32_bits`: the fp32 value of a 32-bit pattern."""
    return float(struct.unpack("<f", struct.pack("<I", u))[0])
