# SPDX-License-Identifier: Apache-2.0
"""Device configurations: typed, frozen, loaded from presets or a TOML/JSON file.

Primary parameters live in the preset files (``simulator/presets/*.toml``, each
figure with its source); derived figures are properties here and nowhere else.

Example:
    >>> cfg = load_device("brainwave-s10")
    >>> cfg.peak_macs_per_cycle
    96000
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from npusim.simulator.area import unit_alms
from npusim.simulator.numerics import FORMAT_NAMES, Format, get_format

DEFAULT_DEVICE = "brainwave-s10"


MAX_INT = 2**31 - 1
MIN_FLOAT, MAX_FLOAT = 1e-6, 1e9
"""Bounds of every field: far beyond any device, and every derived rate stays finite."""


class ConfigError(ValueError):
    """A device configuration that cannot be used."""


MATRIX_UNITS = ("systolic", "mvu")


@dataclass(frozen=True)
class MvuConfig:
    """A Brainwave-style matrix-vector unit: ``cores`` identical cores, each of ``tiles``
    tile engines of ``array_cols`` dot-product engines that reduce ``native_dim`` lanes,
    each engine ``dot_rows`` dot products per cycle (one per activation row it holds),
    feeding an external vector register file, ``mfus`` multifunction units and a loader
    that writes results back. The pipeline figures are cycles; ``docs/timing.md`` gives
    the formulas that use them."""

    cores: int
    """Identical cores, each running its own share of the activation rows."""
    dot_rows: int
    """Activation rows a dot-product engine holds and reduces at once."""
    row_chunk: int
    """Row groups (of ``array_cols`` outputs) the accumulators hold: a matrix is issued in
    chunks of this many (the last chunk takes up to twice as many), and has at least one."""
    start_cycles: int
    """From the start of a run to the first instruction reaching the units."""
    init_cycles: int
    """Lost by a unit's scheduler at the start of each macro-op it runs."""
    hop_cycles: int
    """Per tile engine, for an instruction to travel down the chain of tiles."""
    tile_cycles: int
    """Through one tile engine: from its instruction to its partial dot products."""
    accum_cycles: int
    """From the last tile's sums through the accumulators to the output queue."""
    output_bubble: int
    """Cycles the output queue pauses after each group of ``dot_rows`` vectors."""
    evrf_cycles: int
    """Through the external vector register file."""
    mfu_cycles: int
    """Through one multifunction unit (activation, add, multiply)."""
    mfus: int
    """Multifunction units in the chain."""
    loader_cycles: int
    """From a vector entering the loader to it being written."""
    tag_cycles: int
    """From a write-back's end to a waiting unit seeing it."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            low = 1 if f.name in ("cores", "dot_rows", "row_chunk", "mfus") else 0
            if isinstance(value, bool) or not isinstance(value, int) \
                    or not low <= value <= 2**20:
                raise ConfigError(f"device field 'mvu.{f.name}' must be an integer in "
                                  f"[{low}, {2**20}], got {value!r}")


@dataclass(frozen=True)
class DeviceConfig:
    """One accelerator: a set of matrix tiles (systolic arrays), a vector unit, memories."""

    name: str
    """Preset or file name (not part of the fingerprint)."""
    native_dim: int
    """Rows of one array = length of the vectors it reduces (and the ms-fp block size)."""
    array_cols: int
    """Columns of one array: output channels computed at once per tile."""
    tiles: int
    """Matrix tiles working in parallel on different output columns."""
    clock_mhz: float
    """Datapath clock."""
    numerics: str
    """Default number format of the matrix datapath."""
    vector_lanes: int
    """Elements per cycle of the vector unit (ReLU, add, pooling, softmax)."""
    weight_buffer_kib: int
    """On-chip weight memory (matrix register file)."""
    activation_buffer_kib: int
    """On-chip activation memory (vector register file)."""
    dram_gbps: float
    """Device DRAM bandwidth, GB/s."""
    dram_latency_cycles: int
    """Latency of one DMA from DRAM, cycles."""
    host_link_gbps: float
    """Host link (PCIe) bandwidth, GB/s."""
    host_link_latency_us: float
    """Latency of one host transfer, microseconds."""
    dram_mib: int = 4096
    """Device DRAM capacity."""
    matrix_unit: str = "systolic"
    """``systolic`` (weight-stationary arrays) or ``mvu`` (matrix-vector unit)."""
    mvu: MvuConfig | None = None
    """The matrix-vector unit's figures (``matrix_unit = "mvu"`` only)."""

    def __post_init__(self) -> None:
        if self.matrix_unit not in MATRIX_UNITS:
            raise ConfigError(f"device field 'matrix_unit' must be one of "
                              f"{', '.join(MATRIX_UNITS)}, got {self.matrix_unit!r}")
        if isinstance(self.mvu, dict):
            known = {f.name for f in dataclasses.fields(MvuConfig)}
            if sorted(self.mvu) != sorted(known):
                raise ConfigError(f"device table 'mvu' must have exactly the fields "
                                  f"{', '.join(sorted(known))}")
            object.__setattr__(self, "mvu", MvuConfig(**self.mvu))
        if self.mvu is not None and not isinstance(self.mvu, MvuConfig):
            raise ConfigError("device field 'mvu' must be a table of fields")
        if (self.matrix_unit == "mvu") != isinstance(self.mvu, MvuConfig):
            raise ConfigError("a device has an 'mvu' table exactly when its matrix_unit "
                              "is 'mvu'")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (isinstance(value, bool) or not isinstance(value, int)
                                    or not 0 < value <= MAX_INT):
                raise ConfigError(f"device field '{f.name}' must be an integer in "
                                  f"[1, {MAX_INT}], got {value!r}")
            if f.type == "float":
                if isinstance(value, bool) or not isinstance(value, (int, float)) \
                        or not MIN_FLOAT <= value <= MAX_FLOAT:
                    raise ConfigError(f"device field '{f.name}' must be a number in "
                                      f"[{MIN_FLOAT:g}, {MAX_FLOAT:g}], got {value!r}")
                object.__setattr__(self, f.name, float(value))  # 100 and 100.0: one fingerprint
        if self.numerics not in FORMAT_NAMES:
            raise ConfigError(f"device field 'numerics': unknown format {self.numerics!r}")

    # --- derived figures (computed here only) ---
    @property
    def peak_macs_per_cycle(self) -> int:
        per_tile = self.native_dim * self.array_cols * self.tiles
        return per_tile * (self.mvu.cores * self.mvu.dot_rows if self.mvu else 1)

    @property
    def input_lanes(self) -> int:
        """Elements entering the matrix unit per cycle (each through a converter)."""
        return self.native_dim * self.tiles * (self.mvu.cores * self.mvu.dot_rows
                                               if self.mvu else 1)

    @property
    def matrix_alms(self) -> float:
        """The matrix unit's logic in ALMs, by the first-order model of
        :mod:`npusim.simulator.area` (its lanes and converters in this device's format)."""
        return unit_alms(self.peak_macs_per_cycle, self.input_lanes, self.format())

    @property
    def peak_tops(self) -> float:
        """Tera-operations per second, counting a MAC as two operations."""
        return 2 * self.peak_macs_per_cycle * self.clock_mhz * 1e6 / 1e12

    @property
    def dram_bytes_per_cycle(self) -> float:
        return self.dram_gbps * 1e9 / (self.clock_mhz * 1e6)

    @property
    def host_bytes_per_cycle(self) -> float:
        return self.host_link_gbps * 1e9 / (self.clock_mhz * 1e6)

    @property
    def host_latency_cycles(self) -> int:
        return round(self.host_link_latency_us * self.clock_mhz)

    @property
    def on_chip_kib(self) -> int:
        return self.weight_buffer_kib + self.activation_buffer_kib

    def format(self, name: str | None = None) -> Format:
        """The number format ``name`` (default: this device's) with its block size."""
        return get_format(name or self.numerics, self.native_dim)

    def to_dict(self) -> dict:
        """Every field; the matrix-unit fields only for a matrix-vector unit (so that a
        systolic device has the description, and the fingerprint, it always had)."""
        out = dataclasses.asdict(self)
        if self.mvu is None:
            del out["matrix_unit"], out["mvu"]
        return out

    def fingerprint(self) -> bytes:
        """SHA-256 of every field but the name: what a program is built for."""
        fields = {k: v for k, v in self.to_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).digest()

    def replace(self, **changes) -> DeviceConfig:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"device {self.name}: unknown field(s) {', '.join(unknown)}")
        return dataclasses.replace(self, **changes)


