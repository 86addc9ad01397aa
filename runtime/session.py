# SPDX-License-Identifier: Apache-2.0
"""An onnxruntime-like session over a program on a simulated device.

Example:
    >>> from runtime import Session                       # doctest: +SKIP
    >>> sess = Session("resnet50.npub")                    # doctest: +SKIP
    >>> (features,) = sess.run(None, {"images": x})        # doctest: +SKIP
    >>> sess.last_stats.latency_us                         # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from simulator.config import DeviceConfig, load_device
from simulator.device import Device, InputError, RunStats
from simulator.program import Program


class Session:
    """Runs one program; ``device`` defaults to the program's own target.

    Naming another device checks the program's fingerprint against it, as loading
    a bitstream onto an FPGA of another part would fail.
    """

    def __init__(self, program: Program | str | Path,
                 device: str | Path | DeviceConfig | None = None) -> None:
        self.program = program if isinstance(program, Program) else Program.load(program)
        cfg = self.program.target if device is None else load_device(device)
        self.device = Device(cfg)
        self.device.load(self.program)
        self.last_stats: RunStats | None = None

    def get_inputs(self):
        return list(self.program.inputs)

    def get_outputs(self):
        return list(self.program.outputs)

    def run(self, output_names: list[str] | None,
            feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run once; return the requested outputs (all if ``None``) in order."""
        outputs, stats = self.device.run(feeds)
        self.last_stats = stats
        names = output_names or [t.name for t in self.program.outputs]
        unknown = [n for n in names if n not in outputs]
        if unknown:
            raise InputError(f"unknown output '{unknown[0]}'; the program gives "
                             f"{', '.join(outputs)}")
        return [outputs[n] for n in names]
