# SPDX-License-Identifier: Apache-2.0
"""Small ONNX graphs for tests: a few nodes each, seeded weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, list[int]],
               outputs: dict[str, list[int] | None], weights: dict[str, np.ndarray] | None = None,
               opset: int = 17) -> onnx.ModelProto:
    """A checked model from nodes, named input shapes, outputs and initializers."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (weights or {}).items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def small_featurizer(seed: int = 0, channels: int = 8) -> onnx.ModelProto:
    """[1,3,224,224] -> Conv 4x4 stride 4 -> Relu -> GlobalAveragePool -> features
    [1,channels,1,1]: a featurizer that takes milliseconds, for pipeline and serving tests."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["images", "w", "b"], ["c"], kernel_shape=[4, 4],
                              strides=[4, 4], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["features"], name="gap")]
    return make_model(nodes, {"images": [1, 3, 224, 224]}, {"features": [1, channels, 1, 1]},
                      {"w": rand(rng, channels, 3, 4, 4, scale=0.05), "b": rand(rng, channels)})


def conv_block(seed: int = 0, residual: bool = True) -> onnx.ModelProto:
    """x -> Conv 3x3 -> BN -> [+ x] -> Relu -> MaxPool -> GAP -> Flatten -> Gemm -> Softmax."""
    rng = np.random.default_rng(seed)
    c = 8
    w = {"w": rand(rng, c, c, 3, 3, scale=0.3), "b": rand(rng, c),
         "s": rng.uniform(0.5, 1.5, c).astype(np.float32), "sh": rand(rng, c),
         "m": rand(rng, c, scale=0.1), "v": rng.uniform(0.5, 1.5, c).astype(np.float32),
         "fw": rand(rng, c, 10, scale=0.3), "fb": rand(rng, 10)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "sh", "m", "v"], ["bn"],
                              name="bn")]
    last = "bn"
    if residual:
        nodes.append(helper.make_node("Add", ["bn", "x"], ["sum"], name="add"))
        last = "sum"
    nodes += [helper.make_node("Relu", [last], ["r"], name="relu"),
              helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2],
                               name="pool"),
              helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "fw", "fb"], ["logits"], name="fc"),
              helper.make_node("Softmax", ["logits"], ["y"], axis=1, name="softmax")]
    return make_model(nodes, {"x": [1, c, 8, 8]}, {"y": [1, 10]}, w)
