# SPDX-License-Identifier: Apache-2.0
"""Offline, seeded DenseNet-121 (torchvision layout) ONNX model builder.

Node names follow torchvision's state-dict keys (``features.conv0``,
``features.denseblock1.denselayer1.norm1``, ``features.transition1.conv`` ...). DenseNet is
pre-activation: every dense layer and transition starts with a BatchNormalization that reads
a Concat (not a Conv), so those BNs cannot be folded into a preceding conv.
"""

from __future__ import annotations

import numpy as np
import onnx

from .vgg import _ConvNetBuilder

__all__ = ["DENSENET121_BLOCKS", "build_densenet121"]

#: Dense layers per block for DenseNet-121.
DENSENET121_BLOCKS: tuple[int, ...] = (6, 12, 24, 16)

_GROWTH = 32
_BN_SIZE = 4  # the bottleneck 1x1 conv emits bn_size * growth channels
_INIT_FEATURES = 64
_COMPRESSION = 0.5


def _dense_layer(b: _ConvNetBuilder, features: list[str], name: str, c_in: int) -> str:
    """BN-ReLU-Conv1x1 (-> 128) - BN-ReLU-Conv3x3 (-> 32) on the concat of ``features``."""
    x = features[0] if len(features) == 1 else b.node("Concat", features, f"{name}.cat", axis=1)
    width = _BN_SIZE * _GROWTH
    x = b.relu(b.bn(x, f"{name}.norm1", c_in), f"{name}.relu1")
    x = b.conv(x, f"{name}.conv1", c_in, width, 1)
    x = b.relu(b.bn(x, f"{name}.norm2", width), f"{name}.relu2")
    return b.conv(x, f"{name}.conv2", width, _GROWTH, 3, pad=1)


def _dense_block(b: _ConvNetBuilder, x: str, name: str, c_in: int, layers: int) -> str:
    """``layers`` dense layers; each reads the concat of the block input and earlier outputs."""
    features = [x]
    for i in range(1, layers + 1):
        features.append(_dense_layer(b, features, f"{name}.denselayer{i}",
                                     c_in + (i - 1) * _GROWTH))
    return b.node("Concat", features, f"{name}.cat", axis=1)


def build_densenet121(seed: int = 0, *, featurizer: bool = True,
                      image_size: int = 224) -> onnx.ModelProto:
    """Build a seeded, torchvision-style DenseNet-121 as a checked ONNX opset-17 model.

    Args:
        seed: Seed for ``numpy.random.default_rng``; equal seeds give byte-identical
            ``SerializeToString()`` output.
        featurizer: If true the graph ends at GlobalAveragePool with output ``features`` of
            shape ``[1, 1024, 1, 1]``; otherwise Flatten + Gemm(1024->1000) + Softmax are
            appended and the output is ``probabilities`` of shape ``[1, 1000]``.
        image_size: Height and width of the ``images`` input ``[1, 3, H, W]`` (float32).

    Returns:
        The model, already validated with ``onnx.checker.check_model``.

    Raises:
        ValueError: On an ``image_size`` below 32 (the total stride).

    Example:
        >>> model = build_densenet121(seed=0, image_size=64)
        >>> sum(n.op_type == "Conv" for n in model.graph.node)
        120
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 (total stride is 32), got {image_size}")
    b = _ConvNetBuilder(np.random.default_rng(seed))
    x = b.conv("images", "features.conv0", 3, _INIT_FEATURES, 7, 2, 3)
    x = b.relu(b.bn(x, "features.norm0", _INIT_FEATURES), "features.relu0")
    x = b.node("MaxPool", [x], "features.pool0", kernel_shape=[3, 3], strides=[2, 2],
               pads=[1] * 4)
    channels = _INIT_FEATURES
    for i, layers in enumerate(DENSENET121_BLOCKS, start=1):
        x = _dense_block(b, x, f"features.denseblock{i}", channels, layers)
        channels += layers * _GROWTH
        if i < len(DENSENET121_BLOCKS):
            name, c_out = f"features.transition{i}", int(channels * _COMPRESSION)
            x = b.relu(b.bn(x, f"{name}.norm", channels), f"{name}.relu")
            x = b.conv(x, f"{name}.conv", channels, c_out, 1)
            x = b.node("AveragePool", [x], f"{name}.pool", kernel_shape=[2, 2], strides=[2, 2])
            channels = c_out
    x = b.relu(b.bn(x, "features.norm5", channels), "features.relu5")
    if featurizer:
        b.node("GlobalAveragePool", [x], "avgpool", "features")
        outputs = [("features", [1, channels, 1, 1])]
    else:
        b.classifier(b.node("GlobalAveragePool", [x], "avgpool"), channels)
        outputs = [("probabilities", [1, 1000])]
    return b.finish("densenet121" + ("_featurizer" if featurizer else ""), image_size, outputs,
                    f"DenseNet-121 with seeded random weights (seed={seed})")
