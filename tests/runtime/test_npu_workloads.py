# SPDX-License-Identifier: Apache-2.0
"""The open-source NPU's 19 workloads as npusim models (npusim.runtime.zoo.npu_workloads)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from npusim.compiler import compile_full
from npusim.runtime import Session
from npusim.runtime.analysis.bench import resolve_model
from npusim.runtime.zoo.npu_workloads import GATES, PUBLISHED, build, counted_ops

# ops that NPU's flow printed (ops / TOPS / 300 MHz gives its cycles), from its own
# accounting in compiler/npu_layers.py
OPS = {"01_gemv_512x512": 3_145_728, "06_rnn_512_8": 50_331_648,
       "11_gru_512_8": 150_994_944, "14_lstm_512_8": 201_326_592,
       "16_mlp5_512": 9_437_184, "19_mlp3_1024_512_256_256_batched": 25_952_256}


@pytest.mark.parametrize("name", sorted(OPS))
def test_operations_are_counted_as_that_npu_counts_them(name):
    assert counted_ops(PUBLISHED[name]) == OPS[name]


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_every_workload_compiles_whole_onto_the_device(name):
    comp = compile_full(build(name), device="brainwave-s10")
    summary = comp.program.metadata["summary"]
    assert summary["host_calls"] == 0 and summary["device_macs"] == summary["macs"] > 0
    # the matrix unit does the counted products, recurrent ones included, but for the first
    # step's recurrent products of the zero initial state: they fold away at compile time
    # (all but the GRU's candidate product, whose operand r * h is not a constant)
    w = PUBLISHED[name]
    skipped = (w.batch * w.sizes[-1] ** 2 * (GATES[w.kind] - (w.kind == "gru"))
               if w.kind in GATES else 0)
    assert 2 * (summary["device_macs"] + skipped) == counted_ops(w)


@pytest.mark.parametrize("name", ["11_gru_512_8", "18_mlp3_1024_512_256_256"])
def test_fp32_matches_onnxruntime(name):
    _, model = resolve_model(f"npu:{name}")
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    got = Session(compile_full(model, device="brainwave-s10", numerics="fp32").program).run(
        None, {"x": x})[0]
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
