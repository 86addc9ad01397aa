# SPDX-License-Identifier: Apache-2.0
"""Shared by every test folder: the suite runs in one process, so keep its memory flat."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import time

import pytest

_LIBC = ctypes.CDLL(ctypes.util.find_library("c")) if ctypes.util.find_library("c") else None


@pytest.fixture(autouse=True)
def _collect_cycles():
    """After a test of a second or more, collect reference cycles. A compiled graph
    (networkx) is one, and holds a model's weights: left to the collector's own pace, a
    module that compiles ResNet-50 a dozen times holds gigabytes of them."""
    t0 = time.perf_counter()
    yield
    if time.perf_counter() - t0 > 1.0:
        gc.collect()


@pytest.fixture(scope="module", autouse=True)
def _release_module_memory():
    """After each module: collect its cycles and give the freed heap back to the system
    (glibc keeps freed memory of its per-thread arenas otherwise)."""
    yield
    gc.collect()
    if _LIBC is not None and hasattr(_LIBC, "malloc_trim"):
        _LIBC.malloc_trim(0)


def pytest_cmdline_main(config):
    """The suite runs on two pytest-xdist workers (``addopts``); a timing run
    (``--benchmark-enable``) takes one process, since pytest-benchmark times nothing under
    xdist. ``-n 0`` runs everything in one process."""
    if getattr(config.option, "benchmark_enable", False):
        config.option.numprocesses = 0
        config.option.dist = "no"
