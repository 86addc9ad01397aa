# SPDX-License-Identifier: Apache-2.0
"""PNG charts of the timing model: per-layer latency breakdown, roofline, sweep Pareto front.

Each function draws on its own :class:`matplotlib.figure.Figure` with an Agg canvas,
so it needs no display and leaves pyplot and the global backend alone; matplotlib is
imported on the first call, not with this module. Each writes its PNG atomically
(creating the folder) and returns the path.

Example:
    >>> row = bench_model("resnet50", "brainwave-s10", rounds=1)          # doctest: +SKIP
    >>> layer_breakdown(row["stats"], "out/resnet50-layers.png")          # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from npusim.runtime.analysis.points import GRID_FIELDS, pareto_front
from npusim.simulator.stats import STALL_CAUSES, LayerStats, RunStats

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from npusim.simulator.config import DeviceConfig

CATEGORIES = ("compute", *(f"stall: {c}" for c in STALL_CAUSES), "host link", "overlap/other")
"""What a layer's cycles are spent on, in the order the bars stack."""
_COLOURS = dict(zip(CATEGORIES, ("#4c72b0", "#dd8452", "#c44e52", "#8172b3", "#937860",
                                 "#bbbbbb")))
MAX_LAYERS = 60
"""Above this many layers the breakdown shows the slowest :data:`TOP_LAYERS` and lumps the rest."""
TOP_LAYERS = 40
_DPI = 120


def _figure(width: float, height: float) -> Figure:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | Path) -> Path:
    from npusim.simulator.fileio import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI))
    return path


def layer_segments(layer: LayerStats) -> dict[str, int]:
    """A layer's ``cycles`` by category of :data:`CATEGORIES`; the values sum to ``cycles``.

    Compute is the unit's busy time (at most the layer's cycles: the rest overlapped the
    layer before); stalls fill what is left, in :data:`STALL_CAUSES` order, and the
    remainder is overlap/other (e.g. waiting for the last store). A host-link layer has
    no compute unit: all its cycles are host-link time.
    """
    if layer.unit == "host":
        return {"host link": layer.cycles}
    left = layer.cycles
    out = {"compute": min(layer.compute_cycles, left)}
    left -= out["compute"]
    for cause in STALL_CAUSES:
        out[f"stall: {cause}"] = min(layer.stalls.get(cause, 0), left)
        left -= out[f"stall: {cause}"]
    out["overlap/other"] = left
    return out


def breakdown_bars(stats: RunStats) -> list[tuple[str, dict[str, int]]]:
    """``(label, cycles by category)`` of each bar of :func:`layer_breakdown`, top to bottom."""
    layers = [la for la in stats.layers if la.unit != "control" and la.cycles > 0]
    bars = [(f"{la.name[:28]} ({la.op})", layer_segments(la)) for la in layers]
    if len(layers) > MAX_LAYERS:
        keep = set(sorted(range(len(layers)), key=lambda k: -layers[k].cycles)[:TOP_LAYERS])
        rest: dict[str, int] = {}
        for k in range(len(layers)):
            if k not in keep:
                for cat, v in bars[k][1].items():
                    rest[cat] = rest.get(cat, 0) + v
        bars = [b for k, b in enumerate(bars) if k in keep]
        bars.append((f"other ({len(layers) - TOP_LAYERS} layers)", rest))
    return bars


def layer_breakdown(stats: RunStats, path: str | Path, title: str = "") -> Path:
    """Horizontal stacked bars: each layer's share of the latency, in microseconds.

    Control and zero-cycle layers are left out; above :data:`MAX_LAYERS` layers the
    slowest :data:`TOP_LAYERS` are drawn in program order and the rest summed as "other".
    """
    bars = breakdown_bars(stats)
    fig = _figure(9, max(3.0, 1.5 + 0.22 * len(bars)))
    ax = fig.add_subplot()
    left = [0.0] * len(bars)
    for cat in CATEGORIES:
        widths = [seg.get(cat, 0) / stats.clock_mhz for _, seg in bars]
        if any(widths):
            ax.barh(range(len(bars)), widths, left=left, color=_COLOURS[cat], label=cat,
                    height=0.8)
            left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(range(len(bars)), [name for name, _ in bars], fontsize=7)
    ax.invert_yaxis()  # program order, top to bottom
    ax.set_xlabel("microseconds of latency (what each layer adds)\noverlap/other: waiting "
                  "on work that is not its own, such as an earlier layer's store", fontsize=8)
    ax.set_title(title or f"latency by layer: {stats.latency_us:.1f} us in total")
    if bars:
        ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def roofline_points(stats: RunStats) -> list[tuple[str, float | None, float]]:
    """``(name, MACs per DRAM byte, achieved MACs per cycle)`` of each matrix layer.

    Achieved is ``macs / (end - start)``: the layer's rate over its own span on the
    timeline, the same span as :attr:`LayerStats.utilization`, so every point lies on or
    under the roof. (``macs / cycles`` would credit a layer with the time it overlapped
    the layer before, and so could rise above the roof.)
    The intensity is None for a layer that moves no DRAM bytes (pinned weights,
    activations on chip).
    """
    return [(la.name, la.macs / la.dram_bytes if la.dram_bytes else None,
             la.macs / max(1, la.end - la.start))
            for la in stats.layers if la.unit == "matrix" and la.macs > 0]


