# SPDX-License-Identifier: Apache-2.0
"""Design-space sweeps: price one model on every device of a grid, in parallel with Ray.

A grid file is TOML::

    base = "brainwave-s10"   # preset or device file (relative to this file); the default
    model_seed = 0           # seed of a zoo or light model's weights (optional, default 0)

    [grid]                   # DeviceConfig field = list of values to try
    tiles = [2, 4, 6]
    array_cols = [64, 125]
    numerics = ["msfp8", "msfp16"]

The points are the cartesian product of the lists, in file order with the last field
varying fastest. Every point's :class:`DeviceConfig` is built (and so validated) before
any work starts; a bad grid raises :class:`SweepError` naming the field and value.

Each point is compiled and priced by :func:`npusim.runtime.analysis.bench.timing_point` (no
functional run). With Ray installed the points run as Ray tasks, on a local Ray instance or on the
cluster at ``address`` (whose workers must be able to import npusim); otherwise, or
with ``serial=True``, one after the other in this process. :func:`run_sweep` writes
``points.csv`` and ``pareto.png`` to the output folder and returns the rows in grid order.

Example:
    >>> rows = run_sweep("light:squeezenet", "examples/sweep.toml", serial=True)  # doctest: +SKIP
    >>> print(format_sweep(rows))                                                 # doctest: +SKIP
"""

from __future__ import annotations

import csv
import itertools
import math
import os
import re
import sys
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from npusim.runtime.analysis import plots
from npusim.runtime.analysis.parallel import Mode, ParallelError, map_chunks, ray_installed
from npusim.runtime.analysis.points import GRID_FIELDS, pareto_front
from npusim.simulator.config import (
    DEFAULT_DEVICE,
    ConfigError,
    DeviceConfig,
    load_device,
    preset_names,
)

if TYPE_CHECKING:
    import onnx

MAX_POINTS = 10_000
"""A grid with more points than this is refused (a typo in a list is the likelier cause)."""


SUMMARY = ("peak_macs_per_cycle", "matrix_kalms", "latency_ms", "utilization",
           "roofline_ratio", "top1", "output_error")
"""The timing figures :func:`format_sweep` shows beside the grid values."""


class SweepError(ValueError):
    """A sweep that cannot run: a bad grid file, model or Ray set-up."""


@dataclass(frozen=True)
class Grid:
    """A parsed grid file: the base device and the values of each varied field."""

    base: DeviceConfig
    fields: tuple[str, ...]
    """Varied DeviceConfig fields, in file order."""
    values: tuple[tuple, ...]
    """The values of each field, in file order."""
    configs: tuple[DeviceConfig, ...]
    """One device per point, in grid order (already validated)."""
    model_seed: int = 0
    hold_area: bool = False
    """Each point's array has as many columns as fit in the base device's matrix-unit logic
    (:attr:`DeviceConfig.matrix_alms`) in the point's format."""
    accuracy_data: Path | None = None
    """A dataset (anything ``npusim eval`` reads) to measure each format's top-1 on."""

    def points(self) -> list[dict]:
        """The grid values of every point, in grid order (with ``hold_area``, the columns
        each point gets too)."""
        points = [dict(zip(self.fields, combo)) for combo in itertools.product(*self.values)]
        if self.hold_area:
            for point, cfg in zip(points, self.configs):
                point["array_cols"] = cfg.array_cols
        return points


def _fail(origin: str, message: str) -> SweepError:
    return SweepError(f"grid {origin}: {message}")


