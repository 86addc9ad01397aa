# SPDX-License-Identifier: Apache-2.0
"""Load on ``npusim serve``: ResNet-50 behind TLS and a key, C clients x R requests.

    python benchmarks/serve_load.py [--clients 8] [--requests 50] [--devices 2]

Packages the seeded ResNet-50 featurizer pipeline (brainwave-s10, msfp8), starts
``npusim serve`` on loopback with a self-signed certificate, one API key and
``--devices`` simulated devices, and has each client thread score seeded JPEGs
back to back. Prints throughput, p50/p99 latency as the clients saw it, and the
mean simulated device time per request (from the server's Prometheus metrics):
the first two measure this host's simulation, the last what the accelerator
would take.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]


def _metrics(port: int) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            key = s.name + "".join(f"[{v}]" for _, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=50, help="per client")
    ap.add_argument("--devices", type=int, default=2)
    ap.add_argument("--model", default="resnet50", help="zoo name or ONNX featurizer")
    ap.add_argument("--numerics", default="msfp8")
    args = ap.parse_args()

    from serving_helpers import encoded_images, self_signed

    from npusim.runtime.serving.client import PredictionClient
    from npusim.runtime.serving.package import save_package
    from npusim.runtime.serving.pipeline import import_tensorflow
    from npusim.runtime.serving.tfstages import featurizer_pipeline

    tf = import_tensorflow()
    work = Path(tempfile.mkdtemp(prefix="serve_load-"))
    t0 = time.perf_counter()
    save_package(featurizer_pipeline(args.model, device="brainwave-s10", numerics=args.numerics),
                 work / "model.zip")
    print(f"packaged {args.model} (brainwave-s10, {args.numerics}) in "
          f"{time.perf_counter() - t0:.1f} s")
    cert, key_pem = self_signed(work)
    key = secrets.token_urlsafe(32)
    (work / "keys.txt").write_text(key + "\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "npusim.runtime.cli", "serve", str(work / "model.zip"),
         "--port", "0", "--tls-cert", str(cert), "--tls-key", str(key_pem), "--api-key-file",
         str(work / "keys.txt"), "--devices", str(args.devices), "--metrics-port", "0",
         "--workers", str(max(4, args.clients))],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        ready = server.stdout.readline().strip()
        if not ready.startswith("serving"):
            raise SystemExit(f"server did not start: {ready!r}")
        print(ready)
        port = int(ready.split(" on ")[1].split()[0].rsplit(":", 1)[1])
        metrics_port = int(ready.rsplit(":", 1)[1].rstrip(")"))
        images = encoded_images(tf, count=4, seed=0)

        def client() -> PredictionClient:
            return PredictionClient("127.0.0.1", port, use_ssl=True, access_token=key,
                                    root_certificates=cert, timeout=600)

        def warm_up(i: int) -> None:  # TF traces its functions, each device loads the program
            with client() as c:
                c.score_image(images[i % len(images)])

        warm = [threading.Thread(target=warm_up, args=(i,)) for i in range(args.devices)]
        for t in warm:
            t.start()
        for t in warm:
            t.join()
        before = _metrics(metrics_port)
        latencies: list[float] = []
        lock = threading.Lock()

        def run(i: int) -> None:
            with client() as c:
                for r in range(args.requests):
                    t = time.perf_counter()
                    c.score_image(images[(i + r) % len(images)])
                    with lock:
                        latencies.append(time.perf_counter() - t)

        threads = [threading.Thread(target=run, args=(i,)) for i in range(args.clients)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        after = _metrics(metrics_port)
    finally:
        server.terminate()
        server.wait(60)

    n = len(latencies)
    ok_key = "npusim_requests_total[OK][GRPC][Predict]"  # labels code, entrypoint, method
    ok = after[ok_key] - before.get(ok_key, 0.0)
    sim = (after["npusim_device_simulated_seconds_total"]
           - before["npusim_device_simulated_seconds_total"])
    lat = np.array(latencies) * 1e3
    print(f"{args.clients} clients x {args.requests} requests = {n} ({int(ok)} OK on the "
          f"server), {args.devices} device(s), TLS + key")
    print(f"throughput      {n / wall:.2f} requests/s ({wall:.1f} s)")
    print(f"latency         p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} "
          "ms (host simulation)")
    print(f"device time     {sim / max(ok, 1) * 1e3:.3f} ms simulated per request; device "
          f"utilization {after['npusim_device_utilization']:.0%}")


if __name__ == "__main__":
    main()
