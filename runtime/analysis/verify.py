# SPDX-License-Identifier: Apache-2.0
"""``npusim verify``: run the RTL kernels' cocotb suite and summarise it.

Each kernel test builds its SystemVerilog under the chosen HDL simulator, checks every
output against :mod:`npusim.simulator.numerics` bit for bit, and reports how many vectors it
checked; the systolic array's tests also report the cycles the RTL took for GEMM tiles
next to what :mod:`npusim.simulator.timing` predicts. This module runs that suite through
pytest, prints one progress line per parameter set, and a summary table.

Example:
    >>> from npusim.runtime.analysis.verify import verify                 # doctest: +SKIP
    >>> rows = verify(sim="icarus", pattern="bfp_dot")     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import npusim
from npusim.simulator.progress import task

SIMULATORS = ("icarus", "verilator")


class VerifyError(RuntimeError):
    """The RTL suite cannot run here (a missing tool, an unknown simulator)."""


def rtl_dir() -> Path:
    spec = importlib.util.find_spec("npusim.rtl")
    if spec is None or not spec.submodule_search_locations:
        raise VerifyError("the rtl package is missing from this installation")
    return Path(list(spec.submodule_search_locations)[0])


class _Collector:
    """A pytest plugin: the counters each test's runs reported, and its outcome."""

    def __init__(self, progress: Callable[[str], None]) -> None:
        self.progress = progress
        self.rows: list[dict] = []
        self.total = 0
        self._first: dict[str, int] = {}
        self._started: dict[str, float] = {}
        self._bar = None
        self._stack = contextlib.ExitStack()

    def pytest_configure(self, config) -> None:
        config.addinivalue_line("markers", "rtl: needs an HDL simulator")

    def pytest_collection_finish(self, session) -> None:
        self.total = len(session.items)
        # a build and run can take most of a minute: on a terminal, a bar says which
        self._bar = self._stack.enter_context(task("verify", total=self.total, unit="test"))

    def pytest_sessionfinish(self, session) -> None:
        self._stack.close()

    def pytest_runtest_setup(self, item) -> None:
        from npusim.rtl.tb.runner import RECORDS

        self._started[item.nodeid] = time.perf_counter()
        self._first[item.nodeid] = len(RECORDS)  # the test's own runs come after
        if self._bar is not None:
            self._bar.note(item.name)

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or (report.when == "setup" and not report.passed):
            from npusim.rtl.tb.runner import RECORDS

            records = RECORDS[self._first.get(report.nodeid, len(RECORDS)):]
            kernel = records[0]["toplevel"] if records else report.nodeid.split("::")[0]
            params = report.nodeid.split("[", 1)[1].rstrip("]") if "[" in report.nodeid else ""
            now = time.perf_counter()  # a test skipped before it started took no time
            seconds = now - self._started.get(report.nodeid, now)
            reason = ""
            if report.skipped:
                reason = str(report.longrepr[2]) if isinstance(report.longrepr, tuple) else ""
            elif report.failed:
                reason = (report.longreprtext.strip().splitlines() or [""])[-1]
            row = {"test": report.nodeid, "kernel": Path(kernel).stem.removeprefix("test_"),
                   "params": params, "result": report.outcome, "seconds": round(seconds, 1),
                   "reason": reason, "runs": records}
            self.rows.append(row)
            if self._bar is not None:
                self._bar.update()
            self.progress(f"[{len(self.rows)}/{self.total}] {row['kernel']} [{params}] "
                          f"{report.outcome} in {seconds:.1f} s"
                          + (f": {reason}" if reason else ""))


def verify(sim: str | None = None, pattern: str | None = None,
           progress: Callable[[str], None] = print) -> list[dict]:
    """Run the RTL suite (``sim`` overrides ``SIM``; ``pattern`` is pytest's ``-k``)."""
    if importlib.util.find_spec("pytest") is None:
        raise VerifyError("npusim verify needs pytest and cocotb: pip install 'npusim[test]'")
    import pytest

    if sim is not None:
        if sim not in SIMULATORS:
            raise VerifyError(f"unknown simulator {sim!r}; choose {' or '.join(SIMULATORS)}")
        os.environ["SIM"] = sim
    from npusim.rtl.tb.runner import missing_tools

    reason = missing_tools()
    if reason:
        raise VerifyError(f"cannot run the RTL suite: {reason}")
    root = rtl_dir()
    collector = _Collector(progress)
    args = [str(root), "-m", "rtl", "-p", "no:cacheprovider", "-p", "no:terminal",
            "-o", "addopts=", "-p", "no:xdist", "-p", "no:benchmark",
            "-W", "ignore::DeprecationWarning"]
    if pattern:
        args += ["-k", pattern]
    home = str(Path(npusim.__file__).resolve().parents[1])  # where npusim is imported from
    if home not in sys.path:
        sys.path.insert(0, home)
    code = pytest.main(args, plugins=[collector])
    if code == pytest.ExitCode.NO_TESTS_COLLECTED or not collector.rows:
        raise VerifyError(f"no RTL test matches -k {pattern!r}" if pattern
                          else "no RTL tests were collected")
    if code not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
        raise VerifyError(f"the RTL suite did not run (pytest exit {int(code)})")
    return collector.rows


def _cycles(counters: dict) -> str:
    if "rtl_cycles" not in counters:
        return ""
    rtl, model = counters["rtl_cycles"], counters.get("model_cycles")
    if not model:
        return f"{rtl}"
    return f"{rtl} vs {model} ({100.0 * (rtl - model) / model:+.1f}%)"


def summary_rows(rows: list[dict]) -> list[dict]:
    """One line per test, and one per counter set that carries cycles."""
    out = []
    for row in rows:
        counters = [c for run in row["runs"] for c in run["stats"].items()]
        vectors = sum(int(c.get("vectors", 0)) for _, c in counters)
        out.append({"kernel": row["kernel"], "params": row["params"],
                    "vectors": vectors if row["runs"] else "", "result": row["result"],
                    "cycles": ""})
        for name, c in counters:
            if "rtl_cycles" in c:
                if {"n", "k", "o"} <= set(c):
                    name = f"GEMM {c['n']}x{c['k']}x{c['o']}"
                out.append({"kernel": "", "params": f"  {name}", "vectors": c.get("vectors", ""),
                            "result": "", "cycles": _cycles(c)})
    return out


def format_summary(rows: list[dict]) -> str:
    table = summary_rows(rows)
    head = {"kernel": "kernel", "params": "parameters", "vectors": "vectors",
            "result": "result", "cycles": "RTL cycles vs model"}
    keys = list(head)
    widths = {k: max(len(str(r[k])) for r in [head, *table]) for k in keys}
    lines = ["  ".join(str(head[k]).ljust(widths[k]) for k in keys).rstrip()]
    lines.append("  ".join("-" * widths[k] for k in keys))
    lines += ["  ".join(str(r[k]).ljust(widths[k]) for k in keys).rstrip() for r in table]
    counts = {o: sum(r["result"] == o for r in rows) for o in ("passed", "failed", "skipped")}
    lines.append(f"{counts['passed']} passed, {counts['failed']} failed, "
                 f"{counts['skipped']} skipped")
    return "\n".join(lines)
