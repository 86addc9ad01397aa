# SPDX-License-Identifier: Apache-2.0
"""npusim's runtime: sessions over the simulated device, pipelines, packages, the zoo and the CLI.

Every name is imported on first use (``npusim.runtime.Session``,
``npusim.runtime.ModelDefinition``), so that importing ``npusim.runtime`` (the CLI does)
loads neither numba nor TensorFlow.
"""

from __future__ import annotations

from npusim.simulator.lazy import lazy_names

_LAZY = {
    "Session": "npusim.runtime.session",
    "Device": "npusim.runtime.device",
    "DevicePool": "npusim.runtime.device",
    "DeviceStats": "npusim.runtime.device",
    "AcceleratorStage": "npusim.runtime.pipeline",
    "ModelDefinition": "npusim.runtime.pipeline",
    "PipelineError": "npusim.runtime.pipeline",
    "PipelineInputError": "npusim.runtime.pipeline",
    "TensorSpec": "npusim.runtime.pipeline",
    "TensorflowStage": "npusim.runtime.pipeline",
    "PredictionClient": "npusim.runtime.client",
    "PredictionError": "npusim.runtime.client",
    "load_package": "npusim.runtime.package",
    "save_package": "npusim.runtime.package",
    "classifier_stage": "npusim.runtime.tfstages",
    "featurizer_pipeline": "npusim.runtime.tfstages",
    "preprocess_stage": "npusim.runtime.tfstages",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_names(globals(), _LAZY)
