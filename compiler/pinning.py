# SPDX-License-Identifier: Apache-2.0
"""Per-layer choice: weights pinned in the on-chip weight memory, or streamed from DRAM.

Brainwave pins a model's weights in the matrix register files when they fit; the
ResNet-50 firmware, whose weights did not, streamed them from DRAM with prefetch.
This pass does either, layer by layer:

* if every layer's weights fit in ``weight_buffer_kib``, all are pinned;
* otherwise room for two streaming chunks (the double buffer the prefetch needs) is
  kept back, and the rest is filled greedily with the layers whose streaming would
  stall the array the most per byte: a layer whose weights arrive faster than the
  array consumes them gains only the DMA latency from being pinned.

Pinned weights are loaded once, with the program; streamed ones cost DRAM traffic on
every run (:mod:`npusim.simulator.schedule`).
"""

from __future__ import annotations

import dataclasses
import math

from npusim.simulator import isa, timing
from npusim.simulator.config import DeviceConfig
from npusim.simulator.program import TensorDesc, align


def pin_weights(instrs: list[isa.Instruction], weights: list[TensorDesc],
                cfg: DeviceConfig, wbase: int = 0) -> list[isa.Instruction]:
    """``instrs`` with each ``MV_MUL``'s ``pinned`` flag set by the rule above."""
    desc = {wbase + t.addr: t for t in weights}
    layers: dict[int, list[timing.Work]] = {}
    for i in instrs:
        if isinstance(i, isa.MvMul) and i.weights in desc:
            t = desc[i.weights]
            fmt = cfg.format("fp32" if t.dtype == "float32" else t.dtype)
            layers.setdefault(i.weights, []).append(
                timing.mv_mul_work(dataclasses.replace(i, pinned=0), cfg, fmt, t.nbytes))
    capacity = cfg.weight_buffer_kib * 1024
    size = {a: align(desc[a].nbytes) for a in layers}
    if sum(size.values()) <= capacity:
        pinned = set(layers)
    else:
        reserve = 2 * max(math.ceil(size[a] / len(w.compute)) for a, ws in layers.items()
                          for w in ws)
        budget = capacity - reserve

        def gain(a: int) -> float:
            stall = sum(max(0, math.ceil(w.weight_bytes / cfg.dram_bytes_per_cycle)
                            - w.compute_cycles) + cfg.dram_latency_cycles for w in layers[a])
            return stall / size[a]

        pinned = set()
        for a in sorted(layers, key=lambda a: (-gain(a), a)):
            if size[a] <= budget:
                pinned.add(a)
                budget -= size[a]
    return [dataclasses.replace(i, pinned=int(i.weights in pinned))
            if isinstance(i, isa.MvMul) else i for i in instrs]
