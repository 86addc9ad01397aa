# SPDX-License-Identifier: Apache-2.0
"""Shared cases of the vector-unit tests: inputs with the special values, the parameters
of each unary function, a one-node onnxruntime run and a bit comparison."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
from onnx_helpers import make_model

ort.set_default_logger_severity(3)  # tf_half_pixel_for_nn is deprecated: ORT warns per model

SELU_ALPHA, SELU_GAMMA = 1.6732632423543772, 1.0507009873554805
PARAMS = {"leaky_relu": (0.1, 0.0), "clip": (-0.7, 1.3), "hard_sigmoid": (0.25, 0.4),
          "pow": (2.5, 0.0), "elu": (0.7, 0.0), "selu": (SELU_ALPHA, SELU_GAMMA),
          "gelu": (0.0, 0.0)}
"""The (alpha, beta) each unary function is tested with."""


def ort_run(nodes, feeds: dict[str, np.ndarray], out_rank: int,
            consts: dict[str, np.ndarray] | None = None, opset: int = 19) -> np.ndarray:
    """Run a one-node (or few-node) model with output ``y`` of unknown extents."""
    model = make_model(nodes, {k: list(v.shape) for k, v in feeds.items()},
                       {"y": [None] * out_rank}, consts, opset=opset)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def inputs(seed: int = 0, n: int = 3000, scale: float = 4.0) -> np.ndarray:
    """Random values plus the special ones: signed zeros, infinities, NaN, tiny, huge, halves."""
    rng = np.random.default_rng(seed)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-30, -1e-30, 1e-45, 100.0, -100.0, 0.5,
               -0.5, 1.5, 2.5, -2.5, 88.8, -104.0, 3e38, -3e38, 1.0, -1.0]
    return np.concatenate([(rng.standard_normal(n) * scale).astype(np.float32),
                           np.array(special, np.float32)])


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal bits where ``b`` is a number, NaN where it is NaN."""
    nan = np.isnan(b)
    return np.array_equal(np.isnan(a), nan) and np.array_equal(a[~nan].view(np.int32),
                                                               b[~nan].view(np.int32))
