# SPDX-License-Identifier: Apache-2.0
"""Seeded mobile-style CNNs: depthwise, grouped and squeeze-excite convolutions.

The graphs are written the way torchvision's ONNX export writes them (batch norm folded
into each convolution's bias, ``Clip`` for ReLU6, ``HardSigmoid`` and ``HardSwish``,
squeeze-excite as ``GlobalAveragePool -> Conv -> Relu -> Conv -> HardSigmoid -> Mul``):

* :func:`build_mobilenet_v2`: MobileNetV2 1.0 (Sandler et al. 2018), inverted residuals
  with 3x3 depthwise convolutions;
* :func:`build_mobilenet_v3_small`: MobileNetV3-Small (Howard et al. 2019), 3x3 and 5x5
  depthwise convolutions, squeeze-excite and hard-swish;
* :func:`build_resnext26`: ResNeXt-26 32x4d (Xie et al. 2017), bottlenecks whose 3x3
  convolution has 32 groups.

Weights are He-normal from ``numpy.random.default_rng(seed)``, biases small, so the
activations stay O(1) through the network; nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["build_mobilenet_v2", "build_mobilenet_v3_small", "build_resnext26"]

_OPSET = 17


class _Net:
    """Nodes and seeded initializers of one graph; each method returns its output name."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, op: str) -> str:
        self._count += 1
        return f"{op.lower()}_{self._count}"

    def node(self, op: str, inputs: list[str], **attrs: object) -> str:
        out = self._name(op)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def param(self, array: np.ndarray) -> str:
        name = self._name("w")
        self.inits.append(numpy_helper.from_array(array.astype(np.float32), name))
        return name

    def conv(self, x: str, c_in: int, c_out: int, k: int, stride: int = 1,
             groups: int = 1, gain: float = 2.0) -> str:
        """A convolution with its batch norm folded: He-normal weights, a small bias."""
        fan_in = c_in // groups * k * k
        w = self.rng.standard_normal((c_out, c_in // groups, k, k)) * np.sqrt(gain / fan_in)
        b = self.rng.normal(0.0, 0.05, c_out)
        return self.node("Conv", [x, self.param(w), self.param(b)], kernel_shape=[k, k],
                         strides=[stride, stride], pads=[k // 2] * 4, group=groups)

    def act(self, x: str, kind: str) -> str:
        if kind == "relu":
            return self.node("Relu", [x])
        if kind == "relu6":
            lo, hi = self.param(np.array(0.0)), self.param(np.array(6.0))
            return self.node("Clip", [x, lo, hi])
        if kind == "hswish":
            return self.node("HardSwish", [x])
        return x

    def squeeze_excite(self, x: str, channels: int, squeeze: int) -> str:
        s = self.node("GlobalAveragePool", [x])
        s = self.act(self.conv(s, channels, squeeze, 1), "relu")
        s = self.node("HardSigmoid", [self.conv(s, squeeze, channels, 1, gain=1.0)],
                      alpha=1.0 / 6, beta=0.5)
        return self.node("Mul", [x, s])

    def inverted_residual(self, x: str, c_in: int, hidden: int, c_out: int, k: int,
                          stride: int, act: str, se: int = 0) -> str:
        """MobileNet's block: 1x1 expansion (none when ``hidden == c_in``), k x k depthwise,
        squeeze-excite to ``se`` channels if ``se``, linear 1x1 projection, and the
        shortcut when the shape allows it."""
        z = x if hidden == c_in else self.act(self.conv(x, c_in, hidden, 1), act)
        z = self.act(self.conv(z, hidden, hidden, k, stride, groups=hidden), act)
        if se:
            z = self.squeeze_excite(z, hidden, se)
        z = self.conv(z, hidden, c_out, 1, gain=1.0)
        return self.node("Add", [x, z]) if stride == 1 and c_in == c_out else z

    def model(self, name: str, x: str, size: int, out: str, channels: int,
              featurizer: bool) -> onnx.ModelProto:
        """Close the graph: global pooling, and a 1000-way classifier unless ``featurizer``."""
        y = self.node("GlobalAveragePool", [out])
        if not featurizer:
            y = self.node("Flatten", [y], axis=1)
            w = self.rng.standard_normal((1000, channels)) * np.sqrt(1.0 / channels)
            y = self.node("Gemm", [y, self.param(w), self.param(np.zeros(1000))], transB=1)
        self.nodes[-1].output[0] = y = "features" if featurizer else "logits"
        shape = [1, channels, 1, 1] if featurizer else [1, 1000]
        graph = helper.make_graph(
            self.nodes, name, [helper.make_tensor_value_info(x, TensorProto.FLOAT,
                                                             [1, 3, size, size])],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, shape)], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                                  producer_name="npusim-zoo")
        model.ir_version = 8
        onnx.checker.check_model(model)
        return model


def build_mobilenet_v2(seed: int = 0, *, featurizer: bool = True) -> onnx.ModelProto:
    """MobileNetV2 1.0 at 224x224: images [1,3,224,224] -> features [1,1280,1,1]."""
    net = _Net(seed)
    y = net.act(net.conv("images", 3, 32, 3, 2), "relu6")
    c = 32
    # (expansion, channels, repeats, first stride) of torchvision's mobilenet_v2
    for t, c_out, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            y = net.inverted_residual(y, c, c * t, c_out, 3, s if i == 0 else 1, "relu6")
            c = c_out
    y = net.act(net.conv(y, c, 1280, 1), "relu6")
    return net.model("mobilenet_v2", "images", 224, y, 1280, featurizer)


def build_mobilenet_v3_small(seed: int = 0, *, featurizer: bool = True) -> onnx.ModelProto:
    """MobileNetV3-Small at 224x224: images [1,3,224,224] -> features [1,576,1,1]."""
    net = _Net(seed)
    y = net.act(net.conv("images", 3, 16, 3, 2), "hswish")
    c = 16
    # (kernel, expanded, out, squeeze-excite, activation, stride) of the paper's Table 2
    for k, exp, c_out, se, act, s in [
            (3, 16, 16, True, "relu", 2), (3, 72, 24, False, "relu", 2),
            (3, 88, 24, False, "relu", 1), (5, 96, 40, True, "hswish", 2),
            (5, 240, 40, True, "hswish", 1), (5, 240, 40, True, "hswish", 1),
            (5, 120, 48, True, "hswish", 1), (5, 144, 48, True, "hswish", 1),
            (5, 288, 96, True, "hswish", 2), (5, 576, 96, True, "hswish", 1),
            (5, 576, 96, True, "hswish", 1)]:
        y = net.inverted_residual(y, c, exp, c_out, k, s, act,
                                  max(8, (exp // 4 + 4) // 8 * 8) if se else 0)
        c = c_out
    y = net.act(net.conv(y, c, 576, 1), "hswish")
    return net.model("mobilenet_v3_small", "images", 224, y, 576, featurizer)


def build_resnext26(seed: int = 0, *, featurizer: bool = True) -> onnx.ModelProto:
    """ResNeXt-26 32x4d at 224x224: images [1,3,224,224] -> features [1,2048,1,1]."""
    net = _Net(seed)
    y = net.act(net.conv("images", 3, 64, 7, 2), "relu")
    y = net.node("MaxPool", [y], kernel_shape=[3, 3], strides=[2, 2], pads=[1] * 4)
    c = 64
    for stage, width in enumerate((128, 256, 512, 1024)):
        for i in range(2):
            stride = 2 if i == 0 and stage > 0 else 1
            z = net.act(net.conv(y, c, width, 1), "relu")
            z = net.act(net.conv(z, width, width, 3, stride, groups=32), "relu")
            z = net.conv(z, width, width * 2, 1, gain=1.0)
            short = y if i > 0 else net.conv(y, c, width * 2, 1, stride, gain=1.0)
            y = net.act(net.node("Add", [short, z]), "relu")
            c = width * 2
    return net.model("resnext26_32x4d", "images", 224, y, c, featurizer)
