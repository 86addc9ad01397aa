# SPDX-License-Identifier: Apache-2.0
"""Recurrent graphs as exporters write them: torch's two-layer LSTM (initial states from
``Shape``/``Expand``, ``Y`` squeezed between layers, the last step gathered), its GRU
(``linear_before_reset = 1``) read through ``h_n``, a GRU with the reset gate before its
recurrent product and a given initial state, and the attributes exporters rarely set
(peepholes, ``input_forget``, ``clip``, activations with parameters, a reverse LSTM with a
full ``sequence_lens``). Registered with the corpus in
``tests/compiler/test_exporter_graphs.py``; ``npusim.compiler.recurrent`` unrolls them all. (The
batch-first ``layout = 1`` form, which onnxruntime does not run, is covered by the ONNX
node tests in ``tests/runtime/test_backend_conformance.py``.)"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from exporter_graphs import ExporterGraph, _const, _model, _node, _rand


def _weights(rng, dirs: int, gates: int, hidden: int, inputs: int, tag: str) -> dict:
    s = hidden ** -0.5
    return {f"W{tag}": _rand(rng, dirs, gates * hidden, inputs, scale=s),
            f"R{tag}": _rand(rng, dirs, gates * hidden, hidden, scale=s),
            f"B{tag}": _rand(rng, dirs, 2 * gates * hidden, scale=0.1)}


def torch_lstm(steps: int = 6, batch: int = 2, inputs: int = 12, hidden: int = 16,
               seed: int = 0) -> ExporterGraph:
    """x [T, N, I] -> LSTM -> Squeeze(1) -> LSTM -> Y[-1] -> Gemm, and layer 2's Y_c out;
    zero initial states from Shape -> Gather -> Concat -> Expand, as torch writes them."""
    rng = np.random.default_rng(seed)
    w = _weights(rng, 1, 4, hidden, inputs, "0") | _weights(rng, 1, 4, hidden, hidden, "1")
    w |= {"fc_w": _rand(rng, 5, hidden, scale=hidden ** -0.5), "fc_b": _rand(rng, 5),
          "zero": np.zeros(1, np.float32)}
    nodes = [_node("Shape", ["x"], "x_shape"), _const("i1", [1]), _const("one", [1]),
             _const("hid", [hidden]),
             _node("Gather", ["x_shape", "i1"], "n", axis=0),
             _node("Concat", ["one", "n", "hid"], "state_shape", axis=0),
             _node("Expand", ["zero", "state_shape"], "h0")]
    src = "x"
    for layer in "01":
        nodes += [_node("LSTM", [src, f"W{layer}", f"R{layer}", f"B{layer}", "", "h0", "h0"],
                        [f"y{layer}", f"yh{layer}", f"yc{layer}"], name=f"lstm{layer}",
                        hidden_size=hidden),
                  _node("Squeeze", [f"y{layer}", "i1"], f"ys{layer}")]
        src = f"ys{layer}"
    nodes += [_const("last", steps - 1),
              _node("Gather", ["ys1", "last"], "h_last", axis=0),
              _node("Gemm", ["h_last", "fc_w", "fc_b"], "logits", transB=1)]
    model = _model(nodes, {"x": [steps, batch, inputs]},
                   {"logits": [batch, 5], "yc1": [1, batch, hidden]}, w)
    folded = {"x_shape", "i1", "one", "hid", "n", "state_shape", "h0", "last"}
    return ExporterGraph(model, {"x": _rand(rng, steps, batch, inputs)},
                         folded=frozenset(folded))


def torch_gru_h_n(steps: int = 5, inputs: int = 10, hidden: int = 12,
                  seed: int = 1) -> ExporterGraph:
    """A bidirectional GRU (torch: ``linear_before_reset = 1``) whose ``h_n`` feeds the
    classifier: Y_h [2, 1, H] -> Transpose -> Reshape [1, 2H] -> Gemm."""
    rng = np.random.default_rng(seed)
    w = _weights(rng, 2, 3, hidden, inputs, "") | {
        "fc_w": _rand(rng, 4, 2 * hidden, scale=hidden ** -0.5), "flat": np.array(
            [1, 2 * hidden], np.int64)}
    nodes = [_node("GRU", ["x", "W", "R", "B"], ["", "h_n"], name="gru", hidden_size=hidden,
                   direction="bidirectional", linear_before_reset=1),
             _node("Transpose", ["h_n"], "h_t", perm=[1, 0, 2]),
             _node("Reshape", ["h_t", "flat"], "h_flat"),
             _node("Gemm", ["h_flat", "fc_w"], "y", transB=1)]
    model = _model(nodes, {"x": [steps, 1, inputs]}, {"y": [1, 4]}, w)
    return ExporterGraph(model, {"x": _rand(rng, steps, 1, inputs)})


def gru_reset_before(steps: int = 4, batch: int = 3, inputs: int = 8, hidden: int = 8,
                     seed: int = 2) -> ExporterGraph:
    """``linear_before_reset = 0`` (the reset gate applied before the recurrent product,
    as Brainwave-style NPUs run GRUs), an initial state from the graph, every output."""
    rng = np.random.default_rng(seed)
    w = _weights(rng, 1, 3, hidden, inputs, "")
    nodes = [_node("GRU", ["x", "W", "R", "B", "", "h0"], ["y", "y_h"], name="gru",
                   hidden_size=hidden)]
    model = _model(nodes, {"x": [steps, batch, inputs], "h0": [1, batch, hidden]},
                   {"y": [steps, 1, batch, hidden], "y_h": [1, batch, hidden]}, w)
    return ExporterGraph(model, {"x": _rand(rng, steps, batch, inputs),
                                 "h0": _rand(rng, 1, batch, hidden, scale=0.5)})


def lstm_peephole(steps: int = 5, batch: int = 2, inputs: int = 6, hidden: int = 8,
                  seed: int = 3) -> ExporterGraph:
    """Peepholes, ``input_forget``, ``clip`` and activations with parameters
    (HardSigmoid, ScaledTanh, Affine), reverse direction, a full ``sequence_lens``."""
    rng = np.random.default_rng(seed)
    w = _weights(rng, 1, 4, hidden, inputs, "") | {
        "P": _rand(rng, 1, 3 * hidden, scale=0.3),
        "lens": np.full(batch, steps, np.int32)}
    nodes = [_node("LSTM", ["x", "W", "R", "B", "lens", "h0", "c0", "P"], ["y", "y_h", "y_c"],
                   name="lstm", hidden_size=hidden, direction="reverse", input_forget=1,
                   clip=2.5, activations=["HardSigmoid", "ScaledTanh", "Affine"],
                   activation_alpha=[0.3, 0.9, 0.5], activation_beta=[0.4, 1.1, 0.1])]
    model = _model(nodes, {"x": [steps, batch, inputs], "h0": [1, batch, hidden],
                           "c0": [1, batch, hidden]},
                   {"y": [steps, 1, batch, hidden], "y_h": [1, batch, hidden],
                    "y_c": [1, batch, hidden]}, w)
    return ExporterGraph(model, {"x": _rand(rng, steps, batch, inputs),
                                 "h0": _rand(rng, 1, batch, hidden, scale=0.5),
                                 "c0": _rand(rng, 1, batch, hidden, scale=0.5)})


def rnn_relu(steps: int = 7, inputs: int = 5, hidden: int = 6, seed: int = 4) -> ExporterGraph:
    """A bidirectional Elman RNN with ReLU (forward) and Tanh (reverse), no bias."""
    rng = np.random.default_rng(seed)
    w = _weights(rng, 2, 1, hidden, inputs, "")
    del w["B"]
    nodes = [_node("RNN", ["x", "W", "R"], ["y", "y_h"], name="rnn", hidden_size=hidden,
                   direction="bidirectional", activations=["Relu", "Tanh"])]
    model = _model(nodes, {"x": [steps, 1, inputs]},
                   {"y": [steps, 2, 1, hidden], "y_h": [2, 1, hidden]}, w)
    return ExporterGraph(model, {"x": _rand(rng, steps, 1, inputs)})


BUILDERS: dict[str, Callable[[], ExporterGraph]] = {
    "torch_lstm_two_layers": torch_lstm,
    "torch_gru_h_n": torch_gru_h_n,
    "gru_reset_before": gru_reset_before,
    "lstm_peephole_clip": lstm_peephole,
    "rnn_relu_bidirectional": rnn_relu,
}
