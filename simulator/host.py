# SPDX-License-Identifier: Apache-2.0
"""The host side of a program: ops the device cannot run, executed by onnxruntime."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort


class HostKernel:
    """One host op: a single-node ONNX model run by onnxruntime on the CPU."""

    def __init__(self, model: bytes) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1  # host ops are small; no thread pool to wake
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise HostOpError(f"onnxruntime cannot run host op: {text[:400]}") from None
        self.inputs = [i.name for i in self.session.get_inputs()]

    def __call__(self, args: list[np.ndarray]) -> np.ndarray:
        return self.session.run(["out"], dict(zip(self.inputs, args, strict=True)))[0]

    def run(self, args: list[np.ndarray]) -> list:
        """Every output of the model, in its order (arrays; a sequence or map as is)."""
        try:
            return self.session.run(None, dict(zip(self.inputs, args, strict=True)))
        except Exception as exc:  # onnxruntime raises its own exception types
            text = " ".join(str(exc).split()) or type(exc).__name__
            raise HostOpError(f"host op failed: {text[:400]}") from None


class HostOpError(ValueError):
    """A host op that onnxruntime refuses."""


_CACHE: dict[bytes, HostKernel] = {}


def host_kernel(model: bytes) -> HostKernel:
    """A kernel for ``model``, shared by every user of the same bytes in this process."""
    kernel = _CACHE.get(model)
    if kernel is None:
        if len(_CACHE) > 4096:
            _CACHE.clear()
        kernel = _CACHE[model] = HostKernel(model)
    return kernel
