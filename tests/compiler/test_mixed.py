# SPDX-License-Identifier: Apache-2.0
"""``--numerics auto``: per-layer formats from calibration data, held to the tolerance."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from cli_helpers import assert_user_error, npusim
from test_layer_formats import three_layers

from npusim.compiler import CompileError, compile_model
from npusim.compiler.mixed import choose_formats, format_choice
from npusim.runtime.session import Session
from npusim.simulator.numerics import get_format


def _feeds(n: int = 24, seed: int = 3) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 8, 12, 12)).astype(np.float32)} for _ in range(n)]


def _simulated(model, formats: dict[str, str], default: str, feeds) -> np.ndarray:
    prog = compile_model(model, "tiny", default, layer_formats=formats)
    sess = Session(prog)
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def _bits(choice) -> float:
    return sum(r["macs"] * get_format(r["format"]).bits_per_element for r in choice.layers)


def test_the_choice_holds_on_the_simulator_as_measured():
    model, feeds = three_layers(), _feeds()
    choice = choose_formats(model, "tiny", feeds, 0.05, metric="agreement")
    assert choice.disagreement <= 0.025 and choice.default == "msfp16"
    ref = _simulated(model, {}, "fp32", feeds)
    got = _simulated(model, choice.formats, choice.default, feeds)
    # the golden model the choice was measured with is what the device computes
    assert np.mean(ref.argmax(-1) != got.argmax(-1)) == pytest.approx(choice.disagreement)
    rel = np.linalg.norm(got.astype(np.float64) - ref) / np.linalg.norm(ref)
    assert rel == pytest.approx(choice.rel_error, rel=1e-6)
    text = format_choice(choice)
    assert "conv1" in text and "MACs by format" in text


def test_a_looser_tolerance_never_costs_more_bits():
    model, feeds = three_layers(), _feeds()
    costs = [_bits(choose_formats(model, "tiny", feeds, tol, metric="error"))
             for tol in (0.01, 0.05, 0.2, 0.9)]
    assert costs == sorted(costs, reverse=True)
    loose = choose_formats(model, "tiny", feeds, 0.9, metric="error")
    assert set(loose.formats.values()) == {"msfp8"}  # the narrowest everywhere
    exact = choose_formats(model, "tiny", feeds, 0.0, ["msfp8", "fp32"], metric="error")
    assert set(exact.formats.values()) == {"fp32"} and exact.rel_error == 0


def test_an_unreachable_tolerance_is_refused_by_name():
    with pytest.raises(CompileError, match=r"every layer in msfp9.*above the tolerance"):
        choose_formats(three_layers(), "tiny", _feeds(8), 0.0, ["msfp8", "msfp9"],
                       metric="error")
    with pytest.raises(CompileError, match="tolerance"):
        choose_formats(three_layers(), "tiny", _feeds(8), 1.5)
    with pytest.raises(CompileError, match="unknown number format 'msfp7'"):
        choose_formats(three_layers(), "tiny", _feeds(8), 0.01, ["msfp7"])


def test_the_command(tmp_path):
    onnx.save(three_layers(), tmp_path / "m.onnx")
    x = np.concatenate([f["x"] for f in _feeds(16)])
    np.savez(tmp_path / "cal.npz", x=x)
    res = npusim("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "m.npub"),
                 "--device", "tiny", "--numerics", "auto", "--calibration",
                 str(tmp_path / "cal.npz"), "--tolerance", "10%", "--metric", "error",
                 "--layer-format", "fc=fp32")
    assert res.returncode == 0, res.stderr
    assert "MACs by format" in res.stdout and "mixed (" in res.stdout
    shown = npusim("inspect", str(tmp_path / "m.npub")).stdout
    assert "fp32 on 1 matrix layer" in shown and "--numerics auto" in shown
    assert_user_error(npusim("compile", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "x.npub"),
                             "--numerics", "auto"), "--calibration")
    assert not (tmp_path / "x.npub").exists()


def test_the_ctc_measure_decodes_greedily_and_counts_edits():
    from npusim.compiler.mixed import _ctc, _edits

    steps = [0, 2, 2, 0, 2, 3, 3, 0]  # blank 0: "2 2 3" (the blank splits the two 2s)
    scores = np.eye(4)[steps][None]
    assert _ctc(scores) == [(2, 2, 3)]
    assert _edits((2, 2, 3), (2, 3)) == 1 and _edits((), (1, 2)) == 2
    assert _edits((1, 2, 3), (1, 2, 3)) == 0 and _edits((1, 2, 3), (3, 2, 1)) == 2
    # a flip between a blank and a repeat changes the top-1 choices, not the text
    flipped = np.eye(4)[[0, 2, 2, 2, 0, 2, 3, 0]][None]
    assert _ctc(flipped) == _ctc(scores)
    assert (flipped.argmax(-1) != scores.argmax(-1)).any()


def test_an_empty_format_name_is_refused_not_taken_for_the_default():
    with pytest.raises(CompileError, match="unknown number format ''"):
        choose_formats(three_layers(), "tiny", _feeds(4), 0.01, ["msfp8", ""])
    with pytest.raises(CompileError, match="layer 'conv1': unknown number format ''"):
        compile_model(three_layers(), "tiny", "msfp16", layer_formats={"conv1": ""})
