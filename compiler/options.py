# SPDX-License-Identifier: Apache-2.0
"""What a compilation is for: the target device and its number format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from npusim.compiler.errors import CompileError
from npusim.simulator.config import DeviceConfig, load_device
from npusim.simulator.numerics import Format, Rounding, get_format


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
    layer_formats: tuple[tuple[str, str], ...] = ()
    """``(ONNX node name, format)`` pairs: the matrix-unit layers that take another format
    than the device's (their weights, and the activations they multiply)."""

    @property
    def format(self) -> Format:
        return self.device.format()

    def layer_format(self, origin: tuple[str, ...]) -> Format:
        """The format of the matrix-unit layer that stands for the ONNX nodes ``origin``."""
        wanted = dict(self.layer_formats)
        for name in origin:
            if name in wanted:
                return self.device.format(wanted[name])
        return self.format

    @classmethod
    def make(cls, device: str | DeviceConfig | None = None, numerics: str | None = None,
             rounding: Rounding | str = Rounding.NEAREST_EVEN, seed: int = 0,
             strict: bool = False,
             layer_formats: Mapping[str, str] | None = None) -> CompileOptions:
        cfg = load_device(device)
        if numerics is not None:
            cfg.format(numerics)  # validates the name
            cfg = cfg.replace(numerics=numerics)
        for name, fmt in (layer_formats or {}).items():
            try:
                get_format(fmt, cfg.native_dim)  # not cfg.format: "" would be the default
            except ValueError as exc:
                raise CompileError(f"layer {name!r}: {exc}") from None
        return cls(cfg, Rounding(rounding), seed, strict,
                   tuple(sorted((layer_formats or {}).items())))
