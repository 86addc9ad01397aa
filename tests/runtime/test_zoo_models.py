# SPDX-License-Identifier: Apache-2.0
"""Tests for the zoo's featurizers: VGG-16, DenseNet-121, SSD300-VGG16 and ResNet-152."""

from __future__ import annotations

import collections
import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from npusim.runtime import zoo
from npusim.runtime.zoo import (
    MODELS,
    ZOO_DESCRIPTIONS,
    build_densenet121,
    build_resnet50,
    build_ssd_vgg,
    build_vgg16,
)
from npusim.runtime.zoo.ssd import ssd_source_sizes

#: Expected (input side, {output name: shape}, Conv count) of each default featurizer.
_EXPECTED: dict[str, tuple[int, dict[str, tuple[int, ...]], int]] = {
    "vgg16": (224, {"features": (1, 512, 7, 7)}, 13),
    "densenet121": (224, {"features": (1, 1024, 1, 1)}, 120),
    "ssd_vgg": (300, {"boxes": (1, 8732, 4), "scores": (1, 8732, 21)}, 13 + 2 + 8 + 12),
    "resnet152": (224, {"features": (1, 2048, 1, 1)}, 155),
    "mobilenet_v2": (224, {"features": (1, 1280, 1, 1)}, 52),
    "mobilenet_v3_small": (224, {"features": (1, 576, 1, 1)}, 52),
    "resnext26_32x4d": (224, {"features": (1, 2048, 1, 1)}, 29),
}
_NAMES = list(_EXPECTED)
#: ResNet-152 (60M weights, 1.5 GB to build and run in onnxruntime) runs with the slow
#: cases: the default suite stays under 3 GB.
_CASES = [pytest.param(n, marks=pytest.mark.slow) if n == "resnet152" else n for n in _NAMES]


@pytest.fixture(scope="module", autouse=True)
def _release_models():
    """The models and their outputs are shared by this module's tests only: free them after
    it (the suite runs in one process)."""
    yield
    _model.cache_clear()
    _outputs.cache_clear()


