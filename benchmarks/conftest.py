# SPDX-License-Identifier: Apache-2.0
"""Shared inputs of the benchmarks: the same seeded model and image the tests check."""

from __future__ import annotations

import numpy as np
import pytest

from npusim.runtime.zoo import build_resnet50


@pytest.fixture(scope="session")
def resnet50():
    model = build_resnet50(seed=0)
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    return model, {"images": x}
