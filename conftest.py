# SPDX-License-Identifier: Apache-2.0
"""Shared by every test folder: the suite runs in one process, so keep its memory flat."""

from __future__ import annotations

import gc
import time

import pytest


@pytest.fixture(autouse=True)
def _collect_cycles():
    """After a test of a second or more, collect reference cycles. A compiled graph
    (networkx) is one, and holds a model's weights: left to the collector's own pace, a
    module that compiles ResNet-50 a dozen times holds gigabytes of them."""
    t0 = time.perf_counter()
    yield
    if time.perf_counter() - t0 > 1.0:
        gc.collect()
