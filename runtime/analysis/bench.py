# SPDX-License-Identifier: Apache-2.0
"""Latency benchmarks: simulated device time beside the host's own timings.

For each model, :func:`bench_model` compiles it, prices it with the timing model
(:mod:`npusim.simulator.schedule`), runs it functionally on the simulator and on
onnxruntime in the same process, and returns one row. :func:`timing_point` does only
the compile and the schedule, for design-space sweeps.

Example:
    >>> row = bench_model("resnet50", device="brainwave-s10")    # doctest: +SKIP
    >>> print(format_bench([row]))                               # doctest: +SKIP
"""

from __future__ import annotations

import time
from pathlib import Path

import onnx

from npusim.compiler import compile_model
from npusim.compiler.frontend import load_onnx
from npusim.runtime.analysis.compare import default_inputs
from npusim.runtime.analysis.reference import median_seconds, onnxruntime_session
from npusim.runtime.session import Session
from npusim.simulator.config import DeviceConfig, load_device
from npusim.simulator.schedule import schedule
from npusim.simulator.stats import STALL_CAUSES, RunStats


def resolve_model(spec: str | Path | onnx.ModelProto, seed: int = 0) -> tuple[str,
                                                                               onnx.ModelProto]:
    """``(name, model)`` for a zoo name, ``light:NAME``, ``npu:NAME`` (a workload of the
    open-source Brainwave-style NPU, :mod:`npusim.runtime.zoo.npu_workloads`), ``deepbench:NAME``
    (a DeepBench recurrent layer, :mod:`npusim.runtime.zoo.deepbench`) or an ONNX file."""
    from npusim.runtime.zoo import MODELS, load_light_model
    from npusim.runtime.zoo.deepbench import BUILDERS as DEEPBENCH
    from npusim.runtime.zoo.npu_workloads import BUILDERS as NPU_WORKLOADS

    if isinstance(spec, onnx.ModelProto):
        return spec.graph.name or "model", spec
    text = str(spec)
    if text in MODELS:
        return text, MODELS[text](seed=seed)
    if text.startswith("light:"):
        return text, load_light_model(text[len("light:"):], seed=seed)
    if text.startswith("npu:") and text[len("npu:"):] in NPU_WORKLOADS:
        return text, NPU_WORKLOADS[text[len("npu:"):]](seed=seed)
    if text.startswith("deepbench:") and text[len("deepbench:"):] in DEEPBENCH:
        return text, DEEPBENCH[text[len("deepbench:"):]](seed=seed)
    if not Path(text).is_file():
        raise FileNotFoundError(text)
    return Path(text).stem, load_onnx(text)


def summary(stats: RunStats) -> dict:
    """The whole-model figures of ``stats`` as a flat dict."""
    return {"cycles": stats.cycles, "latency_ms": stats.latency_us / 1000,
            "macs": stats.macs, "achieved_tops": stats.achieved_tops,
            "utilization": stats.utilization, "roofline_cycles": stats.roofline_cycles,
            "roofline_ratio": stats.roofline_ratio,
            **{f"stall_{c}": v for c, v in stats.stalls().items()}}


def _compile(model, device, numerics: str | None, seed: int = 0):
    """``(name, proto, cfg, program, compile seconds, weight figures)``."""
    cfg = load_device(device)
    if numerics:
        cfg = cfg.replace(numerics=numerics)
    name, proto = resolve_model(model, seed)
    t0 = time.perf_counter()
    prog = compile_model(proto, cfg)
    compile_s = time.perf_counter() - t0
    weights = {k: prog.metadata[k] for k in ("pinned_weight_bytes", "streamed_weight_bytes")}
    return name, proto, cfg, prog, compile_s, weights


def timing_point(model: str | Path | onnx.ModelProto, device: str | Path | DeviceConfig,
                 numerics: str | None = None) -> dict:
    """Compile ``model`` for ``device`` and price it; no functional run."""
    _, _, cfg, prog, compile_s, weights = _compile(model, device, numerics)
    return {"numerics": cfg.numerics, "peak_macs_per_cycle": cfg.peak_macs_per_cycle,
            "peak_tops": cfg.peak_tops, "matrix_kalms": cfg.matrix_alms / 1000,
            "compile_s": compile_s, **weights,
            **summary(schedule(prog, cfg))}


