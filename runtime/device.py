# SPDX-License-Identifier: Apache-2.0
"""Simulated devices as a runtime owns them: one at a time per request, or a pool.

A :class:`Device` is one accelerator card. It holds one program at a time (loading
another replaces it, as configuring an FPGA with another bitstream does) and runs
one request at a time. A :class:`DevicePool` hands requests to free devices of
one configuration and loads the requested program where it is not loaded yet.

Example:
    >>> from npusim.runtime.device import DevicePool           # doctest: +SKIP
    >>> pool = DevicePool(2, "brainwave-s10")           # doctest: +SKIP
    >>> outputs, stats = pool.run(program, {"images": x})  # doctest: +SKIP
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npusim.simulator import device as simdevice
from npusim.simulator.config import DeviceConfig, load_device
from npusim.simulator.program import Program, ProgramError
from npusim.simulator.stats import RunStats

__all__ = ["Device", "DevicePool", "DeviceStats"]


@dataclass(frozen=True)
class DeviceStats:
    """What one device (or a pool of them) has done since it was opened."""

    runs: int = 0
    """Completed runs (a batch counts one per image)."""
    simulated_seconds: float = 0.0
    """Sum of the simulated latencies of those runs."""
    busy_seconds: float = 0.0
    """Wall time this host spent simulating them."""
    last: RunStats | None = None
    """Cycle statistics of the most recent run."""

    def __add__(self, other: DeviceStats) -> DeviceStats:
        return DeviceStats(self.runs + other.runs,
                           self.simulated_seconds + other.simulated_seconds,
                           self.busy_seconds + other.busy_seconds, other.last or self.last)


def _program(program: Program | str | Path) -> Program:
    return program if isinstance(program, Program) else Program.load(program)


class Device:
    """One simulated accelerator of a configuration (preset name, file or DeviceConfig).

    Runs are serialized by a lock: the device's DRAM holds one request's data at a time.
    """

    def __init__(self, config: str | Path | DeviceConfig = "brainwave-s10") -> None:
        self.config = load_device(config)
        self._device = simdevice.Device(self.config)
        self._lock = threading.Lock()
        self._stats = DeviceStats()
        self._last_end = 0.0

    def load(self, program: Program | str | Path) -> None:
        """Load ``program`` (a Program or a ``.npub`` path), replacing the one before.

        A program built for another target raises the simulator's ``ProgramError``.
        """
        prog = _program(program)
        with self._lock:
            self._device.load(prog)

    @property
    def program(self) -> Program | None:
        return self._device.program

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the loaded program once on ``feeds``; returns the outputs by name."""
        return self._run(feeds)[0]

    def run_batch(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the loaded program on a batch (inputs ``[images, *shape]``), the images one
        after another on the device; returns the outputs, ``[images, *shape]`` each."""
        return self._run(feeds, batch=True)[0]

    def _run(self, feeds: dict[str, np.ndarray],
             batch: bool = False) -> tuple[dict[str, np.ndarray], RunStats]:
        with self._lock:
            if self._device.program is None:
                raise ProgramError("no program loaded on the device")
            t0 = time.perf_counter()
            if batch:
                outputs, stats = self._device.run_batch(feeds)
                images = len(next(iter(outputs.values()), ()))
            else:
                outputs, stats = self._device.run(feeds)
                images = 1
            end = time.perf_counter()
            self._stats += DeviceStats(images, images * stats.latency_us * 1e-6, end - t0,
                                       stats)
            self._last_end = end
        return outputs, stats

    @property
    def stats(self) -> DeviceStats:
        return self._stats


class DevicePool:
    """``count`` devices of one configuration; thread-safe.

    :meth:`run` waits for a free device, preferring one that already holds the
    program, loads the program there if needed, runs and gives the device back.
    """

    def __init__(self, count: int, config: str | Path | DeviceConfig = "brainwave-s10") -> None:
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"a device pool needs at least one device, got {count!r}")
        cfg = load_device(config)
        self.config = cfg
        self._devices = [Device(cfg) for _ in range(count)]
        self._free = list(self._devices)
        self._cond = threading.Condition()
        self._paths: dict[str, Program] = {}

    @property
    def size(self) -> int:
        return len(self._devices)

    def _acquire(self, program: Program) -> Device:
        with self._cond:
            while not self._free:
                self._cond.wait()
            dev = next((d for d in self._free if d.program is program), self._free[-1])
            self._free.remove(dev)
            return dev

    def _release(self, dev: Device) -> None:
        with self._cond:
            self._free.append(dev)
            self._cond.notify()

    def run(self, program: Program | str | Path,
            feeds: dict[str, np.ndarray],
            batch: bool = False) -> tuple[dict[str, np.ndarray], RunStats]:
        """Run ``program`` once on a free device; returns the outputs and the run's stats
        (one image's). ``batch``: the feeds are ``[images, *shape]``, run one after
        another on that device (:meth:`Device.run_batch`)."""
        if not isinstance(program, Program):
            key = str(Path(program).resolve())
            with self._cond:
                if key not in self._paths:
                    self._paths[key] = Program.load(program)
                program = self._paths[key]
        dev = self._acquire(program)
        try:
            if dev.program is not program:
                dev.load(program)
            return dev._run(feeds, batch)
        finally:
            self._release(dev)

    def stats(self) -> DeviceStats:
        """Totals over the devices; ``last`` is the most recent run on any of them."""
        total = DeviceStats()
        for dev in sorted(self._devices, key=lambda d: d._last_end):
            total += dev.stats
        return total
