# SPDX-License-Identifier: Apache-2.0
"""The README's table of real exporter graphs: placement, latency and fp32 agreement.

    python benchmarks/real_graphs.py MODEL.onnx|DIR ... [--input-shape NAME=1x3x224x224]
        [--device brainwave-s10] [--json FILE] [--latency-only]

For each model (a folder means every ``.onnx`` in it): compile for the device in fp32,
run it on the simulated device and compare with onnxruntime on the same seeded input
(max abs error / max abs value), beside onnxruntime compared with itself with its graph
optimizations off (how far fp32 moves with the order of the arithmetic alone); compile
and run it in msfp16; compile it in the
device's own format for the simulated latency. Prints one markdown row per model as it
goes. Symbolic input dimensions take ``--input-shape``, or the shapes recorded in the
folder's ``export_results.json`` (written by ``benchmarks/export_torchvision.py``).
``--latency-only`` compiles each model in the device's format and prints its simulated
latency alone (seconds a model, where the whole row takes minutes): what a change to
the timing model moves.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx

from npusim.compiler import CompileError, compile_full
from npusim.compiler.shapes import seeded_inputs
from npusim.runtime.analysis.reference import onnxruntime_session
from npusim.runtime.session import Session
from npusim.simulator.progress import shown


def recorded_shapes(folder: Path) -> dict[str, dict[str, tuple[int, ...]]]:
    """Input shapes by model file name from an ``export_results.json`` in ``folder``."""
    path = folder / "export_results.json"
    if not path.exists():
        return {}
    models = json.loads(path.read_text()).get("models", {})
    return {Path(m["path"]).name: dict(zip(m["input_names"],
                                           (tuple(s) for s in m["input_shapes"]), strict=True))
            for m in models.values() if m.get("status") == "ok"}


def agreement(ref: list, got: list) -> float:
    """Largest max-abs-error / max-abs-value over the float outputs (inf on a mismatch)."""
    worst = 0.0
    for r, g in zip(ref, got, strict=True):
        if not isinstance(r, np.ndarray):
            worst = max(worst, 0.0 if r == g else np.inf)
        elif r.shape != np.shape(g):
            return np.inf
        elif r.dtype.kind == "f" and r.size:
            err = float(np.max(np.abs(r - g)) / max(float(np.max(np.abs(r))), 1e-30))
            worst = max(worst, err)
        elif not np.array_equal(r, g):
            return np.inf
    return worst


def _open(path: Path, shapes: dict[str, tuple[int, ...]]) -> tuple[onnx.ModelProto, dict]:
    """The model and the recorded shapes of its inputs."""
    model = onnx.load(str(path))
    return model, {k: v for k, v in shapes.items() if k in {i.name for i in model.graph.input}}


def measure(path: Path, shapes: dict[str, tuple[int, ...]], device: str) -> dict:
    model, given = _open(path, shapes)
    feeds = seeded_inputs(model, given)
    t0 = time.perf_counter()
    fp32 = compile_full(model, device, "fp32", input_shapes=given or None)
    compile_s = time.perf_counter() - t0
    ref = onnxruntime_session(model).run(None, feeds)
    plain = onnxruntime_session(model, optimize=False).run(None, feeds)
    got = Session(fp32.program).run(None, feeds)
    msfp16 = compile_full(model, device, "msfp16", input_shapes=given or None)
    Session(msfp16.program).run(None, feeds)
    native = compile_full(model, device, input_shapes=given or None)
    s = native.program.metadata["summary"]
    return {"model": path.stem, "folder": path.parent.name, **s,
            "latency_ms": Session(native.program).device.stats.latency_us / 1e3,
            "numerics": native.program.numerics, "fp32_error": agreement(ref, got),
            "onnxruntime_spread": agreement(ref, plain),
            "compile_s": compile_s,
            "host_ops": sorted({r["op"] for r in native.program.metadata["placement"]
                                if r["where"] == "host"})}


def latency(path: Path, shapes: dict[str, tuple[int, ...]], device: str) -> dict:
    """The simulated latency alone, in the device's own format."""
    model, given = _open(path, shapes)
    native = compile_full(model, device, input_shapes=given or None)
    return {"model": path.stem, "folder": path.parent.name,
            "latency_ms": Session(native.program).device.stats.latency_us / 1e3}


def row(r: dict) -> str:
    if "error" in r:
        return f"| {r['folder']}/{r['model']} | {r['error']} |"
    pct = f"{100.0 * r['device_macs'] / r['macs']:.1f}%" if r["macs"] else "–"
    ran = r["device_nodes"] + r["host_nodes"]
    return (f"| {r['folder']}/{r['model']} | {r['device_nodes']}/{ran} | {pct} | "
            f"{r['host_calls']} | {r['host_link_bytes'] / 1024:,.0f} | {r['latency_ms']:.2f} | "
            f"{_err(r['fp32_error'])} | {_err(r['onnxruntime_spread'])} |")


def _err(e: float) -> str:
    return "outputs differ" if e == np.inf else f"{e:.1e}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="+", type=Path)
    ap.add_argument("--input-shape", action="append", default=[], metavar="NAME=DIMS")
    ap.add_argument("--device", default="brainwave-s10")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--latency-only", action="store_true",
                    help="compile in the device's format and print the latency alone")
    args = ap.parse_args(argv)
    given = {k: tuple(int(d) for d in v.split("x"))
             for k, _, v in (s.rpartition("=") for s in args.input_shape)}
    files: list[tuple[Path, dict]] = []
    for p in args.models:
        if p.is_dir():
            rec = recorded_shapes(p)
            files += [(f, {**rec.get(f.name, {}), **given}) for f in sorted(p.glob("*.onnx"))]
        else:
            files.append((p, {**recorded_shapes(p.parent).get(p.name, {}), **given}))
    if args.latency_only:
        print(f"| model | latency ms ({args.device}) |\n|---|--:|", flush=True)
    else:
        print("| model | device nodes | MACs on device | host calls | host link KiB/run | "
              f"latency ms ({args.device}) | fp32 vs onnxruntime | onnxruntime vs itself |")
        print("|---|--:|--:|--:|--:|--:|--:|--:|", flush=True)
    results = []
    for path, shapes in files:
        try:
            r = (latency if args.latency_only else measure)(path, shapes, args.device)
        except CompileError as exc:
            r = {"model": path.stem, "folder": path.parent.name, "error": str(exc)}
        results.append(r)
        print(f"| {r['folder']}/{r['model']} | {r['latency_ms']:.2f} |"
              if args.latency_only and "error" not in r else row(r), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    with shown():  # progress bars on a terminal
        sys.exit(main())
