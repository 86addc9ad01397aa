# SPDX-License-Identifier: Apache-2.0
"""``benchmarks/layer_speed.py`` builds its one-layer graphs, runs them on the simulator
and onnxruntime and prints a row per format."""

from __future__ import annotations

import layer_speed


def test_layer_speed_prints_a_row_per_format(capsys) -> None:
    names = ["1x1 144->32 56x56", "LayerNorm 3136x96"]
    assert layer_speed.main(["--rounds", "1", "--only", *names]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(names)  # the header and one fp32 row each
    for line, name in zip(rows[1:], names):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == name and cells[1] == "fp32"
        assert float(cells[2]) > 0 and float(cells[3]) > 0 and float(cells[4]) > 0
