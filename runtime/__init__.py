# SPDX-License-Identifier: Apache-2.0
"""npusim's runtime: sessions over the simulated device, pipelines, packages, the zoo and the CLI.

Every name is imported on first use (``runtime.Session``, ``runtime.ModelDefinition``), so
that importing ``runtime`` (the CLI does) loads neither numba nor TensorFlow.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {
    "Session": "runtime.session",
    "Device": "runtime.device",
    "DevicePool": "runtime.device",
    "DeviceStats": "runtime.device",
    "AcceleratorStage": "runtime.pipeline",
    "ModelDefinition": "runtime.pipeline",
    "PipelineError": "runtime.pipeline",
    "PipelineInputError": "runtime.pipeline",
    "TensorSpec": "runtime.pipeline",
    "TensorflowStage": "runtime.pipeline",
    "PredictionClient": "runtime.client",
    "PredictionError": "runtime.client",
    "load_package": "runtime.package",
    "save_package": "runtime.package",
    "classifier_stage": "runtime.tfstages",
    "featurizer_pipeline": "runtime.tfstages",
    "preprocess_stage": "runtime.tfstages",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
