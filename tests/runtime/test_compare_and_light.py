# SPDX-License-Identifier: Apache-2.0
"""Every light model of the onnx package on the device, and the per-layer comparison."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx_helpers import conv_block

from npusim.compiler import compile_full
from npusim.compiler.interpret import Numerics, evaluate
from npusim.runtime import Session
from npusim.runtime.analysis.compare import compare_layers
from npusim.runtime.cli import main
from npusim.runtime.zoo import LIGHT_MODELS, light_model_input, load_light_model

HEAVY = {"bvlc_alexnet", "vgg19", "zfnet512"}
"""Light models with 60M+ weights: each step below holds several copies of them, so they run
with the slow cases (the README's test command stays under 3 GB)."""


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n
                                  for n in LIGHT_MODELS])
def test_light_model_runs_on_the_device(name):
    model = load_light_model(name, seed=0)
    feeds = light_model_input(model, seed=0)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref = ort.InferenceSession(model.SerializeToString(), opts,
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    fp32 = compile_full(model, numerics="fp32")
    outs = Session(fp32.program).run(None, feeds)
    for out, want in zip(outs, ref, strict=True):
        rel = np.linalg.norm(out - want) / np.linalg.norm(want)
        assert rel < 1e-4, f"{name}: fp32 program vs onnxruntime {rel:.2e}"
    placement = fp32.program.metadata["placement"]
    on_device = [r for r in placement if r["where"] == "device"]
    assert len(on_device) > len(placement) / 2  # the device does most of the work
    del fp32, outs, ref  # one compiled copy of the weights at a time
    msfp16 = compile_full(model, numerics="msfp16")
    outs = Session(msfp16.program).run(None, feeds)
    gold = evaluate(msfp16.graph, feeds, Numerics(msfp16.options.format))
    for out, want in zip(outs, gold.values(), strict=True):
        assert np.array_equal(out, want), f"{name}: msfp16 simulator != golden"


def test_compare_locates_the_loss():
    rows = compare_layers(conv_block(), "msfp12", device="tiny")
    assert [r["layer"] for r in rows][:1] == ["conv"]
    assert all(0 <= r["rel_error"] < 1 and r["cosine"] > 0.5 for r in rows)
    assert rows[0]["rel_error"] > 0 and rows[0]["max_abs_error"] > 0
    exact = compare_layers(conv_block(), "fp32", device="tiny")
    assert all(r["rel_error"] == 0 and r["max_abs_error"] == 0 for r in exact)


def test_compare_cli(tmp_path, capsys):
    onnx.save(conv_block(), tmp_path / "m.onnx")
    assert main(["compare", str(tmp_path / "m.onnx"), "--numerics", "msfp8", "--device", "tiny",
                 "--json", str(tmp_path / "rows.json")]) == 0
    text = capsys.readouterr().out
    assert "cosine" in text and "conv" in text
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert {"layer", "op", "rel_error", "cosine", "max_abs_error"} <= set(rows[0])


def test_zoo_cli(tmp_path, capsys):
    assert main(["zoo", "list"]) == 0
    assert "ssd_vgg" in capsys.readouterr().out
    assert main(["zoo", "export", "densenet121", "-o", str(tmp_path / "d.onnx"), "--seed",
                 "3"]) == 0
    onnx.checker.check_model(onnx.load(str(tmp_path / "d.onnx")))
    assert main(["zoo", "export", "nope", "-o", str(tmp_path / "x.onnx")]) == 2
    assert not (tmp_path / "x.onnx").exists()
