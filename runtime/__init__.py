# SPDX-License-Identifier: Apache-2.0
"""npusim's runtime: sessions over the simulated device, pipelines, packages, the zoo and the CLI.

Every name is imported on first use (``runtime.Session``, ``runtime.ModelDefinition``), so
that importing ``runtime`` (the CLI does) loads neither numba nor TensorFlow.
"""

from __future__ import annotations

from simulator.lazy import lazy_names

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

__getattr__, __dir__ = lazy_names(globals(), _LAZY)
