# SPDX-License-Identifier: Apache-2.0
"""The 19 workloads of the open-source Brainwave-style NPU (github intel/fpga-npu,
``scripts/workloads/``), as ONNX models with seeded weights.

That repository publishes, for each workload, the TOPS its RTL simulation reached
(``scripts/rtl_baseline``) and the TOPS its C++ performance simulator predicted
(``scripts/perf_baseline``); :data:`PUBLISHED` holds both. The models follow what that
NPU's compiler does with the Keras definitions (``compiler/npu_layers.py``):

* batch 6 (``[TIME_STEPS, 6, INPUT_SIZE]`` is read as time first), 8 time steps, and
  batch 18 for the last workload;
* no bias anywhere (the NPU compiler drops the Keras biases);
* its GRU applies the reset gate before the recurrent product: ONNX
  ``linear_before_reset = 0`` (the Keras default would be the other form);
* only the last hidden state leaves a recurrent layer (``Y_h``), only the last layer's
  output leaves an MLP;
* the "mlp5" workloads have three Dense layers, and no activation; the "mlp3" ones
  apply ReLU after each of their three layers.

:func:`counted_ops` counts operations as that repository does: 2 x the multiply-adds of
the matrix-vector products only (``compiler/npu_layers.py``: Dense, SimpleRNN x2, GRU x6
and LSTM x8 products per step, at the layer's unpadded sizes).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler.recurrent import GATES as RECURRENT_GATES

STEPS = 8
BATCH = 6


@dataclass(frozen=True)
class Workload:
    """One workload: its layers and the published figures."""

    kind: str
    """``gemv``, ``mlp``, ``rnn``, ``gru`` or ``lstm``."""
    sizes: tuple[int, ...]
    """Input size, then each layer's output size (a recurrent layer: input, hidden)."""
    batch: int
    relu: bool
    rtl_tops: float
    """``scripts/rtl_baseline``: the TOPS of the RTL simulation."""
    perf_tops: float
    """``scripts/perf_baseline``: the TOPS its C++ performance simulator predicted."""


def _square(kind: str, n: int, rtl: float, perf: float) -> Workload:
    return Workload(kind, (n, n), BATCH, False, rtl, perf)


PUBLISHED: dict[str, Workload] = {
    "01_gemv_512x512": _square("gemv", 512, 3.55, 5.65),
    "02_gemv_1024x1024": _square("gemv", 1024, 9.7, 13.06),
    "03_gemv_1152x1152": _square("gemv", 1152, 10.39, 13.38),
    "04_gemv_1536x1536": _square("gemv", 1536, 15.06, 18.34),
    "05_gemv_1792x1792": _square("gemv", 1792, 16.9, 20.04),
    "06_rnn_512_8": _square("rnn", 512, 7.47, 10.86),
    "07_rnn_1024_8": _square("rnn", 1024, 19.84, 25.11),
    "08_rnn_1152_8": _square("rnn", 1152, 21.1, 25.59),
    "09_rnn_1536_8": _square("rnn", 1536, 29.91, 33.38),
    "10_rnn_1792_8": _square("rnn", 1792, 33.12, 34.25),
    "11_gru_512_8": _square("gru", 512, 8.41, 10.89),
    "12_gru_1024_8": _square("gru", 1024, 21.02, 24.32),
    "13_gru_1152_8": _square("gru", 1152, 22.97, 25.29),
    "14_lstm_512_8": _square("lstm", 512, 13.29, 15.16),
    "15_lstm_1024_8": _square("lstm", 1024, 30.0, 31.85),
    "16_mlp5_512": Workload("mlp", (512, 512, 512, 512), BATCH, False, 4.32, 6.86),
    "17_mlp5_1024": Workload("mlp", (1024, 1024, 1024, 1024), BATCH, False, 12.03, 16.29),
    "18_mlp3_1024_512_256_256": Workload("mlp", (1024, 512, 256, 256), BATCH, True, 3.92,
                                         6.02),
    "19_mlp3_1024_512_256_256_batched": Workload("mlp", (1024, 512, 256, 256), 18, True,
                                                 5.32, 7.26),
}
"""Workload name (as in ``scripts/workloads/``) -> its layers and published TOPS."""

GATES = {op.lower(): n for op, n in RECURRENT_GATES.items()}
"""Weight matrices per recurrent layer kind (``rnn``, ``gru``, ``lstm``)."""
CLOCK_MHZ = 300.0
"""The clock that NPU's flow divides by (``compiler/compiler.py``: ``freq = 300``)."""


def counted_ops(w: Workload) -> int:
    """Operations as that repository counts them: 2 x the matrix-vector products' MACs."""
    if w.kind in GATES:
        n_in, hidden = w.sizes
        return 2 * STEPS * w.batch * n_in * hidden * 2 * GATES[w.kind]
    return 2 * w.batch * sum(a * b for a, b in zip(w.sizes, w.sizes[1:]))


def _weights(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return (rng.standard_normal(shape) * shape[-1] ** -0.5).astype(np.float32)


def build(name: str, seed: int = 0) -> onnx.ModelProto:
    """The ONNX model of workload ``name`` (a key of :data:`PUBLISHED`)."""
    w = PUBLISHED[name]
    rng = np.random.default_rng(seed)
    inits, nodes = [], []
    if w.kind in GATES:
        n_in, hidden = w.sizes
        g = GATES[w.kind]
        inits = [numpy_helper.from_array(_weights(rng, 1, g * hidden, n_in), "W"),
                 numpy_helper.from_array(_weights(rng, 1, g * hidden, hidden), "R")]
        attrs = {"hidden_size": hidden} | ({"linear_before_reset": 0} if w.kind == "gru"
                                          else {})
        nodes.append(helper.make_node(w.kind.upper(),
                                      ["x", "W", "R"], ["", "y_h"], name="layer1", **attrs))
        x_shape, y_shape = [STEPS, w.batch, n_in], [1, w.batch, hidden]
    else:
        src = "x"
        for k, (a, b) in enumerate(zip(w.sizes, w.sizes[1:]), start=1):
            inits.append(numpy_helper.from_array(_weights(rng, b, a).T.copy(), f"w{k}"))
            out = f"layer{k}"
            nodes.append(helper.make_node("MatMul", [src, f"w{k}"], [out], name=out))
            if w.relu:
                nodes.append(helper.make_node("Relu", [out], [f"{out}_relu"],
                                              name=f"{out}_relu"))
                out = f"{out}_relu"
            src = out
        nodes.append(helper.make_node("Identity", [src], ["y_h"], name="output"))
        x_shape, y_shape = [w.batch, w.sizes[0]], [w.batch, w.sizes[-1]]
    graph = helper.make_graph(nodes, name, [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, x_shape)], [helper.make_tensor_value_info(
            "y_h", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="npusim-zoo")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    name: (lambda seed=0, name=name: build(name, seed)) for name in PUBLISHED}
"""``npu:NAME`` for :func:`npusim.runtime.analysis.bench.resolve_model`."""
