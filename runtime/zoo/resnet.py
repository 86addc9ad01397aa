# SPDX-License-Identifier: Apache-2.0
"""Offline, seeded ResNet v1.5 (torchvision-style bottleneck) ONNX model builder.

No pretrained weights are downloaded: every parameter is drawn from
``numpy.random.default_rng(seed)`` with initialisation chosen so activations stay
O(1) through the whole network, which makes the model a realistic workload for the
compiler and simulator while remaining fully reproducible.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["RESNET_STAGES", "build_resnet50"]

#: Bottleneck blocks per stage for the supported depths.
RESNET_STAGES: dict[int, tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

_OPSET = 17
_IR_VERSION = 8  # the IR version that introduced opset 17; widely supported by runtimes
_EXPANSION = 4
_BN_EPS = 1e-5
_NUM_CLASSES = 1000


class _GraphBuilder:
    """Accumulates nodes and seeded initializers for one ResNet graph."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def _param(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, output: str | None = None,
              **attrs: object) -> str:
        """Append one node named ``name``; its single output defaults to the node name."""
        out = output or name
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        return out

    def conv(self, x: str, name: str, c_in: int, c_out: int, kernel: int, stride: int = 1,
             pad: int = 0) -> str:
        """Bias-free Conv with He-normal weights (std = sqrt(2 / fan_in))."""
        fan_in = c_in * kernel * kernel
        w = self.rng.standard_normal((c_out, c_in, kernel, kernel), dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / fan_in))
        weight = self._param(f"{name}.weight", w)
        return self.node("Conv", [x, weight], name, kernel_shape=[kernel, kernel],
                          strides=[stride, stride], pads=[pad] * 4)

    def bn(self, x: str, name: str, channels: int, scale_range: tuple[float, float] = (0.5, 1.0),
           output: str | None = None) -> str:
        """Inference-mode BatchNormalization with seeded random statistics."""
        rng = self.rng
        scale = self._param(f"{name}.weight", rng.uniform(*scale_range, channels))
        bias = self._param(f"{name}.bias", rng.normal(0.0, 0.1, channels))
        mean = self._param(f"{name}.running_mean", rng.normal(0.0, 0.1, channels))
        var = self._param(f"{name}.running_var", rng.uniform(0.5, 1.5, channels))
        return self.node("BatchNormalization", [x, scale, bias, mean, var], name, output,
                          epsilon=_BN_EPS)

    def relu(self, x: str, name: str) -> str:
        return self.node("Relu", [x], name)

    def bottleneck(self, x: str, name: str, c_in: int, width: int, stride: int) -> str:
        """ResNet v1.5 bottleneck: 1x1 -> 3x3 (strided) -> 1x1, plus (projection) shortcut."""
        c_out = width * _EXPANSION
        y = self.relu(self.bn(self.conv(x, f"{name}.conv1", c_in, width, 1),
                              f"{name}.bn1", width), f"{name}.relu1")
        y = self.relu(self.bn(self.conv(y, f"{name}.conv2", width, width, 3, stride, 1),
                              f"{name}.bn2", width), f"{name}.relu2")
        # A small scale on the last BN keeps the residual stream from growing block by block.
        y = self.bn(self.conv(y, f"{name}.conv3", width, c_out, 1), f"{name}.bn3", c_out,
                    scale_range=(0.1, 0.3))
        shortcut = x
        if stride != 1 or c_in != c_out:
            proj = self.conv(x, f"{name}.downsample.0", c_in, c_out, 1, stride)
            shortcut = self.bn(proj, f"{name}.downsample.1", c_out)
        return self.relu(self.node("Add", [y, shortcut], f"{name}.add"), f"{name}.relu")

    def classifier(self, x: str, in_features: int) -> str:
        """Flatten -> Gemm (torch Linear layout, transB=1) -> Softmax(axis=1)."""
        flat = self.node("Flatten", [x], "flatten", axis=1)
        w = self.rng.normal(0.0, 1.0 / np.sqrt(in_features), (_NUM_CLASSES, in_features))
        b = self.rng.normal(0.0, 0.01, _NUM_CLASSES)
        logits = self.node("Gemm", [flat, self._param("fc.weight", w), self._param("fc.bias", b)],
                            "fc", transB=1)
        return self.node("Softmax", [logits], "softmax", "probabilities", axis=1)


def build_resnet50(seed: int = 0, *, featurizer: bool = True, depth: int = 50,
                   image_size: int = 224) -> onnx.ModelProto:
    """Build a seeded, torchvision-style ResNet v1.5 as a checked ONNX opset-17 model.

    Args:
        seed: Seed for ``numpy.random.default_rng``; equal seeds give byte-identical
            ``SerializeToString()`` output.
        featurizer: If true the graph ends at GlobalAveragePool with output ``features``
            of shape ``[1, 2048, 1, 1]``; otherwise Flatten + Gemm(2048->1000) + Softmax
            are appended and the output is ``probabilities`` of shape ``[1, 1000]``.
        depth: 50, 101 or 152 (bottleneck counts per stage from :data:`RESNET_STAGES`).
        image_size: Height and width of the ``images`` input ``[1, 3, H, W]`` (float32).

    Returns:
        The model, already validated with ``onnx.checker.check_model``.

    Raises:
        ValueError: On an unsupported ``depth`` or an ``image_size`` below 32.
    """
    if depth not in RESNET_STAGES:
        raise ValueError(f"unsupported ResNet depth {depth}; choose from {sorted(RESNET_STAGES)}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 (total stride is 32), got {image_size}")

    b = _GraphBuilder(np.random.default_rng(seed))
    x = b.relu(b.bn(b.conv("images", "conv1", 3, 64, 7, 2, 3), "bn1", 64), "relu")
    x = b.node("MaxPool", [x], "maxpool", kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    c_in = 64
    for stage, blocks in enumerate(RESNET_STAGES[depth]):
        width = 64 * 2**stage
        for block in range(blocks):
            stride = 2 if stage > 0 and block == 0 else 1
            x = b.bottleneck(x, f"layer{stage + 1}.{block}", c_in, width, stride)
            c_in = width * _EXPANSION
    if featurizer:
        out_name, out_shape = "features", [1, c_in, 1, 1]
        b.node("GlobalAveragePool", [x], "avgpool", out_name)
    else:
        out_name, out_shape = "probabilities", [1, _NUM_CLASSES]
        b.classifier(b.node("GlobalAveragePool", [x], "avgpool"), c_in)

    graph = helper.make_graph(
        b.nodes,
        f"resnet{depth}" + ("_featurizer" if featurizer else ""),
        [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                       [1, 3, image_size, image_size])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, out_shape)],
        initializer=b.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _OPSET)],
        producer_name="npusim.runtime.zoo",
        doc_string=f"ResNet-{depth} v1.5 with seeded random weights (seed={seed})",
        ir_version=_IR_VERSION,
    )
    onnx.checker.check_model(model)
    return model
