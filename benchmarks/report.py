# SPDX-License-Identifier: Apache-2.0
"""Print the README's ResNet-50 table: every format, measured in one run on this machine.

    python benchmarks/report.py [--rounds 5]

Columns: simulated latency and cycles on the default device, compile time,
functional simulation time (median, warm), onnxruntime's time for the same model
(median, same run), their ratio, and the relative L2 error and cosine similarity of
the features against the fp32 program.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from npusim.compiler import compile_model
from npusim.runtime import Session
from npusim.runtime.analysis.reference import median_seconds, onnxruntime_session
from npusim.runtime.zoo import build_resnet50
from npusim.simulator.config import load_device
from npusim.simulator.numerics import FORMAT_NAMES
from npusim.simulator.progress import shown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    model = build_resnet50(seed=0)
    feeds = {"images": np.random.default_rng(0).standard_normal((1, 3, 224, 224))
             .astype(np.float32)}
    ref = onnxruntime_session(model)
    fp32 = None
    print(f"ResNet-50 featurizer, batch 1, device {load_device(args.device).name}")
    print("| format | simulated latency (ms) | cycles | compile (s) | functional sim (ms) "
          "| onnxruntime (ms) | sim / ort | rel. L2 error vs fp32 | cosine vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for fmt in FORMAT_NAMES:
        t0 = time.perf_counter()
        prog = compile_model(model, args.device, fmt)
        t_compile = time.perf_counter() - t0
        sess = Session(prog)
        (out,) = sess.run(None, feeds)
        fp32 = out if fmt == "fp32" else fp32
        t_ort = median_seconds(lambda: ref.run(None, feeds), args.rounds)
        t_sim = median_seconds(lambda: sess.run(None, feeds), args.rounds)
        rel = np.linalg.norm(out - fp32) / np.linalg.norm(fp32)
        cos = float(out.ravel() @ fp32.ravel() / (np.linalg.norm(out) * np.linalg.norm(fp32)))
        st = sess.last_stats
        print(f"| {fmt} | {st.latency_us / 1000:.3f} | {st.cycles} | {t_compile:.2f} | "
              f"{t_sim * 1000:.0f} | {t_ort * 1000:.0f} | {t_sim / t_ort:.1f} | "
              f"{rel:.2%} | {cos:.5f} |", flush=True)


if __name__ == "__main__":
    with shown():  # progress bars on a terminal
        main()
