# SPDX-License-Identifier: Apache-2.0
"""onnxruntime as the reference, and timing it fairly beside the simulator."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import onnx
import onnxruntime as ort


def onnxruntime_session(model: onnx.ModelProto, optimize: bool = True) -> ort.InferenceSession:
    """A CPU session whose idle threads do not spin, so they don't slow the simulator
    down when the two are timed one after the other on the same cores.

    ``optimize=False`` turns onnxruntime's graph rewrites (fusions) off: comparing the two
    shows how far onnxruntime's own fp32 results move with the order of its arithmetic.
    """
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def median_seconds(fn: Callable[[], object], rounds: int = 5) -> float:
    """Median wall time of ``rounds`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)
