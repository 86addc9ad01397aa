# SPDX-License-Identifier: Apache-2.0
"""What a compilation is for: the target device and its number format."""

from __future__ import annotations

from dataclasses import dataclass

from npusim.simulator.config import DeviceConfig, load_device
from npusim.simulator.numerics import Format, Rounding


@dataclass(frozen=True)
class CompileOptions:
    """The target of one compilation.

    ``device`` already carries the chosen number format (``device.numerics``): the
    format is part of the datapath a program is built for.
    """

    device: DeviceConfig
    """Target configuration, format included."""
    rounding: Rounding = Rounding.NEAREST_EVEN
    """Rounding of weights and activations."""
    seed: int = 0
    """Seed of stochastic rounding."""
    strict: bool = False
    """Refuse, by name, any op that would run on the host instead of the device."""

    @property
    def format(self) -> Format:
        return self.device.format()

    @classmethod
    def make(cls, device: str | DeviceConfig | None = None, numerics: str | None = None,
             rounding: Rounding | str = Rounding.NEAREST_EVEN, seed: int = 0,
             strict: bool = False) -> CompileOptions:
        cfg = load_device(device)
        if numerics is not None:
            cfg.format(numerics)  # validates the name
            cfg = cfg.replace(numerics=numerics)
        return cls(cfg, Rounding(rounding), seed, strict)