def bench_model(model: str | Path | onnx.ModelProto, device: str | Path | DeviceConfig = None,
                numerics: str | None = None, rounds: int = 3, seed: int = 0,
                reference: bool = True) -> dict:
    """One benchmark row; ``row["stats"]`` holds the :class:`RunStats`.

    Functional simulation and onnxruntime are timed as the median of ``rounds`` runs
    after a warm-up, one after the other in this process.
    """
    name, proto, cfg, prog, compile_s, weights = _compile(model, device, numerics, seed)
    feeds = default_inputs(proto, seed)
    sess = Session(prog)
    sim_s = median_seconds(lambda: sess.run(None, feeds), rounds)
    ort_s = float("nan")
    if reference:
        ref = onnxruntime_session(proto)
        ort_s = median_seconds(lambda: ref.run(None, feeds), rounds)
    stats = sess.last_stats
    return {"model": name, "device": cfg.name, "numerics": cfg.numerics,
            "instructions": len(prog.instructions), "compile_s": compile_s,
            "sim_ms": sim_s * 1e3, "ort_ms": ort_s * 1e3, "sim_over_ort": sim_s / ort_s,
            **weights, **summary(stats), "stats": stats}


BENCH_HEAD = (f"{'model':<14} {'device':<14} {'format':<7} {'latency ms':>10} {'util':>6} "
              f"{'TOPS':>6} {'x roof':>6} {'compile s':>9} {'sim ms':>8} {'ort ms':>8} "
              f"{'sim/ort':>7}")
"""The benchmark table's header line."""


def format_bench_row(r: dict) -> str:
    """One line of the benchmark table (printed as each measurement ends)."""
    return (f"{r['model'][:14]:<14} {r['device'][:14]:<14} {r['numerics']:<7} "
            f"{r['latency_ms']:>10.3f} {r['utilization']:>6.1%} "
            f"{r['achieved_tops']:>6.2f} {r['roofline_ratio']:>6.2f} "
            f"{r['compile_s']:>9.2f} {r['sim_ms']:>8.1f} {r['ort_ms']:>8.1f} "
            f"{r['sim_over_ort']:>7.1f}")


def format_bench(rows: list[dict]) -> str:
    """The benchmark table: one line per row."""
    return "\n".join([BENCH_HEAD] + [format_bench_row(r) for r in rows])


def format_layers(stats: RunStats, top: int | None = None) -> str:
    """Per-layer table of ``stats``: the ``top`` layers by cycles (all if None).

    ``x roof`` is the layer's span (first job start to last job end) over its roofline
    bound; ``cycles`` is what it adds to the latency, which overlap can make smaller.
    """
    layers = [(k, layer) for k, layer in enumerate(stats.layers) if layer.unit != "control"]
    if top:
        layers = sorted(layers, key=lambda kl: -kl[1].cycles)[:top]
    width = min(max([len(layer.name) for _, layer in layers] + [5]), 32)
    op_width = max([len(layer.op) for _, layer in layers] + [2])
    lines = [f"{'layer':<{width}} {'op':<{op_width}} {'cycles':>8} {'share':>6} {'MACs':>11} "
             f"{'util':>6} {'bound':<7} {'x roof':>6} {'pinned':<6} stalls"]
    for _, layer in layers:
        stalls = " ".join(f"{c}={layer.stalls[c]}" for c in STALL_CAUSES if c in layer.stalls)
        pinned = "-" if layer.pinned is None else ("yes" if layer.pinned else "no")
        lines.append(f"{layer.name[:width]:<{width}} {layer.op:<{op_width}} {layer.cycles:>8} "
                     f"{layer.cycles / max(1, stats.cycles):>6.1%} {layer.macs:>11} "
                     f"{layer.utilization:>6.1%} {layer.bound:<7} "
                     f"{(layer.end - layer.start) / max(1, layer.roofline_cycles):>6.2f} "
                     f"{pinned:<6} "
                     f"{stalls}")
    lines.append(f"total: {stats.cycles} cycles = {stats.latency_us / 1000:.3f} ms at "
                 f"{stats.clock_mhz:g} MHz, {stats.macs / 1e9:.2f} GMAC, "
                 f"{stats.achieved_tops:.2f} TOPS achieved, array utilization "
                 f"{stats.utilization:.1%}, {stats.roofline_ratio:.2f}x the roofline bound")
    lines.append("cycles: what the layer adds to the latency; its stalls (cycles its units "
                 "waited) can be larger, because they overlap earlier layers' work")
    return "\n".join(lines)
