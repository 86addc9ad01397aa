# SPDX-License-Identifier: Apache-2.0
"""A sweep's points: the device fields a grid may vary, and the Pareto front of priced points.

Shared by :mod:`~npusim.runtime.analysis.sweep`, which prices the points, and
:mod:`~npusim.runtime.analysis.plots`, which draws them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from npusim.simulator.config import DeviceConfig

GRID_FIELDS = tuple(f.name for f in dataclasses.fields(DeviceConfig) if f.name != "name")
"""The device fields a grid may vary."""


def pareto_front(rows: Sequence[dict], x: str, y: str) -> list[int]:
    """Indices of the rows no other row beats on both ``x`` and ``y`` (lower is better).

    Returned in increasing ``x`` (so decreasing ``y``); rows with equal ``(x, y)`` are
    all on the front. Rows whose ``x`` or ``y`` is missing or not finite are left out.
    """
    ok = [k for k, r in enumerate(rows) if all(isinstance(r.get(key), (int, float))
                                               and math.isfinite(r[key]) for key in (x, y))]
    front: list[int] = []
    best, last = math.inf, None
    for k in sorted(ok, key=lambda k: (rows[k][x], rows[k][y])):
        here = (rows[k][x], rows[k][y])
        if here[1] < best or here == last:
            front.append(k)
            best, last = here[1], here
    return front