def roofline(stats: RunStats, cfg: DeviceConfig, path: str | Path, title: str = "") -> Path:
    """The roofline of ``cfg`` on log-log axes with each matrix layer and the whole model.

    x is arithmetic intensity (MACs per DRAM byte), y achieved MACs per cycle (see
    :func:`roofline_points`); the ceiling is ``min(peak, intensity * DRAM bytes per cycle)``.
    Layers that move no DRAM bytes are drawn at the right edge. The whole model (a star)
    is its MACs over all DRAM bytes, against MACs over its total cycles.
    """
    import numpy as np

    if (cfg.peak_macs_per_cycle, cfg.clock_mhz) != (stats.peak_macs_per_cycle, stats.clock_mhz):
        raise ValueError(f"device {cfg.name} ({cfg.peak_macs_per_cycle} MACs/cycle at "
                         f"{cfg.clock_mhz:g} MHz) is not the one these stats were run on "
                         f"({stats.peak_macs_per_cycle} at {stats.clock_mhz:g} MHz)")
    peak, bw = stats.peak_macs_per_cycle, cfg.dram_bytes_per_cycle
    points = roofline_points(stats)
    dram = sum(la.dram_bytes for la in stats.layers)
    model_x = stats.macs / dram if dram else None
    model_y = stats.macs / max(1, stats.cycles)
    ridge = peak / bw
    xs = [x for _, x, _ in points if x is not None] + ([model_x] if model_x else []) + [ridge]
    lo, edge = min(xs) / 4, max(xs) * 4
    fig = _figure(8, 5.5)
    ax = fig.add_subplot()
    grid = np.geomspace(lo, edge * 1.5, 256)
    ax.plot(grid, np.minimum(peak, grid * bw), color="black", lw=1.5,
            label=f"roof: {peak} MACs/cycle, {bw:.3g} B/cycle")
    ax.axvline(ridge, color="grey", lw=0.6, ls=":")
    streamed = [(x, y) for _, x, y in points if x is not None]
    on_chip = [y for _, x, y in points if x is None]
    if streamed:
        ax.scatter(*zip(*streamed), s=18, color="#4c72b0", alpha=0.8, label="layer")
    if on_chip:
        ax.scatter([edge] * len(on_chip), on_chip, s=22, marker=">", color="#55a868",
                   alpha=0.8, label="layer with no DRAM traffic (drawn at the right edge)")
    if stats.macs:
        ax.scatter([model_x or edge], [model_y], s=160, marker="*", color="#c44e52",
                   zorder=5, label="whole model" + ("" if model_x else " (no DRAM traffic)"))
    ys = [y for _, _, y in points] + ([model_y] if stats.macs else [])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, edge * 1.5)
    ax.set_ylim(max(min(ys, default=peak) / 3, 1e-3), peak * 2)
    ax.set_xlabel("arithmetic intensity (MACs per DRAM byte)")
    ax.set_ylabel("achieved MACs per cycle")
    ax.set_title(title or f"roofline on {cfg.name}")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


_AXIS_LABELS = {"peak_macs_per_cycle": "peak MACs per cycle", "latency_ms": "latency (ms)",
                "peak_tops": "peak TOPS", "cycles": "cycles",
                "matrix_kalms": "matrix unit logic (thousand ALMs, simulator/area.py)"}


def _varying(rows: Sequence[dict], exclude: Sequence[str]) -> list[str]:
    return [k for k in GRID_FIELDS if k not in exclude and len({r.get(k) for r in rows}) > 1]


def pareto(rows: Sequence[dict], path: str | Path, x: str = "peak_macs_per_cycle",
           y: str = "latency_ms", label_keys: Sequence[str] | None = None,
           title: str = "") -> Path:
    """Scatter of sweep rows (``x`` against ``y``, lower-left is better) with the Pareto front.

    The front (:func:`npusim.runtime.analysis.points.pareto_front`) is drawn as a step line
    and its points labelled with their ``label_keys`` values (default: the device fields
    that vary). Points are coloured by number format when the rows have more than one.
    """
    fig = _figure(8, 5.5)
    _front_panel(fig.add_subplot(), rows, x, y, label_keys, title or f"{y} against {x}")
    return _save(fig, path)


