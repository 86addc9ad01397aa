# SPDX-License-Identifier: Apache-2.0
"""Build and run one HDL toplevel under cocotb, one build directory per parameter set.

The pytest side of every kernel test calls :func:`run` with the HDL parameters; the
cocotb side (same file) reports how many vectors it checked through :func:`report`, and
:func:`run` fails if it checked none. ``SIM`` picks the simulator (default ``icarus``),
``WAVES=1`` dumps waves into the build directory.

Example (from a kernel's ``test_<kernel>.py``)::

    stats = run("bfp_dot", {"BLOCK": 16, "MANT": 3, "EXP_BITS": 8, "BIAS": 127}, __file__)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest

import npusim
from npusim.rtl.tb.kernels import sources

RTL_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = RTL_DIR.parent
STATS_ENV = "NPUSIM_RTL_STATS"
"""The cocotb side writes its counters (vectors checked, cycles) to this JSON file."""
VERILATOR_MIN = (5, 36)
"""cocotb 2 supports Verilator 5.036 and newer."""

RECORDS: list[dict] = []
"""Every :func:`run` of this process: toplevel, parameters, counters (``npusim verify``
reads them)."""

_SIM_EXECUTABLE = {"icarus": "iverilog", "verilator": "verilator"}


def build_root() -> Path:
    """``rtl/build`` in a source checkout; a per-user cache for an installed package."""
    if (REPO_DIR / "pyproject.toml").is_file():
        return RTL_DIR / "build"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "npusim" / "rtl"


def simulator() -> str:
    return os.environ.get("SIM", "icarus")


def waves() -> bool:
    return os.environ.get("WAVES", "0") == "1"


def missing_tools() -> str | None:
    """Why the RTL tests cannot run here, or ``None`` when they can."""
    for module in ("cocotb", "cocotb_tools"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 'cocotb>=2.0')"
    if simulator() not in _SIM_EXECUTABLE:
        return f"unknown simulator SIM={simulator()!r}; choose icarus or verilator"
    exe = _SIM_EXECUTABLE[simulator()]
    if shutil.which(exe) is None:
        return f"HDL simulator {exe!r} (SIM={simulator()}) is not on PATH"
    if simulator() == "verilator":
        version = verilator_version()
        if version < VERILATOR_MIN:
            return (f"Verilator {version[0]}.{version[1]:03d} is too old for cocotb 2 (needs "
                    f"{VERILATOR_MIN[0]}.{VERILATOR_MIN[1]:03d} or newer); use SIM=icarus, "
                    "or build Verilator from source (rtl/README.md)")
    return None


def verilator_version() -> tuple[int, int]:
    """``(major, minor)`` of the Verilator on PATH (``Verilator 5.006 2023-01-22``)."""
    out = subprocess.run(["verilator", "--version"], capture_output=True, text=True).stdout
    major, minor = out.split()[1].split(".")[:2]
    return int(major), int(minor)


def requires_simulator() -> pytest.MarkDecorator:
    """``pytest.mark.skipif`` with the reason the RTL tests cannot run, if any."""
    reason = missing_tools()
    return pytest.mark.skipif(reason is not None, reason=reason or "")


def build_dir(toplevel: str, parameters: Mapping[str, object]) -> Path:
    """``rtl/build/<toplevel>-<hash of the parameters>``; each pytest-xdist worker has its
    own, so that two workers never build into one folder."""
    key = json.dumps({"params": dict(sorted(parameters.items())), "sim": simulator(),
                      "waves": waves(), "worker": os.environ.get("PYTEST_XDIST_WORKER", "")},
                     sort_keys=True, default=str)
    return build_root() / f"{toplevel}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def run(toplevel: str, parameters: Mapping[str, object], test_file: str | Path,
        extra_env: Mapping[str, str] | None = None) -> dict:
    """Build ``toplevel`` from its sources (:mod:`npusim.rtl.tb.kernels`) with ``parameters`` and
    run the cocotb tests of ``test_file``.

    Returns the counters the cocotb side wrote with :func:`report`; raises if a cocotb
    test failed, none ran, or nothing was reported.
    """
    from cocotb_tools.check_results import get_results
    from cocotb_tools.runner import get_runner

    test_file = Path(test_file).resolve()
    # the simulator's Python gets PYTHONPATH = sys.path: make the test module and npusim
    # (npusim.simulator.numerics, npusim.rtl.tb) importable there
    for path in (str(Path(npusim.__file__).resolve().parents[1]), str(test_file.parent)):
        if path not in sys.path:
            sys.path.insert(0, path)
    out = build_dir(toplevel, parameters)
    stats_file = out / "stats.json"
    stats_file.unlink(missing_ok=True)
    runner = get_runner(simulator())
    runner.build(sources=[str(s) for s in sources(toplevel)], hdl_toplevel=toplevel,
                 parameters=dict(parameters), build_dir=out, waves=waves(),
                 timescale=("1ns", "1ps"), always=True)  # iverilog builds in well under 1 s
    results = runner.test(test_module=test_file.stem, hdl_toplevel=toplevel, build_dir=out,
                          test_dir=out, waves=waves(),
                          extra_env={**(extra_env or {}), STATS_ENV: str(stats_file)})
    tests, failed = get_results(Path(results))
    assert tests > 0 and failed == 0, f"{failed} of {tests} cocotb tests failed ({results})"
    assert stats_file.is_file(), f"the cocotb tests reported nothing ({stats_file})"
    stats = json.loads(stats_file.read_text())
    RECORDS.append({"toplevel": toplevel, "parameters": dict(parameters), "stats": stats})
    return stats


def report(name: str, **counters: int) -> None:
    """Record the counters of one cocotb test (called on the simulator side)."""
    path = Path(os.environ[STATS_ENV])
    stats = json.loads(path.read_text()) if path.is_file() else {}
    stats[name] = counters
    path.write_text(json.dumps(stats, indent=1))