def preset_names() -> list[str]:
    files = resources.files("npusim.simulator.presets").iterdir()
    return sorted(p.name[:-5] for p in files if p.name.endswith(".toml"))


def _from_mapping(data: dict, name: str) -> DeviceConfig:
    known = {f.name for f in dataclasses.fields(DeviceConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"device {name}: unknown field(s) {', '.join(unknown)}")
    data = {"name": name, **data}
    missing = sorted(known - set(data) - {"dram_mib", "matrix_unit", "mvu"})
    if missing:
        raise ConfigError(f"device {name}: missing field(s) {', '.join(missing)}")
    return DeviceConfig(**data)


def load_device(spec: str | Path | DeviceConfig | None = None) -> DeviceConfig:
    """A preset name, or a ``.toml`` / ``.json`` file with the fields of :class:`DeviceConfig`.

    A file may start from a preset with ``base = "PRESET"`` and override fields.
    """
    if spec is None:
        spec = DEFAULT_DEVICE
    if isinstance(spec, DeviceConfig):
        return spec
    text_spec = str(spec)
    if text_spec in preset_names():
        raw = resources.files("npusim.simulator.presets").joinpath(f"{text_spec}.toml").read_text()
        return _from_mapping(tomllib.loads(raw), text_spec)
    path = Path(text_spec)
    if not path.is_file():
        raise ConfigError(f"unknown device {text_spec!r}: not a preset "
                          f"({', '.join(preset_names())}) nor a file")
    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text())
        else:
            data = tomllib.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"device file {path}: cannot parse: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"device file {path}: expected a table of fields")
    base = data.pop("base", None)
    if base is not None:
        merged = load_device(base).to_dict()
        merged.pop("name")
        merged.update(data)
        data = merged
    return _from_mapping(data, path.stem)
