# SPDX-License-Identifier: Apache-2.0
"""Every RTL kernel: its toplevel and the SystemVerilog sources it is built from.

The cocotb tests build from this list and the lint test checks the same files, so a
kernel's sources are named once.
"""

from __future__ import annotations

from pathlib import Path

RTL_DIR = Path(__file__).resolve().parents[1]

_FP32 = ("common/fp32_add.sv", "common/bfp_to_fp32.sv")

KERNELS: dict[str, tuple[str, ...]] = {
    "bfp_quantize": ("bfp_quantize/bfp_quantize.sv",),
    "bfp_dot": ("bfp_dot/bfp_dot.sv",),
    "bfp_acc": (*_FP32, "bfp_acc/bfp_acc.sv"),
    "vector_unit": ("common/fp32_add.sv", "vector_unit/vector_unit.sv"),
    "systolic_array": (*_FP32, "bfp_quantize/bfp_quantize.sv", "systolic_array/bfp_pe.sv",
                       "systolic_array/systolic_array.sv"),
}
"""toplevel -> sources relative to ``rtl/``, dependencies first."""


def sources(toplevel: str) -> list[Path]:
    return [RTL_DIR / s for s in KERNELS[toplevel]]
