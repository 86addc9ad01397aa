# SPDX-License-Identifier: Apache-2.0
"""What the command modules share: errors, files written whole, argument parsing."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


class UsageError(ValueError):
    """A command line that cannot be carried out."""


def write_file(path: Path, write) -> None:
    """``write(tmp)`` fills a temporary file that then replaces ``path`` (never half-written)."""
    from npusim.simulator.fileio import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def write_json(path: Path, obj) -> None:
    write_file(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def device_opts(sp: argparse.ArgumentParser, formats: tuple[str, ...] = (),
                numerics: bool = True) -> None:
    sp.add_argument("--device", help="preset name or TOML/JSON file (default brainwave-s10)")
    if numerics:
        sp.add_argument("--numerics", choices=formats, help="override the format")


def layers_opt(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--layers", type=int, nargs="?", const=-1, default=0, metavar="N",
                    help="print the per-layer table (the N slowest layers if N is given)")


def parse_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
    """``NAME=1x3x224x224`` -> ``{"NAME": (1, 3, 224, 224)}``."""
    shapes = {}
    for spec in specs:
        name, sep, dims = spec.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) <= 0:
            raise UsageError(f"--input-shape {spec}: expected NAME=DIMS, e.g. "
                             "images=1x3x224x224")
        shapes[name] = shape
    return shapes


def parse_inputs(specs: list[str], names: list[str]) -> dict[str, np.ndarray]:
    feeds = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            if len(names) != 1:
                raise UsageError(f"--input {spec}: name the input (NAME=FILE.npy); the program "
                                 f"takes {', '.join(names)}")
            name, path = names[0], spec
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise UsageError(f"input file not found: {path}") from None
        except (ValueError, OSError) as exc:
            raise UsageError(f"input file {path} is not a .npy array: {exc}") from None
    return feeds


def safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def print_layers(stats, top: int) -> None:
    """``--layers``: every layer (-1, the flag alone) or the ``top`` slowest."""
    from npusim.runtime.analysis.bench import format_layers

    print(format_layers(stats, top if top > 0 else None))


def pinning(prog) -> str:
    pinned = prog.metadata.get("pinned_weight_bytes", 0)
    streamed = prog.metadata.get("streamed_weight_bytes", 0)
    if not streamed:
        return "all pinned on chip"
    if not pinned:
        return "all streamed from DRAM"
    return f"{pinned / 2**20:.1f} MiB pinned on chip, {streamed / 2**20:.1f} MiB streamed"

