# SPDX-License-Identifier: Apache-2.0
"""Offline model zoo: seeded ONNX workloads for the compiler and simulator.

* :func:`build_resnet50` builds a torchvision-style ResNet-50/101/152 with random weights.
* :func:`load_light_model` loads one of the weight-less "light" models bundled with the
  ``onnx`` package (names in ``LIGHT_MODELS``) and fills in seeded random weights.

No network access is needed; all weights come from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import onnx

from .light import (
    light_model_dir,
    light_model_input,
    light_model_names,
    light_model_path,
    load_light_model,
)
from .resnet import RESNET_STAGES, build_resnet50

if TYPE_CHECKING:
    LIGHT_MODELS: tuple[str, ...]

__all__ = [
    "LIGHT_MODELS",
    "MODELS",
    "RESNET_STAGES",
    "build_resnet50",
    "light_model_dir",
    "light_model_input",
    "light_model_names",
    "light_model_path",
    "load_light_model",
]

#: Builders for generated (non-file) models, keyed by name; each returns a checked model.
MODELS: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet50": build_resnet50,
}


def __getattr__(name: str) -> object:
    # ``LIGHT_MODELS`` is discovered from the installed onnx package on each access.
    if name == "LIGHT_MODELS":
        return light_model_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "LIGHT_MODELS"])
