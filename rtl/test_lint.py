# SPDX-License-Identifier: Apache-2.0
"""``verilator --lint-only -Wall`` over every kernel, at its default parameters and at
each format the cocotb tests build.

Linting works with the Debian Verilator (5.006) even though cocotb 2 needs a newer one
to simulate; a missing ``verilator`` skips with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from npusim.rtl.tb.kernels import KERNELS, sources  # noqa: E402
from npusim.simulator.numerics import get_format  # noqa: E402

_BFP = {"bfp_quantize", "bfp_dot", "bfp_acc", "systolic_array"}
_CASES = ([(k, None) for k in KERNELS] + [(k, "msfp8") for k in sorted(_BFP)]
          + [("bfp_quantize", "mxint8"), ("bfp_quantize", "mxfp8_e4m3")])


def _lint(toplevel: str, fmt: str | None) -> subprocess.CompletedProcess:
    args = ["verilator", "--lint-only", "-Wall", "--top-module", toplevel]
    if fmt:
        f = get_format(fmt, native_dim=8)
        args += [f"-GBLOCK={f.block_size}", f"-GMANT={f.mantissa_bits}",
                 f"-GEXP_BITS={f.exponent_bits}", f"-GBIAS={f.exponent_bias}"]
        if f.is_minifloat:  # an OCP MX minifloat element (bfp_quantize)
            el = f.element
            args += [f"-GELEM_EXP={el.exponent_bits}", f"-GELEM_MAN={el.mantissa_bits}",
                     f"-GELEM_BIAS={el.bias}", f"-GELEM_MAXC={el.max_code}"]
        if toplevel == "systolic_array":
            args += ["-GROWS=8", "-GCOLS=8"]
    return subprocess.run([*args, *map(str, sources(toplevel))], capture_output=True,
                          text=True, timeout=300)


@pytest.mark.rtl
@pytest.mark.skipif(shutil.which("verilator") is None, reason="verilator is not on PATH")
@pytest.mark.parametrize(("toplevel", "fmt"), _CASES,
                         ids=[f"{k}-{f or 'default'}" for k, f in _CASES])
def test_verilator_lint(toplevel: str, fmt: str | None) -> None:
    res = _lint(toplevel, fmt)
    assert res.returncode == 0 and "%Warning" not in res.stderr, res.stderr
