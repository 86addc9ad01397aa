# SPDX-License-Identifier: Apache-2.0
"""Pipelines: preprocessing, accelerator and classifier stages, devices and device pools."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx_helpers import conv_block, make_model, small_featurizer

from npusim.compiler import compile_model
from npusim.runtime.device import Device, DevicePool, DeviceStats
from npusim.runtime.serving.pipeline import (
    AcceleratorStage,
    ModelDefinition,
    PipelineError,
    PipelineInputError,
    TensorflowStage,
    TensorSpec,
    import_tensorflow,
)
from npusim.runtime.session import Session
from npusim.simulator.config import load_device
from npusim.simulator.program import ProgramError

needs_tf = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                              reason="TensorFlow is not installed")
MEANS = np.array([123.68, 116.779, 103.939])  # R, G, B as the Azure SDK documents them


@pytest.fixture(scope="module")
def programs():
    """Two programs for one device: the small featurizer (A) and a conv block (B)."""
    return (compile_model(small_featurizer(), "brainwave-s10"),
            compile_model(conv_block(), "brainwave-s10"))


def feeds_a(seed: int) -> dict:
    x = np.random.default_rng(seed).uniform(-100, 100, (1, 3, 224, 224)).astype(np.float32)
    return {"images": x}


def feeds_b(seed: int) -> dict:
    return {"x": np.random.default_rng(seed).standard_normal((1, 8, 8, 8)).astype(np.float32)}


def test_importing_the_runtime_does_not_import_tensorflow():
    code = ("import sys, npusim.runtime, npusim.runtime.device, npusim.runtime.serving.pipeline, "
            "npusim.runtime.serving.package, npusim.runtime.serving.tfstages; "
            "npusim.runtime.ModelDefinition; "
            "npusim.runtime.featurizer_pipeline; "
            "assert 'tensorflow' not in sys.modules, 'tensorflow imported'")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr


# --- devices ---
def test_device_load_replaces_and_refuses_other_targets(programs):
    a, b = programs
    dev = Device("brainwave-s10")
    assert dev.program is None and dev.stats == DeviceStats()
    dev.load(a)
    ya = dev.run(feeds_a(1))
    assert ya["features"].shape == (1, 8, 1, 1)
    dev.load(b)
    assert dev.program is b
    with pytest.raises(ValueError, match="unknown input 'images'"):
        dev.run(feeds_a(1))
    yb = dev.run(feeds_b(1))
    np.testing.assert_array_equal(yb["y"], Session(b).run(None, feeds_b(1))[0])
    st = dev.stats
    assert st.runs == 2 and st.busy_seconds > 0 and st.last is not None
    expected = (Session(a).device.stats.latency_us + st.last.latency_us) * 1e-6
    assert st.simulated_seconds == pytest.approx(expected)
    tiny = compile_model(conv_block(), "tiny")
    with pytest.raises(ProgramError, match="built for device 'tiny'"):
        dev.load(tiny)
    assert dev.program is b  # a refused program leaves the loaded one in place


def test_pool_isolates_requests(programs):
    """Request B gives the same bits alone, after other requests, and under concurrency."""
    a, b = programs
    alone = {s: DevicePool(1, "brainwave-s10").run(b, feeds_b(s))[0]["y"] for s in range(4)}
    ref_a = {s: Session(a).run(None, feeds_a(s))[0] for s in range(3)}
    pool = DevicePool(1, "brainwave-s10")
    pool.run(a, feeds_a(0))
    pool.run(b, feeds_b(3))  # leaves another request's data in the device's memory
    np.testing.assert_array_equal(pool.run(b, feeds_b(0))[0]["y"], alone[0])

    pool = DevicePool(2, "brainwave-s10")
    assert pool.size == 2
    jobs = [("a", s % 3) if i % 3 == 0 else ("b", s % 4) for i, s in enumerate(range(18))]
    results: dict[int, np.ndarray] = {}
    errors = []

    def worker(idx: int, kind: str, seed: int) -> None:
        try:
            prog, feeds, key = (a, feeds_a(seed), "features") if kind == "a" else \
                (b, feeds_b(seed), "y")
            out, stats = pool.run(prog, feeds)
            assert stats.cycles > 0
            results[idx] = out[key]
        except Exception as exc:  # reported below; a thread's assert would be lost
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, (kind, seed) in enumerate(jobs):
        np.testing.assert_array_equal(results[i], (ref_a if kind == "a" else alone)[seed])
    st = pool.stats()
    assert st.runs == len(jobs) and st.simulated_seconds > 0 and st.last is not None


def test_pool_refuses_bad_sizes_and_other_targets(programs):
    with pytest.raises(ValueError, match="at least one device"):
        DevicePool(0, "brainwave-s10")
    pool = DevicePool(1, "tiny")
    with pytest.raises(ProgramError, match="built for device 'brainwave-s10'"):
        pool.run(programs[0], feeds_a(0))
    assert pool.stats().runs == 0


# --- accelerator stage and pipelines without TensorFlow ---
def test_accelerator_stage_runs_a_batch_row_by_row(programs):
    a, _ = programs
    stage = AcceleratorStage(a)
    assert stage.name == "featurizer"
    assert stage.inputs == [TensorSpec("images", "float32", (None, 3, 224, 224))]
    assert stage.outputs == [TensorSpec("features", "float32", (None, 8, 1, 1))]
    batch = np.concatenate([feeds_a(s)["images"] for s in range(3)])
    out = stage.run({"images": batch})["features"]
    by_row = np.concatenate([Session(a).run(None, feeds_a(s))[0] for s in range(3)])
    np.testing.assert_array_equal(out, by_row)
    pooled = stage.run({"images": batch}, pool=DevicePool(2, a.target))["features"]
    np.testing.assert_array_equal(pooled, by_row)
    with pytest.raises(PipelineInputError, match="input 'images' has shape"):
        stage.run({"images": batch[:, :, :100]})


def test_model_definition_checks_stages(programs):
    a, b = programs
    model = ModelDefinition("m", 2, [AcceleratorStage(a, "one")])
    assert model.inputs == AcceleratorStage(a).inputs
    assert model.device_config() == load_device("brainwave-s10")
    assert model.signature() == {
        "inputs": {"images": {"dtype": "float32", "shape": [None, 3, 224, 224]}},
        "outputs": {"features": {"dtype": "float32", "shape": [None, 8, 1, 1]}}}
    with pytest.raises(PipelineError, match="stage 'one' output 'features'.*stage 'two' input"):
        model.add(AcceleratorStage(b, "two"))  # [N,8,1,1] does not fit [N,8,8,8]
    with pytest.raises(PipelineError, match="already has a stage named 'one'"):
        model.add(AcceleratorStage(a, "one"))
    with pytest.raises(PipelineError, match="no accelerator stage"):
        ModelDefinition("empty").device_config()
    relu = make_model([helper.make_node("Relu", ["y"], ["z"])], {"y": [1, 10]}, {"z": [1, 10]})
    tiny = AcceleratorStage(compile_model(relu, "tiny"), "tiny")
    mixed = ModelDefinition("mixed", 1, [AcceleratorStage(b, "s10"), tiny])
    with pytest.raises(PipelineError, match="'s10' and 'tiny' were compiled for different"):
        mixed.device_config()
    for bad in ("", "a/b"):
        with pytest.raises(PipelineError, match="model name"):
            ModelDefinition(bad)
    with pytest.raises(PipelineError, match="version"):
        ModelDefinition("m", 0)


# --- TensorFlow stages ---
def png(tf, pixels: np.ndarray) -> bytes:
    return tf.io.encode_png(pixels.astype(np.uint8)).numpy()


def bilinear(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres (tf.image.resize, no antialiasing)."""
    def axis(n_in, n_out):
        x = np.clip((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0, n_in - 1)
        lo = np.floor(x).astype(int)
        return lo, np.minimum(lo + 1, n_in - 1), x - lo

    (y0, y1, fy), (x0, x1, fx) = axis(img.shape[0], out_h), axis(img.shape[1], out_w)
    img = img.astype(np.float64)
    fx = fx[None, :, None]
    top = img[y0][:, x0] * (1 - fx) + img[y0][:, x1] * fx
    bottom = img[y1][:, x0] * (1 - fx) + img[y1][:, x1] * fx
    return top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]


