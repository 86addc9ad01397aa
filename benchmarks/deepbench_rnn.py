# SPDX-License-Identifier: Apache-2.0
"""DeepBench's recurrent inference layers at batch 1 on a device: latency and effective
TFLOPS, beside what Brainwave's ISCA 2018 paper states for them.

    python benchmarks/deepbench_rnn.py [--device DEVICE ...] [--layers NAME ...] [--json FILE]

The layers are :mod:`npusim.runtime.zoo.deepbench` (``deepbench:NAME`` for every npusim
command). The latency is the whole program's: the sequence in over the host link, every
step, the last hidden state out; the TFLOPS count the layer's gate products over every
step (2 operations per multiply-add) over that latency, as "effective" TFLOPS do.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from npusim.compiler import compile_model
from npusim.runtime.zoo.deepbench import LAYERS, build, flops
from npusim.simulator.config import load_device
from npusim.simulator.progress import shown
from npusim.simulator.schedule import schedule

ISCA_2018 = ("Fowers et al., ISCA 2018, on a Stratix 10 280 at batch 1: every DeepBench "
             "layer under 4 ms, up to 35.9 effective TFLOPS (a large GRU)")


def measure(name: str, device: str) -> dict:
    cfg = load_device(device)
    t0 = time.perf_counter()
    program = compile_model(build(name), cfg)
    compile_s = time.perf_counter() - t0
    stats = schedule(program, cfg)
    kind, hidden, steps = LAYERS[name]
    pinned = all(la.pinned for la in stats.layers if la.unit == "matrix")
    return {"layer": name, "kind": kind, "hidden": hidden, "steps": steps, "device": device,
            "latency_ms": stats.latency_us / 1000,
            "tflops": flops(name) / (stats.latency_us * 1e-6) / 1e12,
            "weights_pinned": pinned, "compile_s": compile_s}


def markdown(rows: list[dict]) -> str:
    lines = ["| layer | hidden | steps | device | latency ms | effective TFLOPS | weights |",
             "|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['kind'].upper()} | {r['hidden']} | {r['steps']} | {r['device']} | "
                     f"{r['latency_ms']:.3f} | {r['tflops']:.2f} | "
                     f"{'on chip' if r['weights_pinned'] else 'streamed'} |")
    lines.append(f"\n{ISCA_2018}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", nargs="+", default=["brainwave-s10"])
    ap.add_argument("--layers", nargs="+", choices=sorted(LAYERS), default=list(LAYERS))
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    rows = []
    for name in args.layers:
        for device in args.device:
            rows.append(measure(name, device))
            r = rows[-1]
            print(f"{name} on {device}: {r['latency_ms']:.3f} ms, {r['tflops']:.2f} TFLOPS "
                  f"(compiled in {r['compile_s']:.1f} s)", file=sys.stderr, flush=True)
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    with shown():  # progress bars on a terminal
        sys.exit(main())
