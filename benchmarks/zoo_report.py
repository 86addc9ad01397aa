# SPDX-License-Identifier: Apache-2.0
"""Print the README's zoo table: every featurizer in fp32 and ms-fp8, one process each.

    python benchmarks/zoo_report.py [--device brainwave-s10] [--formats fp32 msfp8]

Each model and format runs in its own process so that its peak memory (max RSS,
model building and onnxruntime included) is its own. Columns: compile time,
functional simulation time (warm, median of 3), onnxruntime's time for the same
model in the same process, simulated latency, ops placed on the host, peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def measure(name: str, fmt: str, device: str | None) -> dict:
    import numpy as np

    from npusim.compiler import compile_model
    from npusim.runtime import Session
    from npusim.runtime.analysis.compare import default_inputs
    from npusim.runtime.analysis.reference import median_seconds, onnxruntime_session
    from npusim.runtime.zoo import MODELS

    model = MODELS[name](seed=0)
    feeds = default_inputs(model)
    t0 = time.perf_counter()
    prog = compile_model(model, device, fmt)
    t_compile = time.perf_counter() - t0
    sess = Session(prog)

    t_sim = median_seconds(lambda: sess.run(None, feeds), rounds=3)
    ref = onnxruntime_session(model)
    t_ort = median_seconds(lambda: ref.run(None, feeds), rounds=3)
    outs = sess.run(None, feeds)
    assert all(np.isfinite(o).all() for o in outs)
    host = sorted({r["op"] for r in prog.metadata["placement"] if r["where"] == "host"})
    return {"model": name, "numerics": fmt, "compile_s": t_compile, "sim_s": t_sim,
            "ort_s": t_ort, "latency_ms": sess.last_stats.latency_us / 1000,
            "weights_mib": len(prog.weights) / 2**20, "host_ops": host,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--formats", nargs="+", default=["fp32", "msfp8"])
    ap.add_argument("--models", nargs="+",
                    default=["resnet50", "resnet152", "vgg16", "densenet121", "ssd_vgg"])
    ap.add_argument("--one", nargs=2, metavar=("MODEL", "FORMAT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(measure(*args.one, args.device)))
        return
    print("| model | format | compile (s) | functional sim (ms) | onnxruntime (ms) "
          "| simulated latency (ms) | weights (MiB) | on the host | peak memory (MiB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for fmt in args.formats:
            cmd = [sys.executable, __file__, "--one", name, fmt]
            if args.device:
                cmd += ["--device", args.device]
            r = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                          text=True).stdout.strip().splitlines()[-1])
            print(f"| {name} | {fmt} | {r['compile_s']:.1f} | {r['sim_s'] * 1e3:.0f} | "
                  f"{r['ort_s'] * 1e3:.0f} | {r['latency_ms']:.3f} | {r['weights_mib']:.1f} | "
                  f"{', '.join(r['host_ops']) or '–'} | {r['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
