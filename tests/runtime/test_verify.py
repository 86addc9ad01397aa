# SPDX-License-Identifier: Apache-2.0
"""``npusim verify``: the RTL suite run from the command, one line per test, a summary."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import npusim.rtl
from npusim.rtl.tb.runner import requires_simulator
from npusim.runtime.cli import main


@pytest.mark.rtl
@requires_simulator()
def test_verify_runs_the_kernels_and_summarizes(tmp_path, capsys):
    assert main(["verify", "-k", "bfp_acc and msfp8", "--json", str(tmp_path / "v.json")]) == 0
    out = capsys.readouterr().out
    assert "bfp_acc [msfp8] passed" in out and "passed, 0 failed" in out
    rows = json.loads((tmp_path / "v.json").read_text())
    acc = [r for r in rows if r["kernel"] == "bfp_acc"]
    assert [r["result"] for r in acc] == ["passed"] and acc[0]["runs"][0]["toplevel"] == "bfp_acc"
    assert all(r["result"] in ("passed", "skipped") for r in rows)  # the lint, if verilator


def test_verify_names_a_pattern_that_matches_nothing(capsys):
    assert main(["verify", "-k", "no_such_kernel"]) == 2
    assert "no RTL test matches -k 'no_such_kernel'" in capsys.readouterr().err


def test_the_rtl_suite_is_found_from_any_folder(tmp_path):
    """An installed ``npusim verify`` runs outside the checkout, where no top-level ``rtl``
    package is importable: the suite is found as ``npusim.rtl``."""
    code = "from npusim.runtime.analysis.verify import rtl_dir; print(rtl_dir())"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert Path(out).resolve() == Path(npusim.rtl.__file__).resolve().parent
