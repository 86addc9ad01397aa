# SPDX-License-Identifier: Apache-2.0
"""Functional simulation time over onnxruntime's, per model and format, in one run.

    python benchmarks/sim_speed.py [MODEL ...] [--formats fp32,msfp16,mxint8,msfp8]
        [--device brainwave-s10] [--rounds 7] [--json FILE]

MODEL is a zoo name, ``light:NAME``, an ONNX file or a folder of them (symbolic input
sizes from the folder's ``export_results.json``, as ``benchmarks/real_graphs.py`` reads
it). With no MODEL: every zoo model (the Brainwave featurizers and the generated mobile
graphs: depthwise, squeeze-excite, grouped) and every light model ``onnx`` ships.

For each model the program is compiled for each format (ms-fp8/9 share an exponent over
the device's native dimension, 128 on ``brainwave-s10``), and the simulator and
onnxruntime (its CPU provider, all cores, graph optimizations on) run the same seeded
input one after the other, ``--rounds`` times each after a warm-up; the figure is the
best time of each (the least disturbed by other work on the machine), and the ratio is
taken between the two. Prints a markdown table with the geometric mean and the largest
ratio per format.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from npusim.compiler import CompileError, compile_model
from npusim.compiler.shapes import seeded_inputs
from npusim.runtime.analysis.bench import resolve_model
from npusim.runtime.analysis.reference import onnxruntime_session
from npusim.runtime.session import Session
from npusim.simulator.progress import shown

FORMATS = ("fp32", "msfp16", "mxint8", "msfp8")


def default_models() -> list[str]:
    from npusim.runtime.zoo import LIGHT_MODELS, MODELS

    return [*MODELS, *(f"light:{n}" for n in LIGHT_MODELS)]


def _expand(specs: list[str]) -> list[tuple[str, dict | None]]:
    """``(model spec, input shapes or None)`` for each model; a folder gives its files."""
    from real_graphs import recorded_shapes

    out = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            shapes = recorded_shapes(path)
            out += [(str(p), shapes.get(p.name)) for p in sorted(path.glob("*.onnx"))]
        else:
            out.append((spec, recorded_shapes(path.parent).get(path.name)
                        if path.suffix == ".onnx" else None))
    return out


def best_seconds(fns: list, rounds: int) -> list[float]:
    """Best wall time of each of ``fns`` over ``rounds`` interleaved calls (after one)."""
    for fn in fns:
        fn()
    best = [math.inf] * len(fns)
    for _ in range(rounds):
        for k, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def measure(spec: str, formats=FORMATS, device: str = "brainwave-s10", rounds: int = 7,
            input_shapes: dict | None = None) -> dict:
    """One row: ``{"model", "macs", "ort_ms", "<fmt>_ms", "<fmt>_ratio", ...}``."""
    name, proto = resolve_model(spec)
    row: dict = {"model": name}
    ref = onnxruntime_session(proto)
    feeds = None
    for fmt in formats:
        try:
            prog = compile_model(proto, device, numerics=fmt, input_shapes=input_shapes)
        except CompileError as exc:
            row[f"{fmt}_error"] = str(exc)
            continue
        if feeds is None:
            feeds = seeded_inputs(proto, input_shapes)
        sess = Session(prog)
        sim_s, ort_s = best_seconds([lambda: sess.run(None, feeds),
                                     lambda: ref.run(None, feeds)], rounds)
        row["macs"] = int(sess.last_stats.macs)
        row["ort_ms"] = min(row.get("ort_ms", math.inf), ort_s * 1e3)
        row[f"{fmt}_ms"] = sim_s * 1e3
        row[f"{fmt}_ratio"] = sim_s / ort_s

    return row


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def summary(rows: list[dict], formats=FORMATS) -> dict:
    """Geometric mean and largest ratio per format over the rows that ran."""
    out = {}
    for fmt in formats:
        ratios = [r[f"{fmt}_ratio"] for r in rows if f"{fmt}_ratio" in r]
        out[fmt] = {"geomean": geomean(ratios), "max": max(ratios, default=math.nan),
                    "models": len(ratios)}
    return out


def markdown(rows: list[dict], formats=FORMATS) -> str:
    head = "| model | GMAC | onnxruntime (ms) | " + " | ".join(
        f"{f} (ms) | {f} / ort" for f in formats) + " |"
    lines = [head, "|---|---:|---:|" + "---:|---:|" * len(formats)]
    for r in rows:
        cells = []
        for f in formats:
            if f"{f}_ratio" in r:
                cells += [f"{r[f'{f}_ms']:.1f}", f"{r[f'{f}_ratio']:.1f}"]
            else:
                cells += ["-", "-"]
        lines.append(f"| {r['model']} | {r.get('macs', 0) / 1e9:.2f} | "
                     f"{r.get('ort_ms', math.nan):.1f} | " + " | ".join(cells) + " |")
    s = summary(rows, formats)
    lines.append("| **geometric mean** | | | " + " | ".join(
        f" | **{s[f]['geomean']:.2f}**" for f in formats) + " |")
    lines.append("| largest | | | " + " | ".join(f" | {s[f]['max']:.1f}" for f in formats)
                 + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", help="zoo names, light:NAME, ONNX files or folders")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--device", default="brainwave-s10")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--json", help="write the rows and the summary here")
    args = ap.parse_args(argv)
    formats = tuple(f for f in args.formats.split(",") if f)
    rows = []
    for spec, shapes in _expand(args.models or default_models()):
        row = measure(spec, formats, args.device, args.rounds, shapes)
        rows.append(row)
        cells = " ".join(f"{f}={row[f'{f}_ratio']:.2f}x" if f"{f}_ratio" in row
                         else f"{f}=error" for f in formats)
        print(f"{row['model']}: ort {row.get('ort_ms', math.nan):.1f} ms  {cells}",
              file=sys.stderr, flush=True)
    print(markdown(rows, formats))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary(rows, formats),
                                               "device": args.device, "rounds": args.rounds},
                                              indent=1))
    return 0


if __name__ == "__main__":
    with shown():  # progress bars on a terminal
        np.seterr(all="ignore")
        sys.exit(main())
