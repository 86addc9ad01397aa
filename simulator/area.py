# SPDX-License-Identifier: Apache-2.0
"""What a number format costs in logic: a first-order area model of the matrix unit.

A narrower format buys more multiply-adds in the same silicon; a sweep that gives every
format the same array prices the formats as if they cost the same. This model counts the
logic of the matrix unit in *adder cells* (one full adder with its carry: an FPGA's ALM
holds two, with their carry chain), from the structure of each datapath, so that
``npusim sweep`` can hold the area fixed and let a narrower format have more columns.
It is a documented first-order model, not a synthesis result: every term follows from
the formats' bit widths, and no constant is fitted to a published figure.

Per multiply-add lane of a block format with ``m`` magnitude bits per element, blocks of
``B`` elements and ``E`` exponent bits (``docs/numerics.md``):

- the mantissa product: an ``m x m`` array multiplier, ``m**2`` cells (the sign is an
  exclusive-or, the shared exponents are not multiplied per element);
- its share of the block's integer adder tree: ``B - 1`` adders per ``B`` products,
  ``2m`` bits wide at the leaves and ``2m + log2(B)`` at the root, ``2m + log2(B) / 2``
  cells per product on average;
- its share of the block's accumulation: one exponent add (``E`` cells) and one fp32 add
  (:data:`FP32_ADD_CELLS`) per block, ``(E + FP32_ADD_CELLS) / B`` cells.

An MX minifloat element (OCP MX: ``x`` exponent and ``y`` mantissa bits, a hidden bit)
multiplies its significands (``(y + 1)**2`` cells), adds its exponents (``x + 1``) and
shifts its ``2y + 2``-bit product into place over ``x + 1`` stages before the block's
fixed-point adder tree, whose width ``2y + 2 + 2**(x + 1)`` spans every product exponent:
``(y + 1)**2 + x + 1 + (2y + 2)(x + 1) + W + log2(B) / 2`` cells, plus the block share.
An fp32 lane is an fp32 multiplier (:data:`FP32_MUL_CELLS`) and adder. Each input lane of
the unit also has a converter (quantizer) from fp32: a max-exponent tree of ``E``-bit
comparisons and an ``m + 2``-bit shifter of ``min(E, 5)`` stages (the shifts beyond 31
flush to zero), ``E + (m + 2) * min(E, 5)`` cells.

Example:
    >>> from npusim.simulator.numerics import get_format
    >>> round(mac_cells(get_format("msfp16")) / mac_cells(get_format("msfp8", 128)), 1)
    6.1
"""

from __future__ import annotations

import math

from npusim.simulator.numerics import Format

FP32_ADD_CELLS = 300
"""An fp32 adder: exponent compare and 24-bit alignment shifter (about 5 x 24 cells), a
24-bit add, leading-zero count and normalizing shifter (about 5 x 24), rounding: about
300 cells."""
FP32_MUL_CELLS = 24 * 24
"""An fp32 multiplier: the 24 x 24 significand array (the exponent add and rounding are
small beside it)."""
CELLS_PER_ALM = 2
"""Full adders per adaptive logic module (the unit of the area figures)."""


def mac_cells(fmt: Format) -> float:
    """Adder cells of one multiply-add lane in ``fmt`` (see the module docstring)."""
    if fmt.is_fp32:
        return float(FP32_MUL_CELLS + FP32_ADD_CELLS)
    m, b, e = fmt.mantissa_bits, fmt.block_size, fmt.exponent_bits
    block = (e + FP32_ADD_CELLS) / b
    if fmt.is_minifloat:
        x, y = fmt.element.exponent_bits, fmt.element.mantissa_bits
        width = 2 * y + 2 + 2 ** (x + 1)
        return (y + 1) ** 2 + x + 1 + (2 * y + 2) * (x + 1) + width + math.log2(b) / 2 + block
    return m * m + 2 * m + math.log2(b) / 2 + block


def converter_cells(fmt: Format) -> float:
    """Adder cells of the converter of one input lane (none in fp32)."""
    if fmt.is_fp32:
        return 0.0
    e = fmt.exponent_bits
    return e + (fmt.mantissa_bits + 2) * min(e, 5)


def unit_alms(macs: int, input_lanes: int, fmt: Format) -> float:
    """ALMs of a matrix unit of ``macs`` lanes fed by ``input_lanes`` converters."""
    return (macs * mac_cells(fmt) + input_lanes * converter_cells(fmt)) / CELLS_PER_ALM
