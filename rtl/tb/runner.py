# SPDX-License-Identifier: Apache-2.0
"""Build and run one HDL toplevel under cocotb, one build directory per parameter set.

The pytest side of every kernel test calls :func:`run` with the HDL parameters; the
cocotb side (same file) reports how many vectors it checked through :func:`report`, and
:func:`run` fails if it checked none. ``SIM`` picks the simulator (default ``icarus``),
``WAVES=1`` dumps waves into the build directory.

Example (from a kernel's ``test_<kernel>.py``)::

    stats = run("bfp_dot", [HERE / "bfp_dot.sv"],
                {"BLOCK": 16, "MANT": 3, "EXP_BITS": 8, "BIAS": 127}, __file__)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

RTL_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = RTL_DIR.parent
BUILD_DIR = RTL_DIR / "build"
STATS_ENV = "NPUSIM_RTL_STATS"
"""The cocotb side writes its counters (vectors checked, cycles) to this JSON file."""

_SIM_EXECUTABLE = {"icarus": "iverilog", "verilator": "verilator"}


def simulator() -> str:
    return os.environ.get("SIM", "icarus")


def waves() -> bool:
    return os.environ.get("WAVES", "0") == "1"


def missing_tools() -> str | None:
    """Why the RTL tests cannot run here, or ``None`` when they can."""
    for module in ("cocotb", "cocotb_tools"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'cocotb>=2.0')"
    exe = _SIM_EXECUTABLE.get(simulator(), simulator())
    if shutil.which(exe) is None:
        return f"HDL simulator {exe!r} (SIM={simulator()}) is not on PATH"
    return None


def requires_simulator() -> pytest.MarkDecorator:
    """``pytest.mark.skipif`` with the reason the RTL tests cannot run, if any."""
    reason = missing_tools()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def build_dir(toplevel: str, parameters: Mapping[str, object]) -> Path:
    """``rtl/build/<toplevel>-<hash of the parameters>``."""
    key = json.dumps({"params": dict(sorted(parameters.items())), "sim": simulator(),
                      "waves": waves()}, sort_keys=True, default=str)
    return BUILD_DIR / f"{toplevel}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def run(toplevel: str, sources: Sequence[Path], parameters: Mapping[str, object],
        test_file: str | Path, extra_env: Mapping[str, str] | None = None) -> dict:
    """Build ``toplevel`` with ``parameters`` and run the cocotb tests of ``test_file``.

    Returns the counters the cocotb side wrote with :func:`report`; raises if a cocotb
    test failed, none ran, or nothing was reported.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    test_file = Path(test_file).resolve()
    # the simulator's Python gets PYTHONPATH = sys.path: make the test module and the
    # repository (simulator.numerics, rtl.tb) importable there
    for path in (str(REPO_DIR), str(test_file.parent)):
        if path not in sys.path:
            sys.path.insert(0, path)
    out = build_dir(toplevel, parameters)
    stats_file = out / "stats.json"
    stats_file.unlink(missing_ok=True)
    runner = get_runner(simulator())
    runner.build(sources=[str(s) for s in sources], hdl_toplevel=toplevel,
                 parameters=dict(parameters), build_dir=out, waves=waves(),
                 timescale=("1ns", "1ps"), always=True)  # iverilog builds in well under 1 s
    results = runner.test(test_module=test_file.stem, hdl_toplevel=toplevel, build_dir=out,
                          test_dir=out, waves=waves(),
                          extra_env={**(extra_env or {}), STATS_ENV: str(stats_file)})
    tests, failed = get_results(Path(results))
    assert tests > 0 and failed == 0, f"{failed} of {tests} cocotb tests failed ({results})"
    assert stats_file.is_file(), f"the cocotb tests reported nothing ({stats_file})"
    return json.loads(stats_file.read_text())


def report(name: str, **counters: int) -> None:
    """Record the counters of one cocotb test (called on the simulator side)."""
    path = Path(os.environ[STATS_ENV])
    stats = json.loads(path.read_text()) if path.is_file() else {}
    stats[name] = counters
    path.write_text(json.dumps(stats, indent=1))