def parse_grid(data: dict, origin: str = "<grid>", root: Path | None = None) -> Grid:
    """Validate the table of a grid file; ``root`` resolves a relative ``base`` path."""
    unknown = sorted(set(data) - {"base", "model_seed", "hold_area", "accuracy_data", "grid"})
    if unknown:
        raise _fail(origin, f"unknown key(s) {', '.join(unknown)} (expected base, "
                            "model_seed, hold_area, accuracy_data and a [grid] table)")
    hold_area = data.get("hold_area", False)
    if not isinstance(hold_area, bool):
        raise _fail(origin, f"hold_area must be true or false, got {hold_area!r}")
    accuracy_data = data.get("accuracy_data")
    if accuracy_data is not None:
        if not isinstance(accuracy_data, str) or not accuracy_data:
            raise _fail(origin, f"accuracy_data must be a path, got {accuracy_data!r}")
        accuracy_data = Path(accuracy_data)
        if root is not None and not accuracy_data.is_absolute():
            accuracy_data = root / accuracy_data
        if not accuracy_data.exists():
            raise _fail(origin, f"accuracy_data {accuracy_data} not found")
    base_spec = data.get("base", DEFAULT_DEVICE)
    if not isinstance(base_spec, str):
        raise _fail(origin, f"base must be a preset name or device file, got {base_spec!r}")
    spec = base_spec
    if spec not in preset_names() and root is not None and not Path(spec).is_absolute():
        spec = str(root / spec)
    if spec not in preset_names() and not Path(spec).is_file():
        raise _fail(origin, f"base {base_spec!r} is neither a preset ({', '.join(preset_names())})"
                            " nor a device file")
    try:
        base = load_device(spec)
    except ConfigError as exc:
        raise _fail(origin, f"base: {exc}") from None
    seed = data.get("model_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise _fail(origin, f"model_seed must be a non-negative integer, got {seed!r}")
    table = data.get("grid")
    if not isinstance(table, dict) or not table:
        raise _fail(origin, "needs a [grid] table with at least one field = [values]")
    fields, values = tuple(table), []
    for name in fields:
        vals = table[name]
        if name not in GRID_FIELDS:
            raise _fail(origin, f"unknown device field {name!r} (one of {', '.join(GRID_FIELDS)})")
        if not isinstance(vals, list):
            raise _fail(origin, f"field {name!r}: expected a list of values, got {vals!r}")
        if not vals:
            raise _fail(origin, f"field {name!r}: empty list")
        for k, v in enumerate(vals):
            if v in vals[:k]:
                raise _fail(origin, f"field {name!r}: value {v!r} listed twice")
            try:
                base.replace(**{name: v})
            except ConfigError as exc:
                raise _fail(origin, f"field {name!r}: bad value {v!r}: {exc}") from None
        values.append(tuple(vals))
    count = math.prod(len(v) for v in values)
    if count > MAX_POINTS:
        raise _fail(origin, f"{count} points, more than the limit of {MAX_POINTS}")
    if hold_area and "array_cols" in fields:
        raise _fail(origin, "hold_area sets each point's array_cols; do not vary it too")
    configs = []
    for combo in itertools.product(*values):
        try:  # fields may constrain each other; check every combination before any work
            cfg = base.replace(**dict(zip(fields, combo)))
            configs.append(_same_area(cfg, base.matrix_alms) if hold_area else cfg)
        except ConfigError as exc:
            raise _fail(origin, f"point {dict(zip(fields, combo))}: {exc}") from None
    return Grid(base, fields, tuple(values), tuple(configs), seed, hold_area, accuracy_data)


def _same_area(cfg: DeviceConfig, alms: float) -> DeviceConfig:
    """``cfg`` with the most array columns whose matrix unit fits in ``alms`` (the logic
    grows by the same amount per column)."""
    one = cfg.replace(array_cols=1).matrix_alms
    per_col = cfg.replace(array_cols=2).matrix_alms - one
    cols = int((alms - one) // per_col) + 1
    if cols < 1:
        raise ConfigError(f"not one column of {cfg.numerics} fits in {alms:.0f} ALMs")
    return cfg.replace(array_cols=cols)


def load_grid(path: str | Path) -> Grid:
    """Read and validate the grid file at ``path`` (see the module docstring)."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"grid file not found: {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise _fail(str(path), f"cannot parse: {exc}") from None
    return parse_grid(data, str(path), path.parent)


def _price(model: onnx.ModelProto, cfg: DeviceConfig) -> dict | str:
    """One point: the timing figures, or the message of a user error (bad model or device),
    returned rather than raised so that it crosses from a Ray worker intact."""
    from npusim.compiler.errors import CompileError
    from npusim.runtime.analysis.bench import timing_point

    try:
        return timing_point(model, cfg)
    except (CompileError, ConfigError) as exc:
        return f"{type(exc).__name__}: {exc}"


def _accuracy(proto, grid: Grid, formats: list[str]) -> dict[str, dict]:
    """What each format does to the model's answers (it does not depend on the array):
    top-1 and agreement with fp32 on ``accuracy_data`` when the grid names it, else the
    relative L2 error of the outputs against fp32 on seeded inputs."""
    if grid.accuracy_data is not None:
        from npusim.runtime.analysis.evaluate import EvalError, evaluate

        try:
            res = evaluate(proto, grid.accuracy_data, numerics=formats, device=grid.base,
                           serial=True, progress=False)
        except EvalError as exc:
            raise SweepError(f"accuracy_data: {exc}") from None
        return {r.format: {"top1": r.top1, "agree_fp32": r.agree_fp32} for r in res.rows}
    from npusim.compiler.driver import compile_full
    from npusim.compiler.interpret import Numerics, evaluate
    from npusim.runtime.analysis.compare import default_inputs

    feeds = default_inputs(proto, grid.model_seed)
    out, ref = {}, None
    for fmt in ["fp32", *formats]:
        c = compile_full(proto, grid.base, fmt)
        got = np.concatenate([np.ravel(v) for v in evaluate(
            c.graph, feeds, Numerics(c.options.format)).values()]).astype(np.float64)
        ref = got if ref is None else ref
        norm = np.linalg.norm(ref)
        out[fmt] = {"output_error": float(np.linalg.norm(got - ref) / norm) if norm else 0.0}
    return out


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def run_sweep(model: str | Path | onnx.ModelProto, grid_path: str | Path,
              out_dir: str | Path | None = None, address: str | None = None,
              serial: bool = False, progress: bool = True) -> list[dict]:
    """Price ``model`` on every point of the grid file; one row per point, in grid order.

    A row is the point's grid values followed by the :func:`timing_point` figures.
    ``out_dir`` (default ``sweep-<model>``) receives ``points.csv`` and ``pareto.png``.
    """
    from npusim.runtime.analysis.bench import resolve_model

    if address and serial:
        raise SweepError("a Ray address and a serial run exclude each other")
    grid = load_grid(grid_path)
    try:
        name, proto = resolve_model(model, grid.model_seed)
    except FileNotFoundError:
        raise SweepError(f"model not found: {model} (a zoo name, light:NAME, npu:NAME, "
                         "deepbench:NAME or an ONNX file)") from None
    except ValueError as exc:
        raise SweepError(f"model {model}: {exc}") from None
    mode = Mode.SERIAL if serial else Mode.RAY
    if not serial and not ray_installed():
        if address:
            raise SweepError(f"a Ray address ({address}) was given but Ray is not "
                             "installed")
        print(f"npusim sweep: Ray is not installed; running the {len(grid.configs)} "
              "points serially", file=sys.stderr)
        mode = Mode.SERIAL
    try:
        results = map_chunks(_price, grid.configs, len(grid.configs), shared=proto, mode=mode,
                             workers=min(os.cpu_count() or 1, len(grid.configs)),
                             address=address, desc=f"sweep {name}", unit="pt",
                             stop=lambda res: isinstance(res, str), progress=progress)
    except ParallelError as exc:
        raise SweepError(str(exc)) from None
    # a point the compiler refused stops the sweep (the points after it are None)
    for point, res in zip(grid.points(), results):
        if isinstance(res, str):
            raise SweepError(f"point {point}: {res}")
    rows = [{**point, **res} for point, res in zip(grid.points(), results)]
    formats = list(dict.fromkeys(r["numerics"] for r in rows))
    if grid.accuracy_data is not None or len(formats) > 1:
        quality = _accuracy(proto, grid, formats)
        for r in rows:
            r.update(quality[r["numerics"]])
    out = Path(out_dir) if out_dir is not None else Path(f"sweep-{_safe_name(name)}")
    out.mkdir(parents=True, exist_ok=True)
    write_csv(rows, out / "points.csv")
    plots.sweep_tradeoff(rows, out / "pareto.png", label_keys=grid.fields,
                         title=f"{name}: {len(rows)} points around {grid.base.name}")
    return rows


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Write ``rows`` as CSV (columns in first-seen order) atomically; returns the path."""
    from npusim.simulator.fileio import atomic_write

    columns = list(dict.fromkeys(k for r in rows for k in r))

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(rows)

    atomic_write(path, write)
    return Path(path)


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_sweep(rows: Sequence[dict], fields: Sequence[str] | None = None) -> str:
    """The sweep table: ``fields`` (default: the device fields of the rows), then the
    peak MACs per cycle, the matrix unit's logic, latency, utilization, roofline ratio and
    what the format does to the answers (when measured); ``*`` marks the rows on the
    Pareto front of latency against the matrix unit's logic (its area)."""
    if fields is None:
        fields = [k for k in (rows[0] if rows else {}) if k in GRID_FIELDS]
    columns = [f for f in fields if f not in SUMMARY] + [
        c for c in SUMMARY if any(c in r for r in rows) or c in SUMMARY[:5]]
    area = "matrix_kalms" if any("matrix_kalms" in r for r in rows) else "peak_macs_per_cycle"
    front = set(pareto_front(rows, area, "latency_ms"))
    heads = {"peak_macs_per_cycle": "MACs/cycle", "latency_ms": "latency ms",
             "utilization": "util", "roofline_ratio": "x roof", "matrix_kalms": "kALMs",
             "top1": "top-1", "output_error": "out err"}
    table = [["", *(heads.get(c, c) for c in columns)]]
    for k, r in enumerate(rows):
        cells = [f"{r[c]:.1%}" if c in ("utilization", "top1", "output_error")
                 and isinstance(r.get(c), float) else _cell(r.get(c, "")) for c in columns]
        table.append(["*" if k in front else "", *cells])
    widths = [max(len(line[j]) for line in table) for j in range(len(table[0]))]
    lines = [" ".join(cell.rjust(w) if j else cell.ljust(w) for j, (cell, w)
                      in enumerate(zip(line, widths))).rstrip() for line in table]
    lines.append(f"{len(rows)} points; * = Pareto-optimal (lowest latency for the matrix unit's "
                 "logic, in thousand ALMs by the first-order model of simulator/area.py)")
    return "\n".join(lines)
