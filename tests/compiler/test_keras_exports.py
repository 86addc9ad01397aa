# SPDX-License-Identifier: Apache-2.0
"""Real exporter output in the suite: Keras applications through tf2onnx.

Each model is built with ``weights=None`` and a fixed seed, saved as a SavedModel and
converted by tf2onnx's command line (the Keras 3 route), once per session. The graphs
are what tf2onnx gives users: an NHWC input with a symbolic batch, Transposes to NCHW,
tf2onnx's own Pads, Reshape targets and constant-first arithmetic. Each must compile
with nothing but ``input_shapes``, match onnxruntime in fp32, run bit for bit like its
golden graph in msfp16, and run every node on the device.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from npusim.compiler import compile_full
from npusim.compiler.interpret import Numerics, evaluate
from npusim.runtime import Session
from npusim.runtime.analysis.reference import onnxruntime_session

pytestmark = [
    pytest.mark.slow, pytest.mark.tf,
    pytest.mark.skipif(importlib.util.find_spec("tf2onnx") is None,
                       reason="tf2onnx is not installed (pip install -e '.[test]')"),
    pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                       reason="TensorFlow is not installed"),
]

SIZE = 64
MODELS = {
    "mobilenet_v3_small": "MobileNetV3Small",
    "efficientnet_b0": "EfficientNetB0",
}

_EXPORT = """
import sys
import keras
keras.utils.set_random_seed(0)
model = getattr(keras.applications, sys.argv[1])(weights=None, input_shape=({size}, {size}, 3))
model.export(sys.argv[2], format="tf_saved_model", verbose=False)
"""


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("keras")
    paths = {}
    for name, app in MODELS.items():
        saved, path = out / f"{name}_saved", out / f"{name}.onnx"
        for cmd in ([sys.executable, "-c", _EXPORT.format(size=SIZE), app, str(saved)],
                    [sys.executable, "-m", "tf2onnx.convert", "--saved-model", str(saved),
                     "--output", str(path), "--opset", "17"]):
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0, proc.stderr[-2000:]
        paths[name] = path
    return paths


@pytest.mark.parametrize("name", list(MODELS))
def test_tf2onnx_export_runs_on_the_device(exported, name):
    model = onnx.load(str(exported[name]))
    (inp,) = [i for i in model.graph.input]
    assert not inp.type.tensor_type.shape.dim[0].HasField("dim_value"), "batch is symbolic"
    shapes = {inp.name: (1, SIZE, SIZE, 3)}
    x = {inp.name: np.random.default_rng(0).uniform(0, 255, shapes[inp.name])
         .astype(np.float32)}

    fp32 = compile_full(model, "brainwave-s10", "fp32", input_shapes=shapes)
    rows = fp32.program.metadata["placement"]
    assert {r["where"] for r in rows} <= {"device", "constant", "removed"}, \
        [r for r in rows if r["where"] == "host"]
    summary = fp32.program.metadata["summary"]
    assert summary["host_calls"] == 0 and summary["device_macs"] == summary["macs"] > 0
    (ref,) = onnxruntime_session(model).run(None, x)
    (got,) = Session(fp32.program).run(None, x)
    assert got.shape == ref.shape
    assert np.max(np.abs(got - ref)) <= 1e-4 * np.max(np.abs(ref))

    q = compile_full(model, "brainwave-s10", "msfp16", input_shapes=shapes)
    (out,) = Session(q.program).run(None, x)
    gold = evaluate(q.graph, x, Numerics(q.options.format, q.options.rounding, q.options.seed))
    np.testing.assert_array_equal(out, gold[model.graph.output[0].name], strict=True)
