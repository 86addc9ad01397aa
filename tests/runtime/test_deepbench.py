# SPDX-License-Identifier: Apache-2.0
"""npusim.runtime.zoo.deepbench: DeepBench's recurrent inference layers as npusim models."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from npusim.compiler import compile_model
from npusim.runtime import Session
from npusim.runtime.analysis.bench import resolve_model
from npusim.runtime.zoo.deepbench import LAYERS, flops


def test_layers_are_deepbenchs_batch_one_inference_set():
    # rnn_problems.h, inference_server_set, batch 1: hidden 512 to 2816
    assert LAYERS["gru_2816_750"] == ("gru", 2816, 750)
    assert LAYERS["lstm_1536_50"] == ("lstm", 1536, 50)
    assert {h for _, h, _ in LAYERS.values()} == {512, 1024, 1536, 2048, 2560, 2816}


def test_flops_count_every_gate_product_of_every_step():
    # GRU 512, one step: 3 gates x (input 512 + hidden 512) x 512 multiply-adds, 2 ops each
    assert flops("gru_512_1") == 2 * 3 * 1024 * 512
    assert flops("lstm_512_25") == 2 * 25 * 4 * 1024 * 512


@pytest.mark.parametrize("device", ["brainwave-s10", "intel-npu"])
def test_a_layer_runs_and_matches_onnxruntime(device):
    name, model = resolve_model("deepbench:gru_512_1")
    assert name == "deepbench:gru_512_1"
    x = np.random.default_rng(0).uniform(-1, 1, (1, 1, 512)).astype(np.float32)
    got = Session(compile_model(model, device, numerics="fp32")).run(None, {"x": x})[0]
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
