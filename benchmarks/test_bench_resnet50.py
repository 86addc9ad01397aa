# SPDX-License-Identifier: Apache-2.0
"""ResNet-50 at batch 1: compile time, functional simulation time, and onnxruntime's time.

Run with timing on: ``pytest benchmarks --benchmark-enable``. Each simulation
benchmark records onnxruntime's median for the same model, measured in the same
run, and the ratio, in ``extra_info`` (shown with ``--benchmark-json``).
"""

from __future__ import annotations

import numpy as np
import pytest

from npusim.compiler import compile_model
from npusim.runtime import Session
from npusim.runtime.analysis.reference import median_seconds, onnxruntime_session


@pytest.fixture(scope="module")
def ort_session(resnet50):
    model, feeds = resnet50
    sess = onnxruntime_session(model)
    sess.run(None, feeds)
    return sess


@pytest.mark.benchmark(group="resnet50-onnxruntime")
def test_onnxruntime(benchmark, resnet50, ort_session):
    _, feeds = resnet50
    (out,) = benchmark(ort_session.run, None, feeds)
    assert out.shape == (1, 2048, 1, 1)


@pytest.mark.benchmark(group="resnet50-compile")
@pytest.mark.parametrize("numerics", ["fp32", "msfp8"])
def test_compile(benchmark, resnet50, numerics):
    model, _ = resnet50
    prog = benchmark.pedantic(compile_model, (model,), {"numerics": numerics}, rounds=2,
                              iterations=1)
    assert len(prog.instructions) > 50


@pytest.mark.benchmark(group="resnet50-simulate")
@pytest.mark.parametrize("numerics", ["fp32", "msfp8", "msfp16", "mxint8"])
def test_functional_simulation(benchmark, resnet50, ort_session, numerics):
    model, feeds = resnet50
    sess = Session(compile_model(model, numerics=numerics))
    sess.run(None, feeds)  # warm: numba kernels compiled, weight tiles decoded
    (out,) = benchmark(sess.run, None, feeds)
    assert out.shape == (1, 2048, 1, 1) and np.isfinite(out).all()
    ort_s = median_seconds(lambda: ort_session.run(None, feeds))
    sim_s = median_seconds(lambda: sess.run(None, feeds))
    benchmark.extra_info.update(onnxruntime_s=ort_s, simulator_s=sim_s,
                                ratio_vs_onnxruntime=sim_s / ort_s,
                                simulated_latency_us=sess.last_stats.latency_us)
