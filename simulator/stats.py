# SPDX-License-Identifier: Apache-2.0
"""Cycle statistics of a scheduled program: per layer and for the whole model.

``docs/timing.md`` defines every figure. In short: a layer's ``cycles`` is what it
adds to the latency (the per-layer cycles sum to the total); ``stalls`` is the time
the compute unit sat idle before the layer's chunks, by what it waited for; the
roofline bound is the least time the layer could take on this device, the longer of
its MACs at the array's peak and its DRAM bytes at full bandwidth, plus its host
transfers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

STALL_CAUSES = ("load", "store", "host")


@dataclass(frozen=True)
class Slice:
    """One job on one track of the timeline (a chunk of an instruction)."""

    track: str
    """``load``, ``matrix``, ``vector``, ``store`` or ``host``."""
    layer: int
    """Index of the instruction in the program."""
    start: int
    end: int
    what: str = ""
    """``weights``, ``activations``, ``writeback``, ``compute``, ``transfer``."""
    nbytes: int = 0


@dataclass(frozen=True)
class LayerStats:
    name: str
    op: str
    unit: str
    start: int
    """First cycle any of the layer's jobs runs."""
    end: int
    """Cycle its last job ends."""
    cycles: int
    """What the layer adds to the latency: its retirement minus the previous layer's."""
    compute_cycles: int
    """Busy cycles of the matrix or vector unit."""
    macs: int
    dram_bytes: int
    """Bytes moved between DRAM and the chip (streamed weights, loads, stores)."""
    host_bytes: int
    pinned: bool | None
    """Matrix layers: whether the weights stay on chip (None for other units)."""
    stalls: dict[str, int] = field(default_factory=dict)
    bound: str = "compute"
    """``compute``, ``memory`` or ``host``: the busiest resource of the layer (``none`` for
    control instructions)."""
    roofline_cycles: int = 0
    utilization: float = 0.0
    """MACs over the array's peak for the layer's span (start to end)."""


@dataclass(frozen=True)
class RunStats:
    """Cycle counts of one run of a program: the timeline, per layer and in total."""

    cycles: int
    clock_mhz: float
    peak_macs_per_cycle: int
    layers: tuple[LayerStats, ...]
    roofline_cycles: int
    timeline: tuple[Slice, ...] = ()

    @property
    def latency_us(self) -> float:
        return self.cycles / self.clock_mhz

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def utilization(self) -> float:
        """MACs over what the array could do in the run's cycles."""
        return self.macs / max(1, self.cycles * self.peak_macs_per_cycle)

    @property
    def achieved_tops(self) -> float:
        """Tera-operations per second achieved (a MAC is two operations)."""
        return 2 * self.macs / max(self.latency_us, 1e-12) / 1e6

    @property
    def roofline_ratio(self) -> float:
        """Simulated cycles over the roofline bound (1.0 is a perfect schedule)."""
        return self.cycles / max(1, self.roofline_cycles)

    def stalls(self) -> dict[str, int]:
        return {c: sum(layer.stalls.get(c, 0) for layer in self.layers) for c in STALL_CAUSES}

    def to_dict(self, timeline: bool = False) -> dict:
        out = {"cycles": self.cycles, "latency_us": self.latency_us,
               "clock_mhz": self.clock_mhz, "macs": self.macs,
               "achieved_tops": self.achieved_tops, "utilization": self.utilization,
               "roofline_cycles": self.roofline_cycles, "roofline_ratio": self.roofline_ratio,
               "stalls": self.stalls(),
               "layers": [asdict(layer) for layer in self.layers]}
        if timeline:
            out["timeline"] = [asdict(s) for s in self.timeline]
        return out
