# SPDX-License-Identifier: Apache-2.0
"""``benchmarks/kernel_ab.py`` switches the kernel it names off and back on: the layers
run another way (fp32 sums in another order; the same maxima, the same block-format
bits, the same element-wise chains) and the switch is undone afterwards."""

from __future__ import annotations

import kernel_ab
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from npusim.simulator import _bfp_rows, _bfp_stem, _fma, _fma_rows, gemm, vector_chains


@pytest.mark.skipif(not _fma.AVAILABLE, reason="no AVX-512 here")
@pytest.mark.parametrize(("model", "kernel", "fmt"), [
    ("mobilenet_v3_small", "depthwise-rows", "fp32"),
    pytest.param("mobilenet_v3_small", "block-depthwise-rows", "mxint8",
                 marks=pytest.mark.skipif(not _bfp_rows.AVAILABLE,
                                          reason="no AVX-512 DQ here")),
    pytest.param("mobilenet_v2", "block-stem", "msfp16",
                 marks=pytest.mark.skipif(not _bfp_rows.AVAILABLE,
                                          reason="no AVX-512 DQ here")),
    ("light:squeezenet", "maxpool-rows", "fp32"),
    ("resnext26_32x4d", "grouped", "fp32")])
def test_kernel_ab_times_both_ways(model: str, kernel: str, fmt: str, capsys,
                                   monkeypatch) -> None:
    calls = []
    target = {"depthwise-rows": (_fma_rows, "depthwise"),
              "block-depthwise-rows": (_bfp_rows, "depthwise"),
              "block-stem": (_bfp_stem, "conv"),
              "maxpool-rows": (_fma_rows, "maxpool"),
              "grouped": (gemm, "_conv_grouped_fma")}[kernel]
    real = getattr(*target)
    monkeypatch.setattr(*target, lambda *a, **k: calls.append(1) or real(*a, **k))
    assert kernel_ab.main([model, "--kernel", kernel, "--format", fmt, "--rounds", "1"]) == 0
    line = capsys.readouterr().out
    assert f"{model} {fmt} {kernel}: on " in line and "off / on" in line
    diff = float(line.rsplit("at most ", 1)[1])
    if kernel in ("maxpool-rows", "block-depthwise-rows", "block-stem"):
        assert diff == 0  # the max is exact, the block formats bit-exact, either way
    else:
        assert 0 < diff < 1e-3  # off: another order of fp32 sums, the same model
    assert calls  # on: the kernel ran
    for module, name, value, _ in kernel_ab._REAL.values():  # every switch back on
        assert getattr(module, name) == value


def test_kernel_ab_switches_the_fused_vector_passes(tmp_path, capsys) -> None:
    """``fused-vector-passes``: the device's element-wise chains (a BatchNorm and ReLU
    before a convolution) on and off give the same bits, and the switch ends on."""
    rng = np.random.default_rng(0)
    consts = {"g": rng.standard_normal(8), "b": rng.standard_normal(8),
              "mu": rng.standard_normal(8), "var": rng.uniform(0.5, 2, 8),
              "w": rng.standard_normal((4, 8, 1, 1))}
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "mu", "var"], ["t"]),
             helper.make_node("Relu", ["t"], ["r"]), helper.make_node("Conv", ["r", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "pre", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16, 16])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in consts.items()])
    path = tmp_path / "pre.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    calls = []
    real = vector_chains.chains
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(vector_chains, "chains", lambda *a, **k: calls.append(1) or real(*a, **k))
        assert kernel_ab.main([str(path), "--kernel", "fused-vector-passes", "--rounds", "1"]) == 0
    line = capsys.readouterr().out
    assert "fused-vector-passes: on " in line and float(line.rsplit("at most ", 1)[1]) == 0
    assert calls
