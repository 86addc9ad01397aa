# SPDX-License-Identifier: Apache-2.0
"""Per-layer formats: a program that mixes them runs bit for bit as the golden model says,
and each layer costs what its format costs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx_helpers import make_model, rand

from npusim.compiler import CompileError, compile_model
from npusim.compiler.driver import compile_full
from npusim.compiler.interpret import Numerics, evaluate
from npusim.runtime.session import Session
from npusim.simulator import timing
from npusim.simulator.schedule import program_work


def three_layers(seed: int = 0):
    """x [1,8,12,12] -> conv1 3x3 -> relu -> conv2 1x1 -> relu -> gap -> flatten -> fc."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1],
                              name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], transB=1, name="fc")]
    return make_model(nodes, {"x": [1, 8, 12, 12]}, {"y": [1, 10]},
                      {"w1": rand(rng, 24, 8, 3, 3, scale=0.2), "b1": rand(rng, 24),
                       "w2": rand(rng, 40, 24, 1, 1, scale=0.2), "b2": rand(rng, 40),
                       "fw": rand(rng, 10, 40, scale=0.2), "fb": rand(rng, 10)})


def _feeds(seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((1, 8, 12, 12))
            .astype(np.float32)}


def _weight_formats(prog) -> dict[str, str]:
    wbase = prog.memory_map["weights"][0]
    dtype = {wbase + t.addr: t.dtype for t in prog.weight_tensors}
    return {rec["name"]: dtype[i.weights] for i, rec in zip(prog.instructions, prog.layers)
            if type(i).__name__ == "MvMul"}


@pytest.mark.parametrize(("default", "layers"), [
    ("msfp16", {"conv1": "msfp8", "conv2": "fp32", "fc": "mxint8"}),
    ("fp32", {"conv1": "msfp12", "fc": "msfp9"}),
    ("msfp12", {"conv2": "msfp16"}),
])
def test_a_mixed_program_is_the_golden_model_bit_for_bit(default, layers):
    model = three_layers()
    compiled = compile_full(model, "tiny", default, layer_formats=layers)
    prog = compiled.program
    got = _weight_formats(prog)
    for name, fmt in layers.items():
        (layer,) = [k for k in got if name in k]
        assert got[layer] == ("float32" if fmt == "fp32" else fmt), got
    (want,) = evaluate(compiled.graph, _feeds(), Numerics(compiled.options.format)).values()
    (out,) = Session(prog).run(None, _feeds())
    np.testing.assert_array_equal(out.view(np.uint32), want.view(np.uint32))
    # and the mix is not the uniform program
    (uniform,) = Session(compile_model(model, "tiny", default)).run(None, _feeds())
    assert not np.array_equal(out, uniform)


def test_naming_every_layer_in_the_default_format_changes_nothing():
    model = three_layers()
    plain = compile_model(model, "tiny", "msfp12")
    named = compile_model(model, "tiny", "msfp12",
                          layer_formats={"conv1": "msfp12", "conv2": "msfp12", "fc": "msfp12"})
    assert named.to_bytes() == plain.to_bytes()


def test_a_layer_costs_what_its_format_costs():
    """Its weights take its format's bytes, and the timing model prices its instruction in
    its format (the converter's depth follows the block size)."""
    model = three_layers()
    wide = compile_model(model, "tiny", "msfp16")
    narrow = compile_model(model, "tiny", "msfp16", layer_formats={"conv1": "msfp8"})
    assert len(narrow.weights) < len(wide.weights)
    cfg = wide.target
    k = next(k for k, rec in enumerate(narrow.layers) if "conv1" in rec["name"])
    i = narrow.instructions[k]
    (t,) = [t for t in narrow.weight_tensors
            if narrow.memory_map["weights"][0] + t.addr == i.weights]
    assert t.dtype == "msfp8"
    priced = program_work(narrow, cfg)[k]
    assert priced == timing.work(i, cfg, cfg.format("msfp8"), t.nbytes)
    assert priced != timing.work(i, cfg, cfg.format("msfp16"), t.nbytes)


def test_bad_layer_names_and_formats_are_named():
    with pytest.raises(CompileError, match=r"no matrix-unit layer named 'nope'.*conv1"):
        compile_model(three_layers(), "tiny", "msfp16", layer_formats={"nope": "msfp8"})
    with pytest.raises(CompileError, match=r"layer 'conv1'.*unknown number format"):
        compile_model(three_layers(), "tiny", "msfp16", layer_formats={"conv1": "msfp7"})
