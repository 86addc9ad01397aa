# SPDX-License-Identifier: Apache-2.0
"""Offline model zoo: seeded ONNX workloads for the compiler and simulator.

* :func:`build_resnet50` builds a torchvision-style ResNet-50/101/152 with random weights.
* :func:`build_vgg16`, :func:`build_densenet121` and :func:`build_ssd_vgg` build the
  Brainwave service's other featurizers (VGG-16, DenseNet-121, SSD300 on VGG-16).
* :func:`build_mobilenet_v2`, :func:`build_mobilenet_v3_small` and :func:`build_resnext26`
  build mobile-style graphs: depthwise, squeeze-excite and grouped convolutions.
* ``MODELS`` maps a name to a builder called as ``MODELS[name](seed=0, featurizer=True)``;
  ``ZOO_DESCRIPTIONS`` gives a one-line summary of each.
* :func:`load_light_model` loads one of the weight-less "light" models bundled with the
  ``onnx`` package (names in ``LIGHT_MODELS``) and fills in seeded random weights.

No network access is needed; all weights come from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx

from .densenet import build_densenet121
from .light import (
    light_model_dir,
    light_model_input,
    light_model_names,
    light_model_path,
    load_light_model,
)
from .mobile import build_mobilenet_v2, build_mobilenet_v3_small, build_resnext26
from .resnet import RESNET_STAGES, build_resnet50
from .ssd import build_ssd_vgg
from .vgg import build_vgg16

if TYPE_CHECKING:
    LIGHT_MODELS: tuple[str, ...]

__all__ = [
    "LIGHT_MODELS",
    "MODELS",
    "RESNET_STAGES",
    "ZOO_DESCRIPTIONS",
    "build_densenet121",
    "build_mobilenet_v2",
    "build_mobilenet_v3_small",
    "build_resnet50",
    "build_resnext26",
    "build_ssd_vgg",
    "build_vgg16",
    "light_model_dir",
    "light_model_input",
    "light_model_names",
    "light_model_path",
    "load_light_model",
]


def _resnet152(seed: int = 0, *, featurizer: bool = True) -> onnx.ModelProto:
    """ResNet-152 at 224x224: :func:`build_resnet50` with ``depth=152``."""
    return build_resnet50(seed, featurizer=featurizer, depth=152)


def _ssd_vgg(seed: int = 0, *, featurizer: bool = True) -> onnx.ModelProto:
    """SSD300 (VGG-16): it has no classifier head to strip, so ``featurizer`` is ignored."""
    del featurizer
    return build_ssd_vgg(seed)


#: Builders for generated (non-file) models, keyed by name; each is called as
#: ``MODELS[name](seed=0, featurizer=True)`` (``featurizer`` is keyword-only) and returns a
#: checked model. ``featurizer=False`` appends the ImageNet classifier; ``ssd_vgg`` ignores it.
MODELS: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet50": build_resnet50,
    "resnet152": _resnet152,
    "vgg16": build_vgg16,
    "densenet121": build_densenet121,
    "ssd_vgg": _ssd_vgg,
    "mobilenet_v2": build_mobilenet_v2,
    "mobilenet_v3_small": build_mobilenet_v3_small,
    "resnext26_32x4d": build_resnext26,
}

#: One line per ``MODELS`` entry: architecture, input, output(s) and parameter count
#: (trainable parameters as torchvision counts them, BN running statistics excluded).
ZOO_DESCRIPTIONS: dict[str, str] = {
    "resnet50": "ResNet-50 v1.5; images [1,3,224,224] -> features [1,2048,1,1] (23.5M params) "
                "or probabilities [1,1000] (25.6M)",
    "resnet152": "ResNet-152 v1.5; images [1,3,224,224] -> features [1,2048,1,1] (58.1M params) "
                 "or probabilities [1,1000] (60.2M)",
    "vgg16": "VGG-16 (13 conv3x3 + 5 maxpool); images [1,3,224,224] -> features [1,512,7,7] "
             "after pool5 (14.7M params) or probabilities [1,1000] (138.4M)",
    "densenet121": "DenseNet-121 (growth 32, blocks 6/12/24/16); images [1,3,224,224] -> "
                   "features [1,1024,1,1] (7.0M params) or probabilities [1,1000] (8.0M)",
    "ssd_vgg": "SSD300 on VGG-16, 21 classes, no NMS; images [1,3,300,300] -> boxes "
               "[1,8732,4] + scores [1,8732,21] (26.3M params); featurizer flag ignored",
    "mobilenet_v2": "MobileNetV2 1.0 (3x3 depthwise, ReLU6); images [1,3,224,224] -> "
                    "features [1,1280,1,1] (2.2M params) or probabilities [1,1000] (3.5M)",
    "mobilenet_v3_small": "MobileNetV3-Small (3x3/5x5 depthwise, squeeze-excite, hard-swish); "
                          "images [1,3,224,224] -> features [1,576,1,1] (0.9M params) or "
                          "logits [1,1000] (1.5M)",
    "resnext26_32x4d": "ResNeXt-26 32x4d (3x3 convolutions of 32 groups); images "
                       "[1,3,224,224] -> features [1,2048,1,1] (13.3M params) or logits "
                       "[1,1000] (15.4M)",
}


def __getattr__(name: str) -> object:
    # ``LIGHT_MODELS`` is discovered from the installed onnx package on each access.
    if name == "LIGHT_MODELS":
        return light_model_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "LIGHT_MODELS"])
