# SPDX-License-Identifier: Apache-2.0
"""``npusim device``: a device configuration in text, primary fields then derived figures.

Every derived figure comes from a :class:`~npusim.simulator.config.DeviceConfig` property; this
module only lays them out (and converts KiB to MiB for display).

Example:
    >>> from npusim.simulator.config import load_device
    >>> text = format_device(load_device("brainwave-s10"))
    >>> [line for line in text.splitlines() if "peak MACs" in line]
    ['  peak MACs per cycle    96,000']
"""

from __future__ import annotations

import argparse
import dataclasses

from npusim.simulator.config import DeviceConfig, load_device, preset_names

UNITS: dict[str, str] = {
    "native_dim": "elements",
    "array_cols": "columns",
    "tiles": "",
    "clock_mhz": "MHz",
    "numerics": "",
    "vector_lanes": "elements/cycle",
    "weight_buffer_kib": "KiB",
    "activation_buffer_kib": "KiB",
    "dram_gbps": "GB/s",
    "dram_latency_cycles": "cycles",
    "host_link_gbps": "GB/s",
    "host_link_latency_us": "us",
    "dram_mib": "MiB",
    "matrix_unit": "",
}
"""Unit shown after each primary field (every field of DeviceConfig but ``name``)."""

MVU_UNITS: dict[str, str] = {"cores": "", "dot_rows": "rows/engine", "row_chunk": "row groups",
                             "mfus": ""}
"""Units of the matrix-vector unit's fields (``cycles`` for the others)."""

_LABEL_WIDTH = 22


def _num(value: int | float | str) -> str:
    """Integers with thousands separators; floats to 4 significant digits, keeping one decimal."""
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    text = f"{value:.4g}"
    return text if "." in text or "e" in text else text + ".0"


def _line(label: str, value: int | float | str, unit: str = "") -> str:
    return f"  {label:<{_LABEL_WIDTH}} {_num(value)}{' ' + unit if unit else ''}"


def format_device(cfg: DeviceConfig) -> str:
    """Primary fields, one per line with units, then the derived figures."""
    lines = [f"device {cfg.name}"]
    for f in dataclasses.fields(cfg):
        if f.name not in ("name", "mvu"):
            lines.append(_line(f.name, getattr(cfg, f.name), UNITS[f.name]))
    if cfg.mvu:
        lines.append("matrix-vector unit")
        lines += [_line(f.name, getattr(cfg.mvu, f.name), MVU_UNITS.get(f.name, "cycles"))
                  for f in dataclasses.fields(cfg.mvu)]
    fmt = cfg.format()
    lines += [
        "derived",
        _line("peak MACs per cycle", cfg.peak_macs_per_cycle),
        _line("peak TOPS", cfg.peak_tops),
        _line("on-chip capacity", cfg.on_chip_kib / 1024, "MiB (weight + activation)"),
        _line("DRAM bytes per cycle", cfg.dram_bytes_per_cycle, "B/cycle"),
        _line("host bytes per cycle", cfg.host_bytes_per_cycle, "B/cycle"),
        _line("host latency", cfg.host_latency_cycles, "cycles"),
        _line("block size", fmt.block_size, "(fp32: no shared exponent)" if fmt.is_fp32
              else f"elements per shared exponent ({fmt.name})"),
        _line("matrix unit logic", round(cfg.matrix_alms), "ALMs (first-order model, "
              "simulator/area.py)"),
        _line("fingerprint", cfg.fingerprint().hex()[:16]),
    ]
    return "\n".join(lines)


def format_device_list() -> str:
    """One line per preset: array shape (tiles x (lanes x columns), and for a
    matrix-vector unit its cores and rows per engine), clock, numerics, peak TOPS."""
    cfgs = [load_device(name) for name in preset_names()]
    shapes = [f"{c.tiles} x ({c.native_dim} x {c.array_cols})"
              + (f" x {c.mvu.cores} cores x {c.mvu.dot_rows} rows" if c.mvu else "")
              for c in cfgs]
    w_name = max(len(c.name) for c in cfgs)
    w_shape = max(len(s) for s in shapes)
    w_fmt = max(len(c.numerics) for c in cfgs)
    return "\n".join(
        f"{c.name:<{w_name}}  {shape:<{w_shape}}  {_num(c.clock_mhz):>7} MHz  "
        f"{c.numerics:<{w_fmt}}  {_num(c.peak_tops):>7} peak TOPS"
        for c, shape in zip(cfgs, shapes, strict=True))


def add_commands(sub: argparse._SubParsersAction, formats: tuple[str, ...]) -> None:
    """Add ``npusim device`` to the ``npusim`` parser."""
    dv = sub.add_parser("device", help="device configurations: list presets, show one")
    dvsub = dv.add_subparsers(dest="device_command", required=True)
    dvsub.add_parser("list", help="list the presets")
    ds = dvsub.add_parser("show", help="a configuration with its derived figures")
    ds.add_argument("spec", metavar="PRESET_OR_FILE")
    dv.set_defaults(fn=cmd_device)


def cmd_device(args: argparse.Namespace) -> int:
    if args.device_command == "list":
        print(format_device_list())
    else:
        print(format_device(load_device(args.spec)))
    return 0
