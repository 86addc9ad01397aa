# SPDX-License-Identifier: Apache-2.0
"""DeepBench's recurrent inference layers at batch 1 (baidu-research/DeepBench,
``code/kernels/rnn_problems.h``, ``inference_server_set``): one GRU or LSTM layer whose
input is as wide as its hidden state, as cuDNN runs it (GRU with
``linear_before_reset = 1``, biases), the last hidden state out. Brainwave's ISCA 2018
paper measured these layers; ``benchmarks/deepbench_rnn.py`` prices them.

    >>> sorted(LAYERS)[:2]
    ['gru_1024_1500', 'gru_1536_375']
"""

from __future__ import annotations

import functools

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler.recurrent import GATES

LAYERS: dict[str, tuple[str, int, int]] = {
    f"{kind}_{hidden}_{steps}": (kind, hidden, steps)
    for kind, hidden, steps in [("lstm", 512, 25), ("lstm", 1024, 25), ("lstm", 1536, 50),
                                ("lstm", 2048, 25), ("gru", 512, 1), ("gru", 1024, 1500),
                                ("gru", 1536, 375), ("gru", 2048, 375), ("gru", 2560, 375),
                                ("gru", 2816, 750)]}
"""``kind_hidden_steps`` -> (kind, hidden units, time steps); batch 1, all from DeepBench's
inference server set."""


def flops(name: str) -> int:
    """The layer's operations as a TFLOPS figure counts them: 2 per multiply-add of its
    gate products, input and recurrent, over every step."""
    kind, hidden, steps = LAYERS[name]
    return 2 * steps * GATES[kind.upper()] * (hidden + hidden) * hidden


def build(name: str, seed: int = 0) -> onnx.ModelProto:
    kind, hidden, steps = LAYERS[name]
    g = GATES[kind.upper()]
    rng = np.random.default_rng(seed)
    scale = hidden ** -0.5
    inits = [numpy_helper.from_array((rng.standard_normal((1, g * hidden, hidden)) * scale)
                                     .astype(np.float32), n) for n in ("W", "R")]
    inits.append(numpy_helper.from_array((rng.standard_normal((1, 2 * g * hidden)) * 0.1)
                                         .astype(np.float32), "B"))
    attrs = {"hidden_size": hidden} | ({"linear_before_reset": 1} if kind == "gru" else {})
    node = helper.make_node(kind.upper(), ["x", "W", "R", "B"], ["", "y_h"], name=name,
                            **attrs)
    graph = helper.make_graph(
        [node], name, [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                     [steps, 1, hidden])],
        [helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [1, 1, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="npusim-zoo")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


BUILDERS = {name: functools.partial(build, name) for name in LAYERS}
