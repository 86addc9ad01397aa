# SPDX-License-Identifier: Apache-2.0
"""``benchmarks/kernel_ab.py`` switches the kernel it names off and back on: the layers
run another way (fp32 sums in another order; the same maxima) and the switch is undone
afterwards."""

from __future__ import annotations

import kernel_ab
import pytest

from npusim.simulator import _fma, _fma_rows, gemm


@pytest.mark.skipif(not _fma.AVAILABLE, reason="no AVX-512 here")
@pytest.mark.parametrize(("model", "kernel"), [("mobilenet_v3_small", "depthwise-rows"),
                                               ("light:squeezenet", "maxpool-rows"),
                                               ("resnext26_32x4d", "grouped")])
def test_kernel_ab_times_both_ways(model: str, kernel: str, capsys, monkeypatch) -> None:
    calls = []
    target = {"depthwise-rows": (_fma_rows, "depthwise"),
              "maxpool-rows": (_fma_rows, "maxpool"),
              "grouped": (gemm, "_conv_grouped_fma")}[kernel]
    real = getattr(*target)
    monkeypatch.setattr(*target, lambda *a, **k: calls.append(1) or real(*a, **k))
    assert kernel_ab.main([model, "--kernel", kernel, "--rounds", "1"]) == 0
    line = capsys.readouterr().out
    assert f"{model} fp32 {kernel}: on " in line and "off / on" in line
    diff = float(line.rsplit("at most ", 1)[1])
    if kernel == "maxpool-rows":
        assert diff == 0  # the max is exact whichever kernel takes it
    else:
        assert 0 < diff < 1e-3  # off: another order of fp32 sums, the same model
    assert calls  # on: the kernel ran
    for module, name, value, _ in kernel_ab._REAL.values():  # every switch back on
        assert getattr(module, name) == value
