# SPDX-License-Identifier: Apache-2.0
"""The simulated timeline as a Chrome trace (JSON trace event format; Perfetto opens it).

Each queue or unit is a track (a "thread" of one "process", the device); each job on
it is a complete event (``"ph": "X"``) named after its layer, timed in microseconds
of simulated time, with its cycles and bytes in ``args``.

Example:
    >>> trace = chrome_trace(stats, "resnet50 on brainwave-s10")   # doctest: +SKIP
    >>> json.dump(trace, open("trace.json", "w"))                    # doctest: +SKIP
"""

from __future__ import annotations

from npusim.simulator.stats import RunStats

TRACKS = ("host", "load", "matrix", "vector", "loader", "store")
"""``loader``: a matrix-vector unit's write-backs and input loads (:mod:`npusim.simulator.mvu`)."""


def chrome_trace(stats: RunStats, title: str = "npusim device") -> dict:
    """A Chrome trace event document of ``stats.timeline``."""
    us = 1.0 / stats.clock_mhz
    events: list[dict] = [{"ph": "M", "pid": 1, "name": "process_name",
                           "args": {"name": title}}]
    for tid, track in enumerate(TRACKS, start=1):
        events.append({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name",
                       "args": {"name": track}})
        events.append({"ph": "M", "pid": 1, "tid": tid, "name": "thread_sort_index",
                       "args": {"sort_index": tid}})
    tids = {t: k for k, t in enumerate(TRACKS, start=1)}
    for s in stats.timeline:
        layer = stats.layers[s.layer]
        args = {"op": layer.op, "instruction": s.layer, "start_cycle": s.start,
                "cycles": s.end - s.start}
        if s.nbytes:
            args["bytes"] = s.nbytes
        events.append({"ph": "X", "pid": 1, "tid": tids[s.track], "name": layer.name,
                       "cat": s.what, "ts": s.start * us, "dur": (s.end - s.start) * us,
                       "args": args})
    return {"traceEvents": events, "displayTimeUnit": "ns",
            "otherData": {"cycles": stats.cycles, "clock_mhz": stats.clock_mhz,
                          "latency_us": stats.latency_us}}
