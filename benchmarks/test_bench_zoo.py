# SPDX-License-Identifier: Apache-2.0
"""Every zoo featurizer at batch 1 on each real-part preset: functional simulation time
beside onnxruntime's, and the time the timing model takes to price the program.

Run with timing on: ``pytest benchmarks/test_bench_zoo.py --benchmark-enable``. Each
simulation benchmark records the simulated latency, the array utilization and
onnxruntime's median for the same model (measured in the same run) in ``extra_info``.
The models and inputs are the ones ``tests/runtime/test_zoo_models.py`` checks.
"""

from __future__ import annotations

import numpy as np
import pytest

from npusim.compiler import compile_model
from npusim.runtime import Session
from npusim.runtime.analysis.compare import default_inputs
from npusim.runtime.analysis.reference import median_seconds, onnxruntime_session
from npusim.runtime.zoo import MODELS
from npusim.simulator.config import load_device
from npusim.simulator.schedule import schedule

DEVICES = ("brainwave-s10", "arria10-pbs")


@pytest.fixture(scope="module", params=[
    pytest.param(n, marks=pytest.mark.slow) if n in ("resnet152", "ssd_vgg", "vgg16") else n
    for n in MODELS])
def zoo_model(request):
    model = MODELS[request.param](seed=0)
    return request.param, model, default_inputs(model, seed=0)


@pytest.mark.benchmark(group="zoo-simulate")
@pytest.mark.parametrize("device", DEVICES)
def test_functional_simulation(benchmark, zoo_model, device):
    name, model, feeds = zoo_model
    sess = Session(compile_model(model, device))
    sess.run(None, feeds)  # warm: numba kernels compiled, weight tiles decoded
    outs = benchmark(sess.run, None, feeds)
    assert all(np.isfinite(o).all() for o in outs)
    st = sess.last_stats
    assert st.cycles >= st.roofline_cycles * 0.99
    ref = onnxruntime_session(model)
    ort_s = median_seconds(lambda: ref.run(None, feeds), rounds=3)
    sim_s = median_seconds(lambda: sess.run(None, feeds), rounds=3)
    benchmark.extra_info.update(model=name, device=device,
                                simulated_latency_ms=st.latency_us / 1000,
                                utilization=st.utilization, onnxruntime_s=ort_s,
                                simulator_s=sim_s, ratio_vs_onnxruntime=sim_s / ort_s)


@pytest.mark.benchmark(group="zoo-timing-model")
def test_timing_model(benchmark, zoo_model):
    _, model, _ = zoo_model
    cfg = load_device(DEVICES[0])
    prog = compile_model(model, cfg)
    st = benchmark(schedule, prog, cfg)
    assert st.cycles == sum(layer.cycles for layer in st.layers)
