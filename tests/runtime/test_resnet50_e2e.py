# SPDX-License-Identifier: Apache-2.0
"""ResNet-50 end to end: onnxruntime agreement in fp32, bit-exactness in every format.

Two graphs: the onnx package's ``light_resnet50`` with seeded weights substituted
for its constant generators, and the project's own ResNet-50 builder.
"""

from __future__ import annotations

import gc

import numpy as np
import onnxruntime as ort
import pytest

from npusim.compiler import compile_full
from npusim.compiler.interpret import Numerics, evaluate
from npusim.runtime import Session
from npusim.runtime.zoo import build_resnet50, light_model_input, load_light_model
from npusim.simulator.numerics import FORMAT_NAMES, get_format
from npusim.simulator.program import Program

MX_MINIFLOAT = [n for n in FORMAT_NAMES if get_format(n).is_minifloat]
"""The OCP MX minifloat formats: the simulator's general path, a few seconds per ResNet-50
run each, so their ResNet-50 cases run with the slow ones (tests/simulator/test_device.py
runs every format on small models in the fast suite)."""


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(b))


@pytest.fixture(scope="module", params=["builder", pytest.param("light", marks=pytest.mark.slow)])
def model_and_input(request):
    if request.param == "builder":
        model = build_resnet50(seed=0)
        feeds = {"images": np.random.default_rng(0).standard_normal((1, 3, 224, 224))
                 .astype(np.float32)}
    else:
        model = load_light_model("resnet50", seed=0)
        feeds = light_model_input(model, seed=0)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = sess.run(None, feeds)[0]
    return model, feeds, ref


def test_fp32_matches_onnxruntime(model_and_input):
    model, feeds, ref = model_and_input
    prog = compile_full(model, numerics="fp32").program
    (out,) = Session(Program.from_bytes(prog.to_bytes())).run(None, feeds)
    assert out.shape == ref.shape
    assert _rel(out, ref) < 1e-4
    np.testing.assert_allclose(out, ref, rtol=1e-3, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=[pytest.mark.slow] if f in MX_MINIFLOAT
                                              else []) for f in FORMAT_NAMES])
def test_simulator_is_bit_identical_to_golden_graph(model_and_input, fmt):
    model, feeds, ref = model_and_input
    compiled = compile_full(model, numerics=fmt)
    # through the file format, as a user would run it
    sess = Session(Program.from_bytes(compiled.program.to_bytes()))
    (out,) = sess.run(None, feeds)
    golden = evaluate(compiled.graph, feeds, Numerics(compiled.options.format))
    (gold,) = golden.values()
    assert np.array_equal(out, gold), f"{fmt}: simulator differs from golden evaluation"
    assert sess.last_stats.cycles > 0
    assert np.isfinite(out).all()


@pytest.mark.slow  # seven compiles of ResNet-50: 16 s, and most of the suite's peak memory
def test_bfp_error_against_fp32_is_bounded(model_and_input):
    model, feeds, _ = model_and_input
    results = {}
    formats = [f for f in FORMAT_NAMES if f not in MX_MINIFLOAT]
    for fmt in formats:
        (results[fmt],) = Session(compile_full(model, numerics=fmt).program).run(None, feeds)
        gc.collect()  # a compiled graph holds its weights in a reference cycle
    errors = {f: _rel(results[f], results["fp32"]) for f in formats[1:]}
    assert errors["msfp16"] < 0.02
    assert errors["mxint8"] < 0.02
    # more mantissa bits never hurt: ms-fp9 beats ms-fp8, MSFP16 beats MSFP12
    assert errors["msfp9"] < errors["msfp8"] and errors["msfp16"] < errors["msfp12"]
    assert all(e > 0 for e in errors.values())


@pytest.mark.slow
def test_mx_error_against_fp32_is_bounded(model_and_input):
    """The MX minifloat formats on ResNet-50 (measured: builder 0.067 E4M3, 0.100 E5M2,
    0.100 E3M2, 0.046 E2M3, 0.271 E2M1; light 0.013 to 0.050). A third mantissa bit
    beats a wider exponent: the spec's scale puts a block's maximum in the element's top
    binade, and the part of it above the largest normal (E4M3: 448..512) saturates."""
    model, feeds, _ = model_and_input
    (ref,) = Session(compile_full(model, numerics="fp32").program).run(None, feeds)
    errors = {}
    for fmt in MX_MINIFLOAT:
        (out,) = Session(compile_full(model, numerics=fmt).program).run(None, feeds)
        errors[fmt] = _rel(out, ref)
    assert all(0 < e < 0.15 for f, e in errors.items() if f != "mxfp4_e2m1"), errors
    assert errors["mxfp4_e2m1"] < 0.4
    assert errors["mxfp8_e4m3"] < errors["mxfp8_e5m2"]
    assert errors["mxfp6_e2m3"] < errors["mxfp6_e3m2"]
    assert max(e for f, e in errors.items() if f != "mxfp4_e2m1") < errors["mxfp4_e2m1"]