def documented_preprocess(img: np.ndarray) -> np.ndarray:
    """The Azure SDK's steps, for an image whose resized long side is a whole number."""
    h, w = img.shape[:2]
    nh, nw = (256, w * 256 // h) if h <= w else (h * 256 // w, 256)
    assert nh * w == nw * h  # the aspect ratio is kept exactly: no rounding to check
    r = bilinear(img, nh, nw)
    top, left = (nh - 224) // 2, (nw - 224) // 2
    crop = r[top:top + 224, left:left + 224] - MEANS
    return crop[:, :, ::-1].transpose(2, 0, 1)


@pytest.fixture(scope="module")
def tf():
    return import_tensorflow()


@pytest.fixture(scope="module")
def small_model(tmp_path_factory, tf):
    from npusim.runtime.serving.tfstages import featurizer_pipeline

    path = tmp_path_factory.mktemp("small") / "small.onnx"
    onnx.save(small_featurizer(), path)
    return featurizer_pipeline(path, "brainwave-s10", seed=3, classes=10)


@needs_tf
@pytest.mark.tf
def test_preprocess_hand_checked_colour(tf):
    from npusim.runtime.serving.tfstages import preprocess_stage

    stage = preprocess_stage()
    wide = np.broadcast_to(np.array([200, 100, 50]), (30, 60, 3))  # R, G, B
    tall = np.broadcast_to(np.array([0, 255, 10]), (70, 35, 3))
    out = stage.run({"images": np.array([png(tf, wide), png(tf, tall)], dtype=object)})
    x = out["images"]
    assert x.shape == (2, 3, 224, 224) and x.dtype == np.float32
    # BGR order, means of R/G/B subtracted from R/G/B
    np.testing.assert_allclose(x[0].reshape(3, -1).T, [[50 - 103.939, 100 - 116.779,
                                                       200 - 123.68]] * 224 * 224, atol=1e-4)
    np.testing.assert_allclose(x[1].reshape(3, -1).T, [[10 - 103.939, 255 - 116.779,
                                                       0 - 123.68]] * 224 * 224, atol=1e-4)


@needs_tf
@pytest.mark.tf
def test_preprocess_follows_the_documented_steps(tf):
    from npusim.runtime.serving.tfstages import preprocess_stage

    rng = np.random.default_rng(7)
    wide = rng.integers(0, 256, (32, 50, 3))  # -> 256 x 400, crop rows 16.., columns 88..
    tall = rng.integers(0, 256, (50, 32, 3))
    stage = preprocess_stage()
    out = stage.run({"images": np.array([png(tf, wide), png(tf, tall)], dtype=object)})
    for img, got in zip((wide, tall), out["images"]):
        np.testing.assert_allclose(got, documented_preprocess(img), atol=2e-3)
    # a JPEG (lossy: compared with its decoded pixels), grey (one channel made three)
    jpeg = tf.io.encode_jpeg(wide.astype(np.uint8)).numpy()
    grey = png(tf, wide[:, :, :1])
    got = stage.run({"images": np.array([jpeg, grey], dtype=object)})["images"]
    decoded = tf.io.decode_jpeg(jpeg, channels=3).numpy()
    assert np.abs(decoded.astype(int) - wide).mean() > 1  # really lossy: a distinct check
    np.testing.assert_allclose(got[0], documented_preprocess(decoded), atol=2e-3)
    np.testing.assert_allclose(got[1], documented_preprocess(np.repeat(wide[:, :, :1], 3, 2)),
                               atol=2e-3)
    empty = stage.run({"images": np.array([], dtype=object)})["images"]
    assert empty.shape == (0, 3, 224, 224)


@needs_tf
@pytest.mark.tf
def test_bad_requests_name_the_problem(small_model, tf):
    good = png(tf, np.zeros((20, 30, 3)))
    with pytest.raises(PipelineInputError, match="stage 'preprocess'.*'images'.*image file"):
        small_model.run({"images": np.array([good, b"not an image"], dtype=object)})
    cases = [
        ({"pictures": np.array([good], dtype=object)}, "unknown input 'pictures'"),
        ({}, "missing input 'images'"),
        ({"images": np.zeros(1, np.float32)}, "input 'images' has dtype float32, expected string"),
        ({"images": np.array(["text"])}, "input 'images' has dtype <U4"),
        ({"images": np.array([good, 3], dtype=object)}, "input 'images' must hold bytes"),
        ({"images": np.array(good, dtype=object)}, r"input 'images' has shape \[\]"),
        ({"images": np.array([[good]], dtype=object)}, r"input 'images' has shape \[1, 1\]"),
    ]
    for feeds, message in cases:
        with pytest.raises(PipelineInputError, match=message):
            small_model.run(feeds)
    head = small_model.stages[2]
    with pytest.raises(PipelineInputError, match="stage 'classifier'.*'features'.*reshape"):
        head.run({"features": np.zeros((2, 9), np.float32)})


@needs_tf
@pytest.mark.tf
def test_pipeline_equals_the_stages_by_hand(small_model, tf):
    from npusim.runtime.serving.tfstages import classifier_weights

    pre, acc, head = small_model.stages
    assert [s.kind for s in small_model.stages] == ["tensorflow", "accelerator", "tensorflow"]
    assert small_model.signature() == {
        "inputs": {"images": {"dtype": "string", "shape": [None]}},
        "outputs": {"output_alias": {"dtype": "float32", "shape": [None, 10]}}}
    rng = np.random.default_rng(11)
    images = np.array([png(tf, rng.integers(0, 256, (40 + 9 * i, 64 - 5 * i, 3)))
                       for i in range(3)], dtype=object)
    out = small_model.run({"images": images})["output_alias"]
    x = pre.run({"images": images})["images"]
    sess = Session(acc.program)
    feats = np.concatenate([sess.run(None, {"images": x[i:i + 1]})[0] for i in range(3)])
    np.testing.assert_array_equal(out, head.run({"features": feats})["output_alias"])
    w, b = classifier_weights(8, 10, seed=3)
    logits = feats.reshape(3, 8).astype(np.float64) @ w + b
    probs = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(out, probs / probs.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    pooled = small_model.run({"images": images}, pool=DevicePool(2, small_model.device_config()))
    np.testing.assert_array_equal(pooled["output_alias"], out)


@needs_tf
@pytest.mark.tf
def test_classifier_flattens_its_input(tf):
    from npusim.runtime.serving.tfstages import classifier_stage

    head = classifier_stage(8, classes=5, seed=1)
    assert head.inputs == [TensorSpec("features", "float32", None)]
    assert head.outputs == [TensorSpec("output_alias", "float32", (None, 5))]
    f = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    y = head.run({"features": f})["output_alias"]
    for shape in ((4, 8, 1, 1), (4, 2, 2, 2)):
        np.testing.assert_array_equal(head.run({"features": f.reshape(shape)})["output_alias"], y)
    assert not np.allclose(y, classifier_stage(8, 5, seed=2).run({"features": f})["output_alias"])


@needs_tf
@pytest.mark.tf
def test_stage_from_function_and_links(tf):
    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x"),
                                  tf.TensorSpec([None], tf.float32, name="y")])
    def sum_diff(x, y):
        return x + y, x - y

    stage = TensorflowStage.from_function(sum_diff, "arith", ["sum", "diff"])
    assert [s.name for s in stage.inputs] == ["x", "y"]
    assert stage.outputs == [TensorSpec("sum", "float32", (None,)),
                             TensorSpec("diff", "float32", (None,))]
    out = stage.run({"x": np.array([3.0, 1.0]), "y": np.array([1, 2])})
    np.testing.assert_array_equal(out["sum"], [4, 3])
    np.testing.assert_array_equal(out["diff"], [2, -1])
    with pytest.raises(PipelineError, match="returns 2 tensor"):
        TensorflowStage.from_function(sum_diff, "arith", ["only"])
    with pytest.raises(PipelineError, match="input_signature"):
        TensorflowStage.from_function(tf.function(lambda x: x), "nosig", ["y"])
    from npusim.runtime.serving.tfstages import preprocess_stage

    with pytest.raises(PipelineError, match="'preprocess' gives 1 output.*'arith' takes 2"):
        ModelDefinition("m", 1, [preprocess_stage(), stage])


@needs_tf
@pytest.mark.tf
@pytest.mark.slow
def test_resnet50_featurizer_pipeline(tf):
    from npusim.runtime.serving.tfstages import featurizer_pipeline

    model = featurizer_pipeline()  # resnet50, brainwave-s10, ms-fp8, 1000 classes
    pre, acc, head = model.stages
    assert acc.outputs == [TensorSpec("features", "float32", (None, 2048, 1, 1))]
    assert model.name == "resnet50" and model.device_config().name == "brainwave-s10"
    img = np.random.default_rng(5).integers(0, 256, (180, 240, 3)).astype(np.uint8)
    jpeg = tf.io.encode_jpeg(img).numpy()
    out = model.run({"images": np.array([jpeg], dtype=object)})["output_alias"]
    assert out.shape == (1, 1000) and abs(float(out.sum()) - 1) < 1e-5
    x = pre.run({"images": np.array([jpeg], dtype=object)})["images"]
    (feats,) = Session(acc.program).run(None, {"images": x})
    np.testing.assert_array_equal(out, head.run({"features": feats})["output_alias"])
