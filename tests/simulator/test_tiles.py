# SPDX-License-Identifier: Apache-2.0
"""The committed register-tiled kernels are what their generator writes."""

from npusim.simulator import _tilegen


def test_generated_kernels_are_current() -> None:
    assert _tilegen.TARGET.read_text() == _tilegen.source(), (
        "simulator/_tiles.py is stale: run python -m npusim.simulator._tilegen")
