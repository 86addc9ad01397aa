# SPDX-License-Identifier: Apache-2.0
"""A trained network in every format: the small CNN of examples/digits.py, trained here
on scikit-learn's digits (fixed seeds, deterministic ops), exported with tf2onnx and
evaluated on its 360 held-out digits.

The floors are what each format must keep. The lesson they hold: MSFP16 and MX INT8
lose at most a digit or two; ms-fp8 several points, because its 128-element blocks share
one exponent; and per-layer formats chosen from calibration data keep fp32's accuracy
with most of the MACs in ms-fp8."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from npusim.compiler import compile_model
from npusim.compiler.mixed import choose_formats
from npusim.runtime.analysis.evaluate import calibration_feeds, evaluate
from npusim.simulator.numerics import FORMAT_NAMES, get_format

pytestmark = [pytest.mark.slow, pytest.mark.tf,
              pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None
                                 or importlib.util.find_spec("sklearn") is None,
                                 reason="needs tf2onnx and scikit-learn")]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

FLOORS = {"fp32": 0.97, "msfp16": 0.965, "mxint8": 0.965, "msfp12": 0.955,
          "msfp9": 0.955, "msfp8": 0.90, "mxfp8_e4m3": 0.965, "mxfp8_e5m2": 0.965,
          "mxfp6_e3m2": 0.965, "mxfp6_e2m3": 0.965, "mxfp4_e2m1": 0.95}
"""Top-1 accuracy each format keeps on the 360 test digits (fp32 scores 97.8%)."""


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    sys.path.insert(0, str(EXAMPLES))
    try:
        import digits as example
    finally:
        sys.path.remove(str(EXAMPLES))
    out = tmp_path_factory.mktemp("digits")
    assert example.main(["--out", str(out)]) == 0
    return out


def test_every_format_keeps_its_floor(digits):
    res = evaluate(digits / "digits.onnx", digits / "digits-test.npz", numerics="all",
                   serial=True, progress=False)
    top1 = {r.format: r.top1 for r in res.rows}
    assert set(top1) == set(FORMAT_NAMES)
    for fmt, acc in top1.items():
        assert acc >= FLOORS.get(fmt, 0.0), (fmt, top1)
    assert top1["fp32"] - top1["msfp16"] <= 0.01 and top1["fp32"] - top1["mxint8"] <= 0.01
    assert top1["msfp8"] < top1["fp32"] - 0.02  # the lesson: one exponent per 128 costs


def test_auto_formats_keep_fp32_accuracy_with_most_macs_narrow(digits):
    model = digits / "digits.onnx"
    feeds = calibration_feeds(digits / "digits-calib.npz", model, limit=128)
    choice = choose_formats(model, "brainwave-s10", feeds, 0.01)
    narrow = sum(share for fmt, share in choice.mac_share().items()
                 if get_format(fmt).bits_per_element < get_format("msfp16").bits_per_element)
    assert narrow > 0.5, choice.mac_share()
    prog = compile_model(model, "brainwave-s10", choice.default, layer_formats=choice.formats)
    res = evaluate(prog, digits / "digits-test.npz", reference=model, serial=True,
                   progress=False)
    ref, got = res.rows
    assert got.top1 >= ref.top1 - 0.01, (ref, got)
