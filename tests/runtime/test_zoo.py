# SPDX-License-Identifier: Apache-2.0
"""Tests for npusim.runtime.zoo: the seeded ResNet builder and the seeded onnx "light" models."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from npusim.runtime import zoo
from npusim.runtime.zoo import (
    LIGHT_MODELS,
    MODELS,
    build_resnet50,
    light_model_input,
    light_model_path,
    load_light_model,
)

#: Light models whose load + check + session creation exceeds ~10 s on a small CPU box.
_SLOW_LIGHT = frozenset({"vgg19", "zfnet512"})
"""Light models whose 60M+ weights held twice over (the model, onnxruntime's session)
made the README command's peak memory (ZFNet-512: 3.05 GB): they run with the slow cases."""


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # the light models carry an unused initializer (warning)
    session = ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(None, feeds)


def _image(size: int = 224, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, size, size)).astype(np.float32)


@pytest.fixture(scope="module")
def resnet50() -> onnx.ModelProto:
    return build_resnet50(seed=0)


# --------------------------------------------------------------------------- resnet


def test_registry() -> None:
    assert MODELS["resnet50"] is build_resnet50


def test_resnet50_featurizer_runs(resnet50: onnx.ModelProto) -> None:
    onnx.checker.check_model(resnet50, full_check=True)
    assert [o.name for o in resnet50.graph.output] == ["features"]
    assert [i.name for i in resnet50.graph.input] == ["images"]
    assert resnet50.opset_import[0].version == 17
    (features,) = _run(resnet50, {"images": _image()})
    assert features.shape == (1, 2048, 1, 1)
    assert np.isfinite(features).all()
    assert features.min() >= 0.0  # GAP of post-ReLU activations
    assert not np.all(features == features.flat[0])
    assert 0.01 < float(features.std()) < 100.0


def test_resnet50_structure(resnet50: onnx.ModelProto) -> None:
    names = [n.name for n in resnet50.graph.node]
    assert len(names) == len(set(names))
    assert all(names)
    for expected in ("conv1", "bn1", "maxpool", "layer1.0.conv1", "layer1.0.bn1",
                     "layer1.0.downsample.0", "layer4.2.add", "avgpool"):
        assert expected in names
    ops = collections.Counter(n.op_type for n in resnet50.graph.node)
    assert ops["Conv"] == ops["BatchNormalization"] == 53
    assert ops["Add"] == 16
    assert ops["MaxPool"] == ops["GlobalAveragePool"] == 1
    assert all(len(n.input) == 2 for n in resnet50.graph.node if n.op_type == "Conv")  # no bias
    # ResNet v1.5: the stride sits on the 3x3 conv of each stage's first block.
    strides = {n.name: a.ints for n in resnet50.graph.node for a in n.attribute
               if n.op_type == "Conv" and a.name == "strides"}
    assert strides["layer2.0.conv1"] == [1, 1] and strides["layer2.0.conv2"] == [2, 2]


def test_resnet50_deterministic(resnet50: onnx.ModelProto) -> None:
    assert build_resnet50(seed=0).SerializeToString() == resnet50.SerializeToString()
    assert build_resnet50(seed=1).SerializeToString() != resnet50.SerializeToString()


def test_resnet50_classifier() -> None:
    model = build_resnet50(seed=0, featurizer=False)
    assert [o.name for o in model.graph.output] == ["probabilities"]
    assert [n.op_type for n in model.graph.node][-3:] == ["Flatten", "Gemm", "Softmax"]
    (probs,) = _run(model, {"images": _image()})
    assert probs.shape == (1, 1000)
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def _deep_resnet(depth: int, convs: int):
    model = build_resnet50(seed=0, depth=depth, image_size=96)
    assert sum(n.op_type == "Conv" for n in model.graph.node) == convs
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 96, 96]
    return model


def test_resnet_101_is_built() -> None:
    _deep_resnet(101, 104)


@pytest.mark.slow  # compiled and run: ResNet-101 adds about 0.5 GB to a process's peak
@pytest.mark.parametrize(("depth", "convs"), [(101, 104), (152, 155)])
def test_resnet_depths(depth: int, convs: int) -> None:
    model = _deep_resnet(depth, convs)
    (features,) = _run(model, {"images": _image(96)})
    assert features.shape == (1, 2048, 1, 1)
    assert np.isfinite(features).all()
    assert 0.01 < float(features.std()) < 100.0


def test_resnet_bad_args() -> None:
    with pytest.raises(ValueError, match="depth"):
        build_resnet50(depth=34)
    with pytest.raises(ValueError, match="image_size"):
        build_resnet50(image_size=16)


# --------------------------------------------------------------------------- light


def test_light_models_discovered() -> None:
    assert {"resnet50", "squeezenet", "vgg19"} <= set(LIGHT_MODELS)
    assert LIGHT_MODELS == tuple(sorted(LIGHT_MODELS))
    assert zoo.LIGHT_MODELS == LIGHT_MODELS
    assert "LIGHT_MODELS" in dir(zoo)
    assert light_model_path("squeezenet").name == "light_squeezenet.onnx"


def test_light_unknown_name() -> None:
    with pytest.raises(ValueError, match="no_such_net") as info:
        load_light_model("no_such_net")
    assert "squeezenet" in str(info.value)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_LIGHT else n for n in LIGHT_MODELS],
)
def test_light_model_runs(name: str) -> None:
    model = load_light_model(name, seed=0)
    graph = model.graph
    assert not any(n.op_type == "ConstantOfShape" for n in graph.node)
    init_names = {t.name for t in graph.initializer}
    assert not any(t.endswith("__SHAPE") for t in init_names)
    # Every tensor a node reads is produced by a node, an initializer or a true input.
    produced = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    assert {i for n in graph.node for i in n.input if i} <= produced | init_names
    onnx.checker.check_model(model)
    feeds = light_model_input(model, seed=0)
    assert feeds and not set(feeds) & init_names
    outputs = _run(model, feeds)
    assert outputs
    for out in outputs:
        assert np.isfinite(out).all()


@pytest.mark.parametrize("name", ["squeezenet", "densenet121"])
def test_light_deterministic(name: str) -> None:
    first = load_light_model(name, seed=3).SerializeToString()
    assert load_light_model(name, seed=3).SerializeToString() == first
    assert load_light_model(name, seed=4).SerializeToString() != first


def test_light_weight_roles() -> None:
    model = load_light_model("resnet50", seed=0)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    w = inits["gpu_0/res5_2_branch2b_w_0"]  # 3x3 conv, 512 -> 512
    assert w.shape == (512, 512, 3, 3) and w.dtype == np.float32
    assert abs(float(w.std()) - np.sqrt(2.0 / (512 * 9))) < 1e-3
    var = inits["gpu_0/res5_2_branch2b_bn_riv_0"]
    assert 0.5 <= var.min() and var.max() <= 1.5


def test_light_model_input() -> None:
    model = load_light_model("squeezenet")
    feeds = light_model_input(model, seed=7)
    assert list(feeds) == ["data_0"]
    assert feeds["data_0"].shape == (1, 3, 224, 224)
    assert feeds["data_0"].dtype == np.float32
    np.testing.assert_array_equal(feeds["data_0"], light_model_input(model, seed=7)["data_0"])
