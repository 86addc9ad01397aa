# SPDX-License-Identifier: Apache-2.0
"""Offline, seeded VGG-16 ONNX model builder (the Brainwave service's VGG featurizer).

The graph follows torchvision's ``vgg16`` / ``vgg16_bn`` (Caffe layer names: ``conv1_1`` ...
``conv5_3``, ``pool1`` ... ``pool5``, ``fc6`` ... ``fc8``) with Dropout removed, since the
graphs are inference-only. Weights are He-normal so post-ReLU activations stay O(1).

This module also holds :class:`_ConvNetBuilder`, the biased-conv / Gemm / model-finishing
helpers shared by the DenseNet and SSD builders, and :func:`vgg16_trunk`, reused by SSD.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .resnet import _GraphBuilder

__all__ = ["VGG16_BLOCKS", "build_vgg16", "vgg16_trunk"]

#: (number of 3x3 convs, output channels) for each of VGG-16's five blocks.
VGG16_BLOCKS: tuple[tuple[int, int], ...] = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))

_OPSET = 17
_IR_VERSION = 8  # the IR version that introduced opset 17, as in resnet.py
_NUM_CLASSES = 1000
_FC_WIDTH = 4096


class _ConvNetBuilder(_GraphBuilder):
    """:class:`resnet._GraphBuilder` plus biased convs, Gemm layers and model assembly."""

    def _param(self, name: str, array: np.ndarray) -> str:
        # No copy for arrays that are already float32 (VGG's fc6 alone is 411 MB).
        self.initializers.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def conv_bias(self, x: str, name: str, c_in: int, c_out: int, kernel: int,
                  stride: int = 1, pad: int = 0, dilation: int = 1) -> str:
        """Conv with bias: He-normal weights (std = sqrt(2 / fan_in)), small normal bias."""
        w = self.rng.standard_normal((c_out, c_in, kernel, kernel), dtype=np.float32)
        w *= np.float32(np.sqrt(2.0 / (c_in * kernel * kernel)))
        bias = self.rng.normal(0.0, 0.01, c_out)
        attrs: dict[str, object] = {"kernel_shape": [kernel, kernel], "strides": [stride] * 2,
                                    "pads": [pad] * 4}
        if dilation != 1:
            attrs["dilations"] = [dilation] * 2
        inputs = [x, self._param(f"{name}.weight", w), self._param(f"{name}.bias", bias)]
        return self.node("Conv", inputs, name, **attrs)

    def linear(self, x: str, name: str, in_features: int, out_features: int, *,
               gain: float = 2.0, output: str | None = None) -> str:
        """Gemm in torch Linear layout (transB=1); ``gain`` 2 (He) before a ReLU, else 1."""
        w = self.rng.standard_normal((out_features, in_features), dtype=np.float32)
        w *= np.float32(np.sqrt(gain / in_features))
        bias = self.rng.normal(0.0, 0.01, out_features)
        inputs = [x, self._param(f"{name}.weight", w), self._param(f"{name}.bias", bias)]
        return self.node("Gemm", inputs, name, output, transB=1)

    def finish(self, graph_name: str, image_size: int,
               outputs: list[tuple[str, list[int]]], doc: str) -> onnx.ModelProto:
        """Wrap the nodes into a checked opset-17 model with input ``images [1,3,H,W]``."""
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                           [1, 3, image_size, image_size])],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
             for name, shape in outputs],
            initializer=self.initializers,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", _OPSET)],
            producer_name="npusim.runtime.zoo",
            doc_string=doc,
            ir_version=_IR_VERSION,
        )
        onnx.checker.check_model(model)
        return model


def vgg16_trunk(b: _ConvNetBuilder, x: str, *, batch_norm: bool = False,
                pool3_ceil: bool = False, pool5: bool = True,
                output: str | None = None) -> tuple[str, str]:
    """Append VGG-16's 13 conv+ReLU layers and their 2x2/2 max-pools to ``b``.

    Args:
        b: The builder to append to.
        x: Name of the ``[1, 3, H, W]`` input tensor.
        batch_norm: Insert BatchNormalization between each conv and its ReLU (vgg16_bn).
        pool3_ceil: Use ``ceil_mode=1`` on pool3 (SSD300: 75 -> 38 instead of 37).
        pool5: Append pool5 (2x2/2); SSD replaces it with its own 3x3/1 pool.
        output: Name for the last node's output tensor (default: the node name).

    Returns:
        ``(output, conv4_3)``: the last tensor and the post-ReLU conv4_3 tensor.
    """
    c_in, conv4_3 = 3, ""
    for block, (convs, c_out) in enumerate(VGG16_BLOCKS, start=1):
        last_block = block == len(VGG16_BLOCKS)
        for i in range(1, convs + 1):
            tag = f"{block}_{i}"
            x = b.conv_bias(x, f"conv{tag}", c_in, c_out, 3, pad=1)
            if batch_norm:
                x = b.bn(x, f"bn{tag}", c_out)
            last = last_block and i == convs and not pool5
            x = b.node("Relu", [x], f"relu{tag}", output if last else None)
            c_in = c_out
        if block == 4:
            conv4_3 = x
        if not last_block or pool5:
            ceil = 1 if pool3_ceil and block == 3 else 0
            x = b.node("MaxPool", [x], f"pool{block}", output if last_block else None,
                       kernel_shape=[2, 2], strides=[2, 2], ceil_mode=ceil)
    return x, conv4_3


def build_vgg16(seed: int = 0, *, featurizer: bool = True, image_size: int = 224,
                batch_norm: bool = False) -> onnx.ModelProto:
    """Build a seeded VGG-16 as a checked ONNX opset-17 model.

    Args:
        seed: Seed for ``numpy.random.default_rng``; equal seeds give byte-identical
            ``SerializeToString()`` output.
        featurizer: If true the graph ends after pool5 with output ``features`` of shape
            ``[1, 512, S, S]`` (``S = image_size // 32``, 7 at 224); otherwise the classifier
            Flatten -> Gemm(512*S*S -> 4096) + Relu -> Gemm(4096 -> 4096) + Relu ->
            Gemm(4096 -> 1000) -> Softmax is appended, output ``probabilities [1, 1000]``.
        image_size: Height and width of the ``images`` input ``[1, 3, H, W]`` (float32).
        batch_norm: Build vgg16_bn (BatchNormalization after each conv).

    Returns:
        The model, already validated with ``onnx.checker.check_model``.

    Raises:
        ValueError: On an ``image_size`` below 32 (the total stride).

    Example:
        >>> model = build_vgg16(seed=0, image_size=64)
        >>> [o.name for o in model.graph.output]
        ['features']
    """
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32 (total stride is 32), got {image_size}")
    b = _ConvNetBuilder(np.random.default_rng(seed))
    x, _ = vgg16_trunk(b, "images", batch_norm=batch_norm,
                       output="features" if featurizer else None)
    side = image_size // 32
    channels = VGG16_BLOCKS[-1][1]
    name = "vgg16_bn" if batch_norm else "vgg16"
    if featurizer:
        outputs = [("features", [1, channels, side, side])]
    else:
        x = b.node("Flatten", [x], "flatten", axis=1)
        x = b.relu(b.linear(x, "fc6", channels * side * side, _FC_WIDTH), "relu6")
        x = b.relu(b.linear(x, "fc7", _FC_WIDTH, _FC_WIDTH), "relu7")
        x = b.linear(x, "fc8", _FC_WIDTH, _NUM_CLASSES, gain=1.0)
        b.node("Softmax", [x], "softmax", "probabilities", axis=1)
        outputs = [("probabilities", [1, _NUM_CLASSES])]
    return b.finish(name + ("_featurizer" if featurizer else ""), image_size, outputs,
                    f"VGG-16{' (BN)' if batch_norm else ''} with seeded random weights "
                    f"(seed={seed})")
