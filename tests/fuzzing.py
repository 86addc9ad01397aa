# SPDX-License-Identifier: Apache-2.0
"""Shared settings of the fuzz tests (hypothesis).

CI runs a fixed, derandomized budget per test; a longer campaign is
``NPUSIM_FUZZ_EXAMPLES=20000 python -m pytest -q -k fuzz`` (random seeds then, so each run
explores new inputs; a failure prints the seed and the input to reproduce it).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_LONG = os.environ.get("NPUSIM_FUZZ_EXAMPLES")


def fuzz_settings(examples: int) -> settings:
    """``examples`` cases in CI (derandomized: the same inputs every run), or
    ``NPUSIM_FUZZ_EXAMPLES`` of them, random, when that is set."""
    return settings(max_examples=int(_LONG) if _LONG else examples, deadline=None,
                    derandomize=not _LONG, database=None,
                    suppress_health_check=list(HealthCheck))
