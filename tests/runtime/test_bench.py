# SPDX-License-Identifier: Apache-2.0
"""Latency reports as a user gets them: run --stats/--trace, bench, device show."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_helpers import assert_user_error, npusim
from onnx_helpers import conv_block

from npusim.runtime.analysis.bench import bench_model, format_bench, format_layers, timing_point
from npusim.runtime.cli import main
from npusim.simulator.stats import STALL_CAUSES


@pytest.fixture(scope="module")
def block(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    onnx.save(conv_block(), d / "block.onnx")
    np.save(d / "x.npy", np.random.default_rng(0).standard_normal((1, 8, 8, 8))
            .astype(np.float32))
    assert main(["compile", str(d / "block.onnx"), "-o", str(d / "block.npub"),
                 "--device", "tiny"]) == 0
    return d


def test_run_writes_stats_and_a_chrome_trace(block, capsys):
    stats, trace = block / "stats.json", block / "trace.json"
    assert main(["run", str(block / "block.npub"), "--input", str(block / "x.npy"),
                 "--output-dir", str(block), "--stats", str(stats), "--trace", str(trace),
                 "--layers"]) == 0
    out = capsys.readouterr().out
    assert "Conv+Add+Relu" in out and "roofline" in out
    st = json.loads(stats.read_text())
    for key in ("cycles", "latency_us", "achieved_tops", "utilization", "roofline_cycles",
                "roofline_ratio", "stalls", "layers"):
        assert key in st
    assert st["cycles"] == sum(layer["cycles"] for layer in st["layers"])
    conv = next(layer for layer in st["layers"] if layer["op"] == "Conv+Add+Relu")
    for key in ("cycles", "macs", "utilization", "bound", "stalls", "roofline_cycles"):
        assert key in conv
    assert conv["macs"] == 8 * 8 * 8 * 9 * 8 and conv["bound"] in ("compute", "memory", "host")
    doc = json.loads(trace.read_text())
    slices = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    tracks = {e["args"]["name"] for e in doc["traceEvents"] if e.get("name") == "thread_name"}
    assert {"load", "matrix", "vector", "store", "host"} <= tracks
    assert {e["name"] for e in slices} >= {"conv", "pool", "softmax"}
    end = max(e["ts"] + e["dur"] for e in slices)
    assert end == pytest.approx(st["latency_us"])  # the timeline spans the latency


def test_bench_table_json_and_plots(block, tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", str(block / "block.onnx"), "--device", "tiny", "--rounds", "1",
                 "--json", str(out), "--plot", str(tmp_path / "plots")]) == 0
    text = capsys.readouterr().out
    assert "latency ms" in text and "ort ms" in text and "block" in text
    (row,) = json.loads(out.read_text())
    assert row["device"] == "tiny" and row["ort_ms"] > 0 and row["sim_ms"] > 0
    assert row["layers"] and row["cycles"] == sum(layer["cycles"] for layer in row["layers"])
    pngs = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert pngs == ["block-tiny-msfp12-layers.png", "block-tiny-msfp12-roofline.png"]
    for p in (tmp_path / "plots").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_rows_agree_with_timing_point():
    row = bench_model(conv_block(), "tiny", rounds=1)
    point = timing_point(conv_block(), "tiny")
    assert row["cycles"] == point["cycles"] and row["macs"] == point["macs"]
    assert "block" not in format_bench([row]).splitlines()[0]
    table = format_layers(row["stats"], top=2)
    lines = table.splitlines()
    assert len(lines) == 5  # header, two layers, total, what the cycles and stalls mean
    assert lines[-1].startswith("cycles: what the layer adds to the latency")
    ops = [layer.op for layer in row["stats"].layers]
    assert all(any(op in line for op in ops) for line in lines[1:3])  # op names whole
    assert set(row["stats"].stalls()) == set(STALL_CAUSES)


def test_device_show_and_list():
    res = npusim("device", "show", "brainwave-s10")
    assert res.returncode == 0 and "96,000" in res.stdout
    res = npusim("device", "list")
    assert res.returncode == 0 and "arria10-pbs" in res.stdout and "tiny" in res.stdout
    assert_user_error(npusim("device", "show", "no-such-part"), "no-such-part")


def test_bench_bad_model_is_one_line(tmp_path):
    assert_user_error(npusim("bench", str(tmp_path / "missing.onnx"), "--device", "tiny"),
                      "missing.onnx")


def test_bench_prints_each_row_as_it_comes_and_the_plots_after(tmp_path):
    onnx.save(conv_block(), tmp_path / "a.onnx")
    res = npusim("bench", str(tmp_path / "a.onnx"), "--device", "tiny", "--device", "tiny",
                 "--rounds", "1", "--no-reference", "--plot", str(tmp_path / "plots"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["model", "device", "format"]
    assert [line.split()[:2] for line in lines[1:3]] == [["a", "tiny"], ["a", "tiny"]]
    assert all(line.startswith("plots: ") for line in lines[3:]) and len(lines) == 5