@functools.cache
def _model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Featurizer built once per (name, seed) for the whole module."""
    return MODELS[name](seed=seed)


@functools.cache
def _outputs(name: str) -> dict[str, np.ndarray]:
    model = _model(name)
    side = _EXPECTED[name][0]
    return dict(zip([o.name for o in model.graph.output], _run(model, _image(side)), strict=True))


def _run(model: onnx.ModelProto, image: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"images": image})


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 3, size, size)).astype(np.float32)


def _dims(value: onnx.ValueInfoProto) -> tuple[int, ...]:
    return tuple(d.dim_value for d in value.type.tensor_type.shape.dim)


def _ops(model: onnx.ModelProto) -> collections.Counter[str]:
    return collections.Counter(n.op_type for n in model.graph.node)


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


# --------------------------------------------------------------------------- registry


def test_registry() -> None:
    assert set(MODELS) == {"resnet50", "resnet152", "vgg16", "densenet121", "ssd_vgg",
                           "mobilenet_v2", "mobilenet_v3_small", "resnext26_32x4d"}
    assert set(ZOO_DESCRIPTIONS) == set(MODELS)
    assert all(len(d.splitlines()) == 1 and "M params" in d for d in ZOO_DESCRIPTIONS.values())
    assert MODELS["vgg16"] is build_vgg16 and MODELS["densenet121"] is build_densenet121
    assert {"build_vgg16", "build_densenet121", "build_ssd_vgg", "ZOO_DESCRIPTIONS"} <= set(
        zoo.__all__)


# --------------------------------------------------------------------------- all featurizers


@pytest.mark.parametrize("name", _CASES)
def test_featurizer_graph(name: str) -> None:
    model = _model(name)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].domain == "" and model.opset_import[0].version == 17
    assert len(model.opset_import) == 1 and model.ir_version == 8
    side, outputs, convs = _EXPECTED[name]
    assert [i.name for i in model.graph.input] == ["images"]
    assert _dims(model.graph.input[0]) == (1, 3, side, side)
    assert {o.name: _dims(o) for o in model.graph.output} == outputs
    assert _ops(model)["Conv"] == convs
    names = [n.name for n in model.graph.node]
    assert all(names) and len(names) == len(set(names))


@pytest.mark.parametrize("name", _CASES)
def test_featurizer_runs(name: str) -> None:
    outputs = _outputs(name)
    assert {k: v.shape for k, v in outputs.items()} == _EXPECTED[name][1]
    for value in outputs.values():
        assert value.dtype == np.float32 and np.isfinite(value).all()
        assert 1e-3 < float(value.std()) < 1e3


@pytest.mark.parametrize(
    "name", _CASES)
def test_deterministic(name: str) -> None:
    first = _model(name).SerializeToString()
    # ssd_vgg has no classifier, so its featurizer flag must not change the graph.
    assert MODELS[name](seed=0, featurizer=name != "ssd_vgg").SerializeToString() == first
    assert _model(name, seed=1).SerializeToString() != first


# --------------------------------------------------------------------------- VGG-16


def test_vgg16_structure() -> None:
    model = _model("vgg16")
    assert _ops(model) == {"Conv": 13, "Relu": 13, "MaxPool": 5}
    assert model.graph.node[-1].name == "pool5" and model.graph.node[-1].output == ["features"]
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(len(n.input) == 3 for n in convs)  # torchvision VGG convs carry a bias
    w = _inits(model)["conv5_3.weight"]
    assert w.shape == (512, 512, 3, 3)
    assert abs(float(w.std()) - np.sqrt(2.0 / (512 * 9))) < 1e-3  # He-normal
    assert _outputs("vgg16")["features"].min() >= 0.0  # max-pool of post-ReLU activations


def test_vgg16_variants() -> None:
    bn = build_vgg16(seed=0, image_size=64, batch_norm=True)
    assert _ops(bn)["BatchNormalization"] == 13
    (features,) = _run(bn, _image(64))
    assert features.shape == (1, 512, 2, 2) and np.isfinite(features).all()
    with pytest.raises(ValueError, match="image_size"):
        build_vgg16(image_size=16)


@pytest.mark.slow
def test_vgg16_classifier() -> None:
    model = build_vgg16(seed=0, featurizer=False)  # 138M parameters, ~550 MB of weights
    assert [o.name for o in model.graph.output] == ["probabilities"]
    tail = [n.op_type for n in model.graph.node][-7:]
    assert tail == ["Flatten", "Gemm", "Relu", "Gemm", "Relu", "Gemm", "Softmax"]
    assert not any(n.op_type == "Dropout" for n in model.graph.node)
    params = sum(t.size for t in _inits(model).values())
    assert params == 138_357_544  # torchvision's vgg16
    (probs,) = _run(model, _image(224))
    assert probs.shape == (1, 1000) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert probs.max() > probs.min()


# --------------------------------------------------------------------------- DenseNet-121


def test_densenet121_structure() -> None:
    model = _model("densenet121")
    ops = _ops(model)
    assert ops["BatchNormalization"] == ops["Relu"] == 121
    assert ops["Concat"] == 58 and ops["AveragePool"] == 3 and ops["MaxPool"] == 1
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    bns = [n for n in model.graph.node if n.op_type == "BatchNormalization"]
    # Pre-activation: norm1 of every dense layer but each block's first, the transitions'
    # norm and norm5 read a Concat; only norm0 and the 58 norm2 follow a Conv.
    assert collections.Counter(producers[n.input[0]] for n in bns) == {
        "Concat": 54 + 3 + 1, "Conv": 1 + 58, "MaxPool": 1, "AveragePool": 3}
    inits = _inits(model)
    assert inits["features.denseblock4.denselayer16.conv1.weight"].shape == (128, 992, 1, 1)
    assert inits["features.transition3.conv.weight"].shape == (512, 1024, 1, 1)
    params = sum(v.size for k, v in inits.items() if not k.endswith(("_mean", "_var")))
    assert params == 6_953_856  # torchvision's densenet121 without its classifier


def test_densenet121_classifier() -> None:
    model = build_densenet121(seed=0, featurizer=False)
    assert [n.op_type for n in model.graph.node][-3:] == ["Flatten", "Gemm", "Softmax"]
    assert model.SerializeToString() == build_densenet121(0, featurizer=False).SerializeToString()
    (probs,) = _run(model, _image(224))
    assert probs.shape == (1, 1000) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert probs.max() > probs.min()
    with pytest.raises(ValueError, match="image_size"):
        build_densenet121(image_size=31)


# --------------------------------------------------------------------------- SSD300


def test_ssd_structure() -> None:
    model = _model("ssd_vgg")
    assert ssd_source_sizes(300) == (38, 19, 10, 5, 3, 1)
    nodes = {n.name: n for n in model.graph.node}
    attrs = {name: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
             for name, n in nodes.items()}
    assert attrs["pool3"]["ceil_mode"] == 1 and attrs["pool4"].get("ceil_mode", 0) == 0
    assert attrs["pool5"] == {"kernel_shape": [3, 3], "strides": [1, 1], "pads": [1] * 4}
    assert attrs["conv6"]["dilations"] == [6, 6] and attrs["conv6"]["pads"] == [6] * 4
    assert attrs["conv10_2"]["pads"] == [0] * 4 and attrs["conv8_2"]["strides"] == [2, 2]
    assert nodes["conv4_3_norm.reduce_l2"].input == ["relu4_3"]
    inits = _inits(model)
    np.testing.assert_array_equal(inits["conv4_3_norm.weight"], np.full((1, 512, 1, 1), 20.0))
    shapes = [v for k, v in inits.items() if k.endswith(".shape")]
    assert len(shapes) == 12 and all((s > 0).all() for s in shapes)  # static: no -1
    assert inits["conv4_3_norm_mbox_conf.weight"].shape == (4 * 21, 512, 3, 3)
    assert inits["conv7_mbox_loc.weight"].shape == (6 * 4, 1024, 3, 3)
    ops = _ops(model)
    assert ops["Transpose"] == ops["Reshape"] == 12 and ops["Concat"] == 2
    assert not {"NonMaxSuppression", "TopK"} & set(ops)
    params = sum(v.size for k, v in inits.items() if not k.endswith((".shape", ".eps")))
    assert abs(params / 1e6 - 26.3) < 0.05  # Liu et al.'s SSD300


def test_ssd_outputs() -> None:
    outputs = _outputs("ssd_vgg")
    np.testing.assert_allclose(outputs["scores"].sum(axis=-1), 1.0, rtol=1e-5)
    assert outputs["scores"].min() >= 0.0
    # The first 38*38*4 boxes come from conv4_3, location-major like torchvision's heads.
    assert not np.allclose(outputs["boxes"][0, :5776], outputs["boxes"][0, :5776].mean())


def test_ssd_options() -> None:
    model = build_ssd_vgg(seed=0, num_classes=3)
    assert {o.name: _dims(o) for o in model.graph.output} == {
        "boxes": (1, 8732, 4), "scores": (1, 8732, 3)}
    with pytest.raises(ValueError, match="image_size"):
        build_ssd_vgg(image_size=100)
    with pytest.raises(ValueError, match="num_classes"):
        build_ssd_vgg(num_classes=0)


# --------------------------------------------------------------------------- ResNet-152


@pytest.mark.slow  # ResNet-152 twice and its onnxruntime run: 1.2 GB
def test_resnet152_entry() -> None:
    model = _model("resnet152")
    assert model.SerializeToString() == build_resnet50(seed=0, depth=152).SerializeToString()
    assert _outputs("resnet152")["features"].min() >= 0.0
