# SPDX-License-Identifier: Apache-2.0
"""The SCALE-Sim comparison's claim, on two small layers: a stride-1 layer differs from
npusim by exactly the weight fill of every fold but the first, a stride-2 layer with a
half window past its input also by SCALE-Sim's rounded-up output size."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from scalesim_compare import layers, run_scalesim

pytest.importorskip("scalesim", reason="SCALE-Sim is not installed (pip install scalesim)")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SCALE-Sim's numpy use


def _two_convs(path) -> str:
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((20, 24, 3, 3)).astype(np.float32)
    w2 = rng.standard_normal((12, 20, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "w2"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])]
    graph = helper.make_graph(
        nodes, "two_convs", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           [1, 24, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 12, 6, 6])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return str(path)


def test_scalesim_differs_by_the_weight_fill_and_the_strided_rounding(tmp_path):
    rows, cols = 16, 8
    got = layers(_two_convs(tmp_path / "m.onnx"), rows, cols)
    sims = run_scalesim(got, rows, cols)
    one, two = got
    assert sims[0] - one["predicted"] == -1  # stride 1: the fill of every fold, exactly
    assert one["predicted"] - one["npusim"] == one["folds"] * (rows - 2) - cols
    # stride 2 on a 14-wide padded input with a 3-wide window: (14 - 3) / 2 + 1 = 6.5,
    # SCALE-Sim streams 7 x 7 pixels per fold where the layer has 6 x 6
    extra = (7 * 7 - 6 * 6) * two["folds"]
    assert sims[1] - two["predicted"] == extra - 1
    assert one["folds"] == math.ceil(9 * 24 / rows) * math.ceil(20 / cols)
