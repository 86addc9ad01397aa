# SPDX-License-Identifier: Apache-2.0
"""npusim.compiler.recurrent: LSTM, GRU and RNN unrolled onto the device (the exporter corpus and
the ONNX node tests cover the op's forms; these cover the opsets, the host fallback and
the price of the recurrence)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.compiler import compile_full
from npusim.runtime import Session
from npusim.simulator.schedule import schedule

DEVICE = "brainwave-s10"


def _lstm(opset: int, steps: int = 4, hidden: int = 8, inputs: int = 5,
          lens_input: bool = False, clip: float | None = None) -> onnx.ModelProto:
    rng = np.random.default_rng(opset + steps)
    w = {"W": rng.standard_normal((1, 4 * hidden, inputs)).astype(np.float32) * 0.3,
         "R": rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32) * 0.3,
         "B": rng.standard_normal((1, 8 * hidden)).astype(np.float32) * 0.1}
    ins = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [steps, 1, inputs])]
    lens = ""
    if lens_input:
        ins.append(helper.make_tensor_value_info("lens", TensorProto.INT32, [1]))
        lens = "lens"
    attrs = {"hidden_size": hidden} | ({"clip": clip} if clip else {})
    node = helper.make_node("LSTM", ["x", "W", "R", "B", lens], ["y", "y_h"], name="lstm",
                            **attrs)
    graph = helper.make_graph(
        [node], "lstm", ins,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [steps, 1, 1, hidden]),
         helper.make_tensor_value_info("y_h", TensorProto.FLOAT, [1, 1, hidden])],
        [numpy_helper.from_array(v, k) for k, v in w.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, feeds: dict, numerics: str = "fp32"):
    comp = compile_full(model, device=DEVICE, numerics=numerics)
    outs = Session(comp.program).run(None, feeds)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    return comp, outs, ref


@pytest.mark.parametrize("opset", [9, 11, 17])
def test_every_opset_form_unrolls_and_matches_onnxruntime(opset):
    """Slice takes attributes before opset 10, Clip before 11, Unsqueeze before 13."""
    model = _lstm(opset, clip=1.5)
    x = np.random.default_rng(0).standard_normal((4, 1, 5)).astype(np.float32)
    comp, outs, ref = _run(model, {"x": x})
    row = next(r for r in comp.program.metadata["placement"] if r["node"] == "lstm")
    assert row["where"] == "device" and "4 time steps" in row["why"], row
    for a, b in zip(outs, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_sequence_lens_from_the_graph_keeps_the_node_on_the_host():
    """Lengths known only at run time: the steps to run are data, so the host runs it."""
    model = _lstm(17, lens_input=True)
    feeds = {"x": np.random.default_rng(1).standard_normal((4, 1, 5)).astype(np.float32),
             "lens": np.array([3], np.int32)}
    comp, outs, ref = _run(model, feeds)
    row = next(r for r in comp.program.metadata["placement"] if r["node"] == "lstm")
    assert row["where"] == "host", row
    for a, b in zip(outs, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_recurrence_is_priced_step_after_step():
    """Each step's recurrent product waits for the previous step's hidden state, so every
    step adds the same latency, and the steps dominate (the input products of all steps
    are one GEMM, the weights load once)."""
    cycles = {}
    for steps in (4, 8, 12):
        comp = compile_full(_lstm(17, steps=steps, hidden=256, inputs=16), device=DEVICE,
                            numerics="msfp8")
        cycles[steps] = schedule(comp.program, comp.options.device).cycles
    step = (cycles[8] - cycles[4]) / 4
    assert abs((cycles[12] - cycles[8]) / 4 - step) <= 0.05 * step, cycles
    assert 4 * step >= 0.6 * cycles[4], cycles


def test_every_step_reads_one_copy_of_the_recurrent_weights():
    """One weight matrix per gate, as Brainwave keeps them, each held once: the steps'
    products share the recurrent ones, however many steps there are."""
    for steps in (3, 9):
        comp = compile_full(_lstm(17, steps=steps), device=DEVICE, numerics="msfp16")
        assert len(comp.program.weight_tensors) == 2 * 4, comp.program.weight_tensors
