# SPDX-License-Identifier: Apache-2.0
"""``npusim.runtime.analysis.plots``: each chart is a valid PNG for real timing statistics; its data
add up."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from npusim.compiler import compile_model
from npusim.runtime.analysis import plots
from npusim.runtime.analysis.bench import resolve_model
from npusim.simulator.config import load_device
from npusim.simulator.schedule import schedule
from npusim.simulator.stats import LayerStats, RunStats

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", params=["tiny", "brainwave-s10"])
def run(request):
    """SqueezeNet priced on ``tiny`` (weights stream from DRAM) and on ``brainwave-s10``
    (weights pinned on chip): ``(stats, cfg)``."""
    cfg = load_device(request.param)
    _, proto = resolve_model("light:squeezenet", seed=0)
    return schedule(compile_model(proto, cfg), cfg), cfg


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left over


def test_layer_breakdown_writes_a_png(run, tmp_path):
    stats, _ = run
    out = plots.layer_breakdown(stats, tmp_path / "sub" / "layers.png", "squeezenet")
    assert out == tmp_path / "sub" / "layers.png"
    assert_png(out)


def test_layer_segments_add_up_to_the_layer_cycles(run):
    stats, _ = run
    seen = set()
    for layer in stats.layers:
        seg = plots.layer_segments(layer)
        assert set(seg) <= set(plots.CATEGORIES)
        assert all(v >= 0 for v in seg.values()) and sum(seg.values()) == layer.cycles
        seen |= {k for k, v in seg.items() if v}
    assert {"compute", "host link"} <= seen


def test_breakdown_bars_cover_the_latency(run):
    stats, _ = run
    bars = plots.breakdown_bars(stats)
    shown = [la for la in stats.layers if la.unit != "control" and la.cycles > 0]
    assert len(bars) == len(shown) <= plots.MAX_LAYERS
    assert sum(sum(seg.values()) for _, seg in bars) == stats.cycles


def test_many_layers_are_lumped_into_other():
    cycles = [(k * 37) % 101 + 1 for k in range(100)]
    layers = tuple(LayerStats(f"l{k}", "Conv", "matrix", 0, c, c, c // 2, 0, 0, 0, True)
                   for k, c in enumerate(cycles))
    stats = RunStats(sum(cycles), 100.0, 64, layers, 1)
    bars = plots.breakdown_bars(stats)
    assert len(bars) == plots.TOP_LAYERS + 1
    assert bars[-1][0] == f"other ({100 - plots.TOP_LAYERS} layers)"
    kept = sorted(cycles, reverse=True)[:plots.TOP_LAYERS]
    assert sorted((sum(seg.values()) for _, seg in bars[:-1]), reverse=True) == kept
    assert sum(sum(seg.values()) for _, seg in bars) == stats.cycles


def test_roofline_writes_a_png(run, tmp_path):
    stats, cfg = run
    assert_png(plots.roofline(stats, cfg, tmp_path / "roof.png", "squeezenet"))


def test_every_layer_is_on_or_under_the_roof(run):
    stats, cfg = run
    points = plots.roofline_points(stats)
    assert len(points) == sum(la.unit == "matrix" and la.macs > 0 for la in stats.layers) > 0
    for name, intensity, achieved in points:
        roof = cfg.peak_macs_per_cycle
        if intensity is not None:
            roof = min(roof, intensity * cfg.dram_bytes_per_cycle)
        assert 0 < achieved <= roof * (1 + 1e-9), name


def test_both_kinds_of_roofline_point_occur():
    """The roofline draws streamed and on-chip layers differently; SqueezeNet has both."""
    kinds = set()
    for device in ("tiny", "brainwave-s10"):
        cfg = load_device(device)
        _, proto = resolve_model("light:squeezenet", seed=0)
        stats = schedule(compile_model(proto, cfg), cfg)
        kinds |= {x is None for _, x, _ in plots.roofline_points(stats)}
    assert kinds == {True, False}


def test_roofline_refuses_another_device(run, tmp_path):
    stats, cfg = run
    with pytest.raises(ValueError, match="not the one"):
        plots.roofline(stats, cfg.replace(tiles=cfg.tiles + 1), tmp_path / "roof.png")
    assert not (tmp_path / "roof.png").exists()


ROWS = [{"tiles": t, "numerics": f, "peak_macs_per_cycle": 64 * t,
         "latency_ms": 1.0 / t + (0.1 if f == "msfp16" else 0.0)}
        for t in (1, 2, 4) for f in ("msfp8", "msfp16")]


@pytest.mark.parametrize("rows", [ROWS, [r for r in ROWS if r["numerics"] == "msfp8"], []],
                         ids=["two-formats", "one-format", "empty"])
def test_pareto_writes_a_png(rows, tmp_path):
    assert_png(plots.pareto(rows, tmp_path / "pareto.png", title="test"))


def test_pareto_takes_other_axes_and_labels(tmp_path):
    rows = [dict(r, cycles=int(r["latency_ms"] * 1e5)) for r in ROWS]
    assert_png(plots.pareto(rows, tmp_path / "p.png", x="tiles", y="cycles",
                            label_keys=("numerics",)))


def test_plots_leave_the_backend_and_pyplot_alone(run, tmp_path):
    import matplotlib

    backend = matplotlib.get_backend()
    stats, _ = run
    plots.layer_breakdown(stats, tmp_path / "a.png")
    assert matplotlib.get_backend() == backend
    if "matplotlib.pyplot" in sys.modules:  # another test may have imported it
        assert not sys.modules["matplotlib.pyplot"].get_fignums()


def test_importing_plots_imports_no_matplotlib():
    code = "import sys, npusim.runtime.analysis.plots; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   cwd=Path(__file__).resolve().parents[2])

