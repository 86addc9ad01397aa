# SPDX-License-Identifier: Apache-2.0
"""npusim's TOPS on the 19 workloads of the open-source Brainwave-style NPU, beside the
TOPS its RTL simulation reached and its own C++ simulator predicted.

    python benchmarks/npu_workloads.py [--device DEVICE] [--numerics FORMAT] [--json FILE]

The workloads are :mod:`npusim.runtime.zoo.npu_workloads` (``npu:NAME`` for every npusim
command). Each is compiled for ``--device`` (default ``intel-npu``, the preset that
models that NPU) and scheduled. Its cycles run from the first job of a device unit (the
input and the weights already on the device, as that NPU's testbench preloads them) to
the last result written; on a matrix-vector unit they also count the start pulse's trip
to the units (``mvu.start_cycles``), which that testbench counts. Its TOPS count the
operations as that repository does (2 x the matrix-vector products' multiply-adds) at
the device's clock. The table gives each figure's error against the RTL one. (npusim's
compiler folds a recurrent layer's first-step products away, the initial state being
zero; that NPU computes them. The operations counted are that NPU's in both columns.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from npusim.compiler import compile_model
from npusim.runtime.zoo.npu_workloads import PUBLISHED, build, counted_ops
from npusim.simulator.config import load_device
from npusim.simulator.progress import shown
from npusim.simulator.schedule import schedule


def measure(name: str, device: str, numerics: str | None) -> dict:
    cfg = load_device(device)
    if numerics:
        cfg = cfg.replace(numerics=numerics)
    program = compile_model(build(name), cfg)
    stats = schedule(program, cfg)
    busy = [s for s in stats.timeline if s.track in ("matrix", "vector", "loader")]
    cycles = max(s.end for s in busy) - min(s.start for s in busy)
    if cfg.mvu:  # its testbench counts from the start pulse, which takes this to the units
        cycles += cfg.mvu.start_cycles
    w = PUBLISHED[name]
    ops = counted_ops(w)
    tops = ops / (cycles / (cfg.clock_mhz * 1e6)) / 1e12
    return {"workload": name, "ops": ops, "cycles": cycles, "tops": tops,
            "rtl_tops": w.rtl_tops, "perf_tops": w.perf_tops}


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"| workload | ops | RTL TOPS | their simulator | error | npusim ({device}) | "
             "error |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['ops']:,} | {r['rtl_tops']:.2f} | "
                     f"{r['perf_tops']:.2f} | {100 * (r['perf_tops'] / r['rtl_tops'] - 1):+.0f}% "
                     f"| {r['tops']:.2f} | {100 * (r['tops'] / r['rtl_tops'] - 1):+.0f}% |")
    theirs = [abs(r["perf_tops"] / r["rtl_tops"] - 1) for r in rows]
    ours = [abs(r["tops"] / r["rtl_tops"] - 1) for r in rows]
    lines.append(f"| **mean absolute error** | | | | **{100 * sum(theirs) / len(rows):.0f}%** "
                 f"| | **{100 * sum(ours) / len(rows):.0f}%** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="intel-npu")
    ap.add_argument("--numerics")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = [measure(name, args.device, args.numerics) for name in PUBLISHED]
    print(markdown(rows, args.device))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    with shown():  # progress bars on a terminal
        sys.exit(main())
