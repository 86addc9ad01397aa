# SPDX-License-Identifier: Apache-2.0
"""The minifloat element types of the OCP Microscaling (MX) v1.0 formats.

An MXFP block is one E8M0 scale ``X`` and ``block_size`` elements ``P_i`` of one of
these types; element ``i`` decodes to ``P_i * X``. :mod:`npusim.simulator.numerics`
stores an element as its exact value in **units** of the type's smallest subnormal
(an integer, see :class:`ElementType`), which keeps the block dot product an exact
integer sum. This module holds the bit layouts, the code <-> units tables and the
rounding of a magnitude onto a type's grid; ``docs/numerics.md`` states them.

Example:
    >>> E4M3.max_units, E4M3.units_of_code(0x7E) * 2.0**E4M3.unit_exponent
    (229376, 448.0)
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ElementType:
    """A sign + exponent + mantissa minifloat with subnormals (IEEE-style layout).

    A code is ``s.E.M``: ``E`` exponent bits with ``bias``, ``M`` mantissa bits. A
    magnitude code ``c = (E << M) | m`` decodes to ``m * 2**(1 - bias - M)`` when ``E = 0``
    (subnormal) and ``(2**M + m) * 2**(E - bias - M)`` otherwise, up to ``max_code``; the
    magnitude codes above ``max_code`` are infinities (``inf_code``) or NaNs.
    """

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max_code: int
    """The largest finite magnitude code (E4M3: 0x7E, since S.1111.111 is NaN)."""
    inf_code: int | None = None
    """The magnitude code of an infinity (E5M2 only)."""

    @property
    def bits(self) -> int:
        """Bits of one code: sign, exponent, mantissa."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def unit_exponent(self) -> int:
        """``log2`` of the smallest subnormal, the unit of an element's integer value."""
        return 1 - self.bias - self.mantissa_bits

    @property
    def emax(self) -> int:
        """Exponent of the largest normal value (the spec's ``emax_elem``)."""
        return (self.max_code >> self.mantissa_bits) - self.bias

    @property
    def max_units(self) -> int:
        """The largest finite magnitude in units of the smallest subnormal."""
        return self.units_of_code(self.max_code)

    @property
    def max_normal(self) -> float:
        return float(np.ldexp(float(self.max_units), self.unit_exponent))

    def units_of_code(self, code: int) -> int:
        """Units of a finite magnitude code (``0 <= code <= max_code``)."""
        if not 0 <= code <= self.max_code:
            raise ValueError(f"{self.name}: magnitude code {code:#x} is not finite")
        e, m = code >> self.mantissa_bits, code & ((1 << self.mantissa_bits) - 1)
        if e == 0:
            return m
        return ((1 << self.mantissa_bits) | m) << (e - 1)

    @functools.cached_property
    def units_table(self) -> np.ndarray:
        """int64 units of magnitude codes ``0..max_code``, increasing (a code is its index)."""
        table = np.array([self.units_of_code(c) for c in range(self.max_code + 1)], np.int64)
        table.setflags(write=False)
        return table

    def decode_table(self) -> np.ndarray:
        """float64 value of every code ``0 .. 2**bits - 1`` (sign in the top bit)."""
        mag = np.full(1 << (self.bits - 1), np.nan)
        mag[: self.max_code + 1] = np.ldexp(self.units_table.astype(np.float64),
                                            self.unit_exponent)
        if self.inf_code is not None:
            mag[self.inf_code] = np.inf
        return np.concatenate([mag, -mag])

    @property
    def q_dtype(self) -> type:
        """The narrowest signed integer holding ``±max_units``."""
        for dtype in (np.int8, np.int16, np.int32):
            if self.max_units <= np.iinfo(dtype).max:
                return dtype
        return np.int64

    def codes_of_units(self, units: np.ndarray) -> np.ndarray:
        """Magnitude codes of finite magnitudes in units (each must be on the grid)."""
        units = np.asarray(units, np.int64)
        codes = np.searchsorted(self.units_table, units)
        bad = (codes > self.max_code) | (self.units_table[np.minimum(codes, self.max_code)]
                                         != units)
        if np.any(bad):
            raise ValueError(f"{self.name}: {int(units[bad][0])} units is not a value of the "
                             "element type")
        return codes.astype(np.uint8)


E4M3 = ElementType("e4m3", 4, 3, 7, 0x7E)
"""FP8 E4M3 (OFP8): no infinities, NaN is S.1111.111, max normal 448."""
E5M2 = ElementType("e5m2", 5, 2, 15, 0x7B, inf_code=0x7C)
"""FP8 E5M2 (OFP8): IEEE-like, infinities S.11111.00, NaNs S.11111.{01,10,11}, max 57344."""
E3M2 = ElementType("e3m2", 3, 2, 3, 0x1F)
"""FP6 E3M2: no infinities or NaNs, max normal 28."""
E2M3 = ElementType("e2m3", 2, 3, 1, 0x1F)
"""FP6 E2M3: no infinities or NaNs, max normal 7.5."""
E2M1 = ElementType("e2m1", 2, 1, 1, 0x7)
"""FP4 E2M1: no infinities or NaNs, max normal 6."""


def grid_steps(units: np.ndarray, mantissa_bits: int) -> np.ndarray:
    """``k`` per magnitude (float64 units, >= 0): the grid step there is ``2**k`` units.

    Subnormals and the first normal binade (below ``2**(M + 1)`` units) step by one unit;
    each binade above doubles the step: ``k = max(floor(log2 a) - M, 0)``.
    """
    _, exp = np.frexp(units)
    return np.maximum(exp.astype(np.int64) - 1 - mantissa_bits, 0)
