# SPDX-License-Identifier: Apache-2.0
"""The functional simulator's speed beside onnxruntime's on mobile-style graphs
(depthwise, squeeze-excite and grouped convolutions), per format.

Run with timing on: ``pytest benchmarks/test_bench_sim_speed.py --benchmark-enable``;
``extra_info`` holds onnxruntime's best time for the same model and input, measured in
the same run, and the ratio. ``benchmarks/sim_speed.py`` makes the README's table over
every zoo and light model. Without timing, each case still checks that the simulator's
output is the golden model's, bit for bit.
"""

from __future__ import annotations

import numpy as np
import pytest
from sim_speed import best_seconds

from npusim.compiler import compile_full
from npusim.compiler.interpret import Numerics, evaluate
from npusim.compiler.shapes import seeded_inputs
from npusim.runtime.analysis.reference import onnxruntime_session
from npusim.runtime.session import Session
from npusim.runtime.zoo import MODELS


@pytest.fixture(scope="module", params=["mobilenet_v3_small", "resnext26_32x4d"])
def mobile_model(request):
    model = MODELS[request.param](seed=0)
    return request.param, model, seeded_inputs(model)


@pytest.mark.benchmark(group="sim-speed")
@pytest.mark.parametrize("fmt", ["fp32", "msfp16", "mxint8", "msfp8"])
def test_simulation_speed(benchmark, mobile_model, fmt):
    name, model, feeds = mobile_model
    compiled = compile_full(model, "brainwave-s10", numerics=fmt)
    sess = Session(compiled.program)
    (out,) = benchmark(sess.run, None, feeds)
    gold = evaluate(compiled.graph, feeds, Numerics(compiled.options.format))
    assert np.array_equal(out, next(iter(gold.values())))
    if benchmark.enabled:
        ref = onnxruntime_session(model)
        sim_s, ort_s = best_seconds([lambda: sess.run(None, feeds),
                                     lambda: ref.run(None, feeds)], rounds=5)
        benchmark.extra_info.update(model=name, numerics=fmt, simulator_s=sim_s,
                                    onnxruntime_s=ort_s, ratio_vs_onnxruntime=sim_s / ort_s)
