# SPDX-License-Identifier: Apache-2.0
"""benchmarks/npu_workloads.py on the intel-npu preset: the README's table holds."""

from __future__ import annotations

import npu_workloads
import pytest

from npusim.runtime.zoo.npu_workloads import PUBLISHED


@pytest.mark.slow
def test_the_preset_holds_against_that_npus_rtl():
    """The five GEMVs land on that RTL's cycles exactly; every other workload, the
    batch-18 MLP included, is within 12% of its RTL TOPS, and the mean error is under
    10%."""
    rows = [npu_workloads.measure(n, "intel-npu", None) for n in PUBLISHED]
    err = {r["workload"]: r["tops"] / r["rtl_tops"] - 1 for r in rows}
    for name, e in err.items():
        assert abs(e) < (0.005 if "gemv" in name else 0.12), (name, e)
    assert sum(abs(e) for e in err.values()) / len(err) < 0.10
    assert "| **mean absolute error** |" in npu_workloads.markdown(rows, "intel-npu")
