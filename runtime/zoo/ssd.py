# SPDX-License-Identifier: Apache-2.0
"""Offline, seeded SSD300 (VGG-16 base) ONNX model builder, without NMS.

Layout of Liu et al. 2016 and torchvision's ``ssd300_vgg16``: the VGG-16 trunk (pool3 with
``ceil_mode`` so 75 -> 38, pool5 replaced by a 3x3/1 pool), the dilated ``conv6`` and 1x1
``conv7``, four extra blocks, an L2Norm (learned per-channel scale, initialised to 20) on
``conv4_3``, and one 3x3 box head and class head per source map. Anchor decoding and NMS are
host post-processing and are not part of the graph. Every shape in the graph is static.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
from onnx import numpy_helper

from .vgg import _ConvNetBuilder, vgg16_trunk

__all__ = ["SSD_BOXES_PER_LOCATION", "SSD_EXTRAS", "build_ssd_vgg", "ssd_source_sizes"]

#: Default boxes per location on each of the six source maps (conv4_3 ... conv11_2).
SSD_BOXES_PER_LOCATION: tuple[int, ...] = (4, 6, 6, 6, 4, 4)

#: Extra blocks after conv7: (name, 1x1 channels, 3x3 channels, 3x3 stride, 3x3 pad).
SSD_EXTRAS: tuple[tuple[str, int, int, int, int], ...] = (
    ("conv8", 256, 512, 2, 1),
    ("conv9", 128, 256, 2, 1),
    ("conv10", 128, 256, 1, 0),
    ("conv11", 128, 256, 1, 0),
)

_L2NORM_SCALE = 20.0
_L2NORM_EPS = 1e-10
_FC_CHANNELS = 1024  # conv6 / conv7 (the convolutionalised fc6 / fc7)


def _conv_out(size: int, kernel: int, stride: int, pad: int, *, ceil: bool = False) -> int:
    span = size + 2 * pad - kernel
    return (math.ceil(span / stride) if ceil else span // stride) + 1


def ssd_source_sizes(image_size: int = 300) -> tuple[int, ...]:
    """Side lengths of the six source maps; ``(38, 19, 10, 5, 3, 1)`` for SSD300."""
    size = image_size
    for block in range(1, 4):  # pool1..pool3 (2x2/2); pool3 rounds up
        size = _conv_out(size, 2, 2, 0, ceil=block == 3)
    sizes = [size]
    size = _conv_out(size, 2, 2, 0)  # pool4; pool5 (3x3/1/1), conv6 and conv7 keep the size
    sizes.append(size)
    for _, _, _, stride, pad in SSD_EXTRAS:
        size = _conv_out(size, 3, stride, pad)
        sizes.append(size)
    return tuple(sizes)


def _l2norm(b: _ConvNetBuilder, x: str, name: str, channels: int) -> str:
    """x / (||x||_2 over channels + eps) * scale, with a per-channel scale initialised to 20."""
    norm = b.node("ReduceL2", [x], f"{name}.reduce_l2", axes=[1], keepdims=1)
    eps = b._param(f"{name}.eps", np.array(_L2NORM_EPS))
    norm = b.node("Add", [norm, eps], f"{name}.add_eps")
    x = b.node("Div", [x, norm], f"{name}.div")
    scale = b._param(f"{name}.weight", np.full((1, channels, 1, 1), _L2NORM_SCALE))
    return b.node("Mul", [x, scale], f"{name}.mul")


def _head(b: _ConvNetBuilder, x: str, name: str, c_in: int, c_out: int, size: int,
          per_box: int) -> str:
    """3x3 conv -> Transpose to NHWC -> Reshape to ``[1, size*size*boxes, per_box]``."""
    x = b.conv_bias(x, name, c_in, c_out, 3, pad=1)
    x = b.node("Transpose", [x], f"{name}.transpose", perm=[0, 2, 3, 1])
    shape_name = f"{name}.shape"
    shape = np.array([1, size * size * c_out // per_box, per_box], dtype=np.int64)
    b.initializers.append(numpy_helper.from_array(shape, shape_name))
    return b.node("Reshape", [x, shape_name], f"{name}.reshape")


def build_ssd_vgg(seed: int = 0, *, image_size: int = 300,
                  num_classes: int = 21) -> onnx.ModelProto:
    """Build a seeded SSD300 on a VGG-16 base as a checked ONNX opset-17 model.

    Args:
        seed: Seed for ``numpy.random.default_rng``; equal seeds give byte-identical
            ``SerializeToString()`` output.
        image_size: Height and width of the ``images`` input ``[1, 3, H, W]`` (float32).
        num_classes: Classes per box, background included (21 for Pascal VOC).

    Returns:
        The model, already validated with ``onnx.checker.check_model``. Outputs are the raw
        box regressions ``boxes [1, N, 4]`` and the per-box class probabilities
        ``scores [1, N, num_classes]`` (Softmax over the last axis); ``N`` is 8732 at 300.

    Raises:
        ValueError: If ``image_size`` leaves a source map empty or ``num_classes < 1``.

    Example:
        >>> model = build_ssd_vgg(seed=0)
        >>> [o.type.tensor_type.shape.dim[1].dim_value for o in model.graph.output]
        [8732, 8732]
    """
    sizes = ssd_source_sizes(image_size)
    if min(sizes) < 1:
        raise ValueError(f"image_size {image_size} is too small: source maps {sizes}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")

    b = _ConvNetBuilder(np.random.default_rng(seed))
    x, conv4_3 = vgg16_trunk(b, "images", pool3_ceil=True, pool5=False)
    sources = [(_l2norm(b, conv4_3, "conv4_3_norm", 512), "conv4_3_norm", 512)]
    x = b.node("MaxPool", [x], "pool5", kernel_shape=[3, 3], strides=[1, 1], pads=[1] * 4)
    x = b.relu(b.conv_bias(x, "conv6", 512, _FC_CHANNELS, 3, pad=6, dilation=6), "relu6")
    x = b.relu(b.conv_bias(x, "conv7", _FC_CHANNELS, _FC_CHANNELS, 1), "relu7")
    sources.append((x, "conv7", _FC_CHANNELS))
    c_in = _FC_CHANNELS
    for name, mid, c_out, stride, pad in SSD_EXTRAS:
        x = b.relu(b.conv_bias(x, f"{name}_1", c_in, mid, 1), f"{name}_1_relu")
        x = b.relu(b.conv_bias(x, f"{name}_2", mid, c_out, 3, stride, pad), f"{name}_2_relu")
        sources.append((x, f"{name}_2", c_out))
        c_in = c_out

    locs, confs = [], []
    for (src, name, channels), size, boxes in zip(sources, sizes, SSD_BOXES_PER_LOCATION,
                                                   strict=True):
        locs.append(_head(b, src, f"{name}_mbox_loc", channels, boxes * 4, size, 4))
        confs.append(_head(b, src, f"{name}_mbox_conf", channels, boxes * num_classes, size,
                           num_classes))
    b.node("Concat", locs, "mbox_loc", "boxes", axis=1)
    conf = b.node("Concat", confs, "mbox_conf", axis=1)
    b.node("Softmax", [conf], "mbox_conf_softmax", "scores", axis=-1)

    total = sum(s * s * n for s, n in zip(sizes, SSD_BOXES_PER_LOCATION, strict=True))
    outputs = [("boxes", [1, total, 4]), ("scores", [1, total, num_classes])]
    return b.finish(f"ssd{image_size}_vgg16", image_size, outputs,
                    f"SSD{image_size} (VGG-16 base, {num_classes} classes, no NMS) with "
                    f"seeded random weights (seed={seed})")
