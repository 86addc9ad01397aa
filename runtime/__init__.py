# SPDX-License-Identifier: Apache-2.0
"""npusim's runtime: sessions over the simulated device, and the rooms around it.

At the top, what drives the device: :mod:`.session` (an onnxruntime-like session),
:mod:`.device` (devices and pools) and :mod:`.backend` (an ONNX backend). Then
:mod:`.serving` (the Brainwave service flow: pipelines, packages, server, client),
:mod:`.analysis` (bench, compare, sweep, plots, eval, verify), :mod:`.zoo` (the bundled
models) and :mod:`.cli` (the ``npusim`` command, one module per command group).

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
    "AcceleratorStage": "npusim.runtime.serving.pipeline",
    "ModelDefinition": "npusim.runtime.serving.pipeline",
    "PipelineError": "npusim.runtime.serving.pipeline",
    "PipelineInputError": "npusim.runtime.serving.pipeline",
    "TensorSpec": "npusim.runtime.serving.pipeline",
    "TensorflowStage": "npusim.runtime.serving.pipeline",
    "PredictionClient": "npusim.runtime.serving.client",
    "PredictionError": "npusim.runtime.serving.client",
    "load_package": "npusim.runtime.serving.package",
    "save_package": "npusim.runtime.serving.package",
    "classifier_stage": "npusim.runtime.serving.tfstages",
    "featurizer_pipeline": "npusim.runtime.serving.tfstages",
    "preprocess_stage": "npusim.runtime.serving.tfstages",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_names(globals(), _LAZY)
