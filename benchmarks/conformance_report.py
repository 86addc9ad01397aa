# SPDX-License-Identifier: Apache-2.0
"""Print npusim's ONNX backend conformance: a Markdown table per op, then every skip.

    python benchmarks/conformance_report.py

The selection, the skips and their reasons are those of
``tests/runtime/test_backend_conformance.py``. Each case runs directly through
:class:`npusim.runtime.backend.NpusimBackend` with the onnx test runner's comparison and
tolerances. Skipped cases run too: the list says how each one fails today, and
flags a skip that has gone stale (the case passes). "runs on" says where the
compiler placed the op in the cases that passed. The exit status is 1 if a case
that is not skipped fails.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from onnx.backend.test.runner import Runner

from npusim.runtime.backend import NpusimBackend
from npusim.simulator.progress import shown, task

TEST_FILE = Path(__file__).resolve().parents[1] / "tests/runtime/test_backend_conformance.py"


@dataclass(frozen=True)
class Outcome:
    case: str
    op: str
    status: str
    """``passed``, ``failed`` or ``skipped``."""
    error: str = ""
    """How the case failed (for a skipped case too), or "" if it passed."""
    where: frozenset[str] = frozenset()
    """Where the op ran: ``device``, ``host``, ``removed``."""
    reason: str = ""


def load_selection() -> ModuleType:
    spec = importlib.util.spec_from_file_location("test_backend_conformance", TEST_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if isinstance(exc, AssertionError) and len(lines) > 1:  # numpy: tolerance, then counts
        return f"AssertionError: {lines[0]} ({lines[1]})"
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:200]


def run_case(t, op: str) -> tuple[str, frozenset[str]]:
    """Run one node test like the onnx runner does; ``(error or "", placement of op)``."""
    where: set[str] = set()
    try:
        rep = NpusimBackend.prepare(t.model, "CPU")
        for inputs, refs in t.data_sets:
            outputs = rep.run([np.asarray(i) for i in inputs])
            Runner.assert_similar_outputs([np.asarray(r) for r in refs], outputs,
                                          t.rtol, t.atol)
        for program in rep.programs:
            rows = program.metadata["placement"]
            # an _expanded case has no node of the op: report its function body's nodes
            where |= {r["where"] for r in rows if r["op"] == op} \
                or {r["where"] for r in rows if r["where"] in ("device", "host")}
    except Exception as exc:  # report every failure, whatever raised it
        return _first_line(exc), frozenset()
    return "", frozenset(where)


def run_matrix_case(sel: ModuleType, case: str, op: str) -> tuple[str, frozenset[str]]:
    try:
        rows = sel.run_matrix_case(case)
    except Exception as exc:
        return _first_line(exc), frozenset()
    return "", frozenset(r["where"] for r in rows if r["op"] == op)


def outcome(case: str, op: str, error: str, where: frozenset[str], reason: str | None
            ) -> Outcome:
    if reason is not None:
        return Outcome(case, op, "skipped", error, where, reason)
    return Outcome(case, op, "failed" if error else "passed", error, where)


def table(title: str, outcomes: list[Outcome], ops: tuple[str, ...]) -> list[str]:
    by_op: dict[str, list[Outcome]] = defaultdict(list)
    for o in outcomes:
        by_op[o.op].append(o)
    lines = [f"### {title}", "", "| op | cases | passed | skipped | failed | runs on |",
             "|---|---:|---:|---:|---:|---|"]
    total: Counter = Counter()
    for op in ops:
        if op not in by_op:
            continue
        count = Counter(o.status for o in by_op[op])
        total.update(count)
        where = sorted(set().union(*(o.where for o in by_op[op] if o.status == "passed")))
        lines.append(f"| {op} | {len(by_op[op])} | {count['passed']} | {count['skipped']} | "
                     f"{count['failed']} | {', '.join(where) or '–'} |")
    lines.append(f"| **total** | **{len(outcomes)}** | **{total['passed']}** | "
                 f"**{total['skipped']}** | **{total['failed']}** | |")
    return lines


def listing(title: str, outcomes: list[Outcome], status: str) -> list[str]:
    chosen = [o for o in outcomes if o.status == status]
    if not chosen:
        return []
    lines = [f"### {title} ({len(chosen)})", ""]
    for o in chosen:
        if status == "skipped":
            seen = f"observed: {o.error}" if o.error else "**stale skip: the case passes now**"
            lines.append(f"- `{o.case}` ({o.op}): {o.reason}. *{seen}*")
        else:
            lines.append(f"- `{o.case}` ({o.op}): {o.error}")
    return lines + [""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.parse_args()
    t0 = time.perf_counter()
    sel = load_selection()
    cases, ops = sel.node_cases(), sel.OPS
    loaded = time.perf_counter()

    main_outcomes = []
    with task("node tests", total=len(sel.case_ops()), unit="case") as progress:
        for case, op in sel.case_ops().items():
            error, where = run_case(cases[case], op)
            main_outcomes.append(outcome(case, op, error, where, sel.skip_reason(case)))
            progress.update()
    matrix_outcomes = []
    with task("matrix unit", total=len(sel.matrix_cases()), unit="case") as progress:
        for case in sel.matrix_cases():
            op = sel.case_ops()[case]
            error, where = run_matrix_case(sel, case, op)
            if not error and where != {"device"}:
                error = f"ran on {', '.join(sorted(where))}, not on the device"
            matrix_outcomes.append(outcome(case, op, error, where,
                                           sel.skip_reason(case, sel.MATRIX_SKIPS)))
            progress.update()
    done = time.perf_counter()

    lines = ["## npusim ONNX backend conformance (fp32, default device)", ""]
    lines += table("onnx node tests", main_outcomes, ops) + [""]
    lines += table("same cases with the weights frozen as initializers (matrix unit)",
                   matrix_outcomes, sel.MATRIX_OPS) + [""]
    lines += listing("Failed: onnx node tests", main_outcomes, "failed")
    lines += listing("Failed: matrix unit", matrix_outcomes, "failed")
    lines += listing("Skipped: onnx node tests", main_outcomes, "skipped")
    lines += listing("Skipped: matrix unit", matrix_outcomes, "skipped")
    lines.append(f"Loading the node cases took {loaded - t0:.1f} s; running "
                 f"{len(main_outcomes) + len(matrix_outcomes)} cases (skipped ones included) "
                 f"took {done - loaded:.1f} s.")
    print("\n".join(lines))
    failed = any(o.status == "failed" for o in main_outcomes + matrix_outcomes)
    return 1 if failed else 0


if __name__ == "__main__":
    with shown():  # progress bars on a terminal
        sys.exit(main())