QUALITY = (("top1", "top-1 error", lambda v: 1 - v), ("output_error",
           "output error against fp32", lambda v: v))
"""Measures of a format's answers a sweep row may carry, lower is better once mapped."""


def sweep_tradeoff(rows: Sequence[dict], path: str | Path,
                   label_keys: Sequence[str] | None = None, title: str = "") -> Path:
    """A sweep's trade-offs: latency against the matrix unit's logic (its area), and,
    when the rows measure each format's answers, their error against latency. Each
    panel draws its Pareto front; with area and error both present, the points no other
    point beats on area, latency and error at once are ringed in both."""
    x = "matrix_kalms" if any("matrix_kalms" in r for r in rows) else "peak_macs_per_cycle"
    quality = next(((key, label, fn) for key, label, fn in QUALITY
                    if any(isinstance(r.get(key), (int, float)) for r in rows)), None)
    fig = _figure(13 if quality else 8, 5.5)
    ax = fig.add_subplot(1, 2 if quality else 1, 1)
    _front_panel(ax, rows, x, "latency_ms", label_keys, "latency against area")
    if quality:
        key, label, fn = quality
        scored = [{**r, "_quality": fn(r[key])} if isinstance(r.get(key), (int, float)) else r
                  for r in rows]
        both = _front3(scored, (x, "latency_ms", "_quality"))
        _front_panel(fig.add_subplot(1, 2, 2), scored, "latency_ms", "_quality", label_keys,
                     f"{label} against latency", ylabel=label)
        for a, px, py in ((ax, x, "latency_ms"), (fig.axes[1], "latency_ms", "_quality")):
            if both:
                a.scatter([scored[k][px] for k in both], [scored[k][py] for k in both], s=140,
                          facecolors="none", edgecolors="crimson", lw=1.2,
                          label="best on area, latency and error")
                a.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _front3(rows: Sequence[dict], keys: Sequence[str]) -> list[int]:
    """Indices of the rows that no other row beats on every one of ``keys`` (lower is
    better, at least as good on all and better on one)."""
    ok = [k for k, r in enumerate(rows) if all(isinstance(r.get(c), (int, float))
                                               and math.isfinite(r[c]) for c in keys)]
    return [k for k in ok if not any(
        all(rows[j][c] <= rows[k][c] for c in keys) and any(rows[j][c] < rows[k][c]
                                                            for c in keys) for j in ok)]


def _front_panel(ax, rows: Sequence[dict], x: str, y: str,
                 label_keys: Sequence[str] | None, title: str, ylabel: str = "") -> None:
    from matplotlib import colormaps

    front = pareto_front(rows, x, y)
    ok = [r for r in rows if all(isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
                                 for k in (x, y))]
    if label_keys is None:
        label_keys = _varying(rows, (x, y))
    formats = list(dict.fromkeys(r.get("numerics") for r in ok))
    cmap = colormaps["tab10"]
    for j, fmt in enumerate(formats):
        pts = [(r[x], r[y]) for r in ok if r.get("numerics") == fmt]
        ax.scatter(*zip(*pts), s=22, alpha=0.75, color=cmap(j % 10),
                   label=str(fmt) if len(formats) > 1 else f"{len(ok)} points")
    if front:
        fx, fy = [rows[k][x] for k in front], [rows[k][y] for k in front]
        ax.step(fx, fy, where="post", color="black", lw=1.2, label="Pareto front")
        ax.scatter(fx, fy, s=60, facecolors="none", edgecolors="black")
        mid = (min(fx) + max(fx)) / 2
        for k in front:
            text = " ".join(f"{key}={rows[k][key]}" for key in label_keys if key in rows[k])
            if text:  # labels point inwards so they stay inside the axes
                right = rows[k][x] > mid
                note = ax.annotate(text, (rows[k][x], rows[k][y]), xytext=(-4 if right else 4, 4),
                                   textcoords="offset points", fontsize=6,
                                   ha="right" if right else "left")
                note.set_in_layout(False)
    for axis, key, setter in ((ax.xaxis, x, ax.set_xscale), (ax.yaxis, y, ax.set_yscale)):
        vals = [r[key] for r in ok]
        if vals and min(vals) > 0 and max(vals) / min(vals) > 20:
            setter("log")
        axis.set_label_text(_AXIS_LABELS.get(key, key))
    if ylabel:
        ax.yaxis.set_label_text(ylabel)
    if not ok:
        ax.text(0.5, 0.5, "no points", transform=ax.transAxes, ha="center")
    ax.set_title(title)
    if ok:
        ax.legend(fontsize=8)
