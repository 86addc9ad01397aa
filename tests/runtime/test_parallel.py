# SPDX-License-Identifier: Apache-2.0
"""``npusim.runtime.analysis.parallel``: results in input order, errors raised as themselves, early
stops, in every mode. ``pow(shared, item)`` is the work: a builtin, so any worker can run it."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from npusim.runtime.analysis.parallel import Mode, map_chunks

HAS_RAY = importlib.util.find_spec("ray") is not None
ITEMS = list(range(12))
EXPECTED = [2 ** i for i in ITEMS]


def _failing_items():
    yield 1
    yield 2
    raise LookupError("the dataset broke")


def test_serial_keeps_order_stops_early_and_reads_no_further():
    assert map_chunks(pow, ITEMS, len(ITEMS), shared=2, progress=False) == EXPECTED
    read = []

    def items():
        for i in ITEMS:
            read.append(i)
            yield i

    assert map_chunks(pow, items(), len(ITEMS), shared=2, stop=lambda r: r == 8,
                      progress=False) == [1, 2, 4, 8]
    assert read == [0, 1, 2, 3]
    assert map_chunks(pow, [1, 2], 2, shared=3, setup=lambda s: s * 2, progress=False) == [6, 36]


def test_processes_keep_order_and_raise_the_workers_error():
    kw = {"shared": 2, "mode": Mode.PROCESSES, "workers": 2, "progress": False}
    assert map_chunks(pow, ITEMS, len(ITEMS), **kw) == EXPECTED
    with pytest.raises(TypeError):
        map_chunks(pow, [1, "x", 3], 3, **kw)
    with pytest.raises(LookupError, match="the dataset broke"):
        map_chunks(pow, _failing_items(), 3, **kw)
    got = map_chunks(pow, ITEMS, len(ITEMS), stop=lambda r: r == 16, **kw)
    assert 16 in got and all(r is None or r == e for r, e in zip(got, EXPECTED))


@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")
def test_ray_keeps_order_and_raises_the_workers_error():
    import logging

    import ray

    root = str(Path(__file__).resolve().parents[2])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR,
             runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join(
                 p for p in (root, os.environ.get("PYTHONPATH")) if p)}})
    try:
        kw = {"shared": 2, "mode": Mode.RAY, "progress": False}
        assert map_chunks(pow, ITEMS, len(ITEMS), **kw) == EXPECTED
        with pytest.raises(TypeError):  # the worker's own exception, not RayTaskError
            map_chunks(pow, [1, "x", 3], 3, **kw)
        assert ray.is_initialized()  # not started by map_chunks: left running
    finally:
        ray.shutdown()
