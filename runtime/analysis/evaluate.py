# SPDX-License-Identifier: Apache-2.0
"""Accuracy of a program, or of every number format at once, over a dataset.

:func:`evaluate` runs every sample of a dataset (:mod:`npusim.runtime.analysis.datasets`) through
one or more programs and compares the predictions, the top-k indices of each program's first
output flattened per sample, with the labels and with each other:

- an ONNX model (file, zoo name or ``light:NAME``) is compiled once per format of
  ``numerics`` (``"all"``, ``"fp32,msfp16"``, a list, or by default the device's own),
  and always once in fp32 as well: the reference each format's top-1 agreement and
  largest output difference are measured against;
- a ``.npub`` program runs in its own format; ``reference=`` (an ONNX model) gives it an
  fp32 reference, compiled for the program's device.

The samples go in chunks of ``chunk`` to workers (:mod:`npusim.runtime.analysis.parallel`):
serially, on ``workers`` local processes (the default: one per core), or on a Ray cluster at
``address`` (``"local"``: a fresh local Ray instance). Each worker
(:mod:`npusim.runtime.analysis.evalworker`) loads the programs once from their bytes. The simulator
is deterministic, so every mode gives the same predictions.

Example:
    >>> result = evaluate("digits.onnx", "digits-test.npz", numerics="all")  # doctest: +SKIP
    >>> print(format_eval(result))                                         # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from npusim.runtime.analysis.datasets import DatasetError, image_preprocessing, load_dataset
from npusim.runtime.analysis.evalworker import TOP_K, load_worker, run_chunk, sample_shape
from npusim.runtime.analysis.parallel import Mode, ParallelError, map_chunks

if TYPE_CHECKING:
    import onnx

    from npusim.simulator.config import DeviceConfig
    from npusim.simulator.program import Program

MAX_SAMPLES = 1_000_000
"""Samples one evaluation takes (``limit`` is at most this)."""

class EvalError(ValueError):
    """An evaluation that cannot run: a bad model, dataset, option or Ray set-up."""


@dataclass(frozen=True)
class FormatResult:
    """The figures of one program (one row of :func:`format_eval`)."""

    format: str
    samples: int
    top1: float | None
    """Fraction of samples whose top-1 is the label (None without labels)."""
    top5: float | None
    """Fraction whose label is among the top 5 (None without labels or under 5 outputs)."""
    agree_fp32: float | None
    """Fraction whose top-1 is the fp32 reference's (None without a reference)."""
    max_abs_diff: float | None
    """Largest absolute difference of an output value from the reference's."""
    images_per_s: float | None
    """Samples per second of simulation of this program on one worker, leaving out each
    worker's first chunk (it loads the kernels) unless there is no other."""


@dataclass(frozen=True)
class EvalResult:
    """One model (one or more programs) over one dataset."""

    model: str
    data: str
    samples: int
    outputs: int
    """Values of the first output per sample (the classes)."""
    rows: tuple[FormatResult, ...]
    predictions: dict[str, np.ndarray] = field(repr=False)
    """Format -> top-k output indices ``int32 [samples, min(5, outputs)]``, best first."""
    labels: np.ndarray | None = field(repr=False)
    wall_s: float
    mode: str
    """``serial``, ``processes`` or ``ray``."""
    workers: int | None
    """Processes or local Ray workers; None on a Ray cluster (its CPUs decide)."""
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        """The figures as JSON-ready values (without the per-sample predictions)."""
        return {"model": self.model, "data": self.data, "samples": self.samples,
                "outputs": self.outputs, "labels": self.labels is not None,
                "mode": self.mode, "workers": self.workers, "wall_s": self.wall_s,
                "images_per_s": self.samples / self.wall_s if self.wall_s else None,
                "formats": [vars(r) for r in self.rows], "notes": list(self.notes)}


def _formats(numerics, default: str) -> list[str]:
    from npusim.simulator.numerics import FORMAT_NAMES

    if numerics is None:
        return [default]
    names = numerics.split(",") if isinstance(numerics, str) else list(numerics)
    names = [n.strip() for n in names]
    if names == ["all"]:
        return list(FORMAT_NAMES)
    bad = [n for n in names if n not in FORMAT_NAMES]
    if bad or not names:
        raise EvalError(f"unknown format {bad[0] if bad else ''!r}; choose 'all' or a comma "
                        f"list of {', '.join(FORMAT_NAMES)}")
    return list(dict.fromkeys(names))


def _input_shapes(proto) -> dict[str, tuple[int, ...]] | None:
    """Batch 1 for inputs whose only symbolic dimension is the leading one (exporters'
    ``N``); other symbolic dimensions are left for the compiler to report."""
    inits = {t.name for t in proto.graph.initializer}
    shapes = {}
    for vi in proto.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and dims and not dims[0].HasField("dim_value") \
                and all(d.HasField("dim_value") for d in dims[1:]):
            shapes[vi.name] = (1, *(d.dim_value for d in dims[1:]))
    return shapes or None


def _resolve(model) -> tuple[str, object]:
    from npusim.runtime.analysis.bench import resolve_model

    try:
        return resolve_model(model)
    except FileNotFoundError:
        raise EvalError(f"model not found: {model} (a .npub program, an ONNX file, a zoo "
                        "name, light:NAME, npu:NAME or deepbench:NAME)") from None
    except ValueError as exc:
        raise EvalError(f"model {model}: {exc}") from None


def _programs(model, numerics, device, reference, check) -> tuple[str, list, str | None]:
    """``(name, [(row name, Program)], reference row name or None)``; ``check(name,
    program)`` sees the first program before any other is compiled."""
    from npusim.compiler import compile_model
    from npusim.simulator.config import load_device
    from npusim.simulator.program import Program

    if isinstance(model, Program) or str(model).endswith(".npub"):
        prog = model if isinstance(model, Program) else Program.load(model)
        name = Path(str(model)).stem if not isinstance(model, Program) else \
            prog.metadata.get("model", "program")
        if device is not None:
            raise EvalError("--device applies to ONNX models; a program runs on its own target")
        if numerics is not None and _formats(numerics, prog.numerics) != [prog.numerics]:
            raise EvalError(f"program {name} is compiled for {prog.numerics}; compile the "
                            "ONNX model to evaluate other formats")
        check(name, prog)
        if reference is None:
            return name, [(prog.numerics_label, prog)], None
        _, proto = _resolve(reference)
        ref = compile_model(proto, prog.target.replace(numerics="fp32"),
                            input_shapes=_input_shapes(proto))
        if [t.shape for t in ref.inputs[:1] + ref.outputs[:1]] != \
                [t.shape for t in prog.inputs[:1] + prog.outputs[:1]]:
            raise EvalError(f"reference {reference} takes or gives other shapes than "
                            f"program {name}")
        return name, [("fp32 (reference)", ref), (prog.numerics_label, prog)], "fp32 (reference)"
    if reference is not None:
        raise EvalError("--reference is for .npub programs; an ONNX model is its own")
    name, proto = _resolve(model)
    cfg = load_device(device if device is not None else "brainwave-s10")
    formats = _formats(numerics, cfg.numerics)
    shapes = _input_shapes(proto)
    progs = []
    for fmt in ["fp32", *(f for f in formats if f != "fp32")]:
        progs.append((fmt, compile_model(proto, cfg.replace(numerics=fmt), input_shapes=shapes)))
        if len(progs) == 1:
            check(name, progs[0][1])
    return name, progs, "fp32"


def _engine(count: int, chunk: int, workers, address, serial) -> tuple[Mode, int]:
    if serial and address:
        raise EvalError("a Ray address and a serial run exclude each other")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= 1024):
        raise EvalError(f"workers must be an integer in [1, 1024], got {workers!r}")
    chunks = math.ceil(count / chunk)
    if address:
        if workers is not None and address != "local":
            raise EvalError("workers sets local processes; on a Ray cluster its CPUs do")
        return Mode.RAY, min(workers or os.cpu_count() or 1, chunks)
    if serial:
        return Mode.SERIAL, 1
    n = min(workers or os.cpu_count() or 1, chunks)
    return (Mode.PROCESSES, n) if n > 1 else (Mode.SERIAL, 1)


def _check_limit(limit, chunk) -> None:
    for what, v, top in (("limit", limit, MAX_SAMPLES), ("chunk", chunk, 4096)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= top):
            raise EvalError(f"{what} must be an integer in [1, {top}], got {v!r}")


def evaluate(model: str | Path | onnx.ModelProto | Program, data: str | Path,
             numerics: str | Sequence[str] | None = None,
             labels: str | Path | np.ndarray | None = None, workers: int | None = None,
             address: str | None = None, serial: bool = False, progress: bool = True,
             device: str | Path | DeviceConfig | None = None, package: str | Path | None = None,
             reference: str | Path | onnx.ModelProto | None = None, limit: int | None = None,
             chunk: int = 32) -> EvalResult:
    """Evaluate ``model`` on ``data`` (see the module docstring); user mistakes raise
    :class:`EvalError` (or ProgramError, CompileError, ConfigError, as compiling does).

    ``labels``: a ``.npy`` of class indices (or an array) for an ``.npy`` or image folder;
    ``package``: a pipeline package whose preprocessing decodes an image folder;
    ``limit``: evaluate only the first ``limit`` samples.
    """
    _check_limit(limit, chunk)
    try:
        ds = load_dataset(data, labels)  # cheap: headers only, before any compile
        count = min(ds.count, limit or ds.count)
        if count > MAX_SAMPLES:
            raise EvalError(f"dataset {ds.source} has {ds.count} samples, more than "
                            f"{MAX_SAMPLES}: evaluate part of it with limit")
        mode, n = _engine(count, chunk, workers, address, serial)
        if package is not None and not ds.is_images:
            raise EvalError("--package preprocesses images; the dataset holds arrays")
        plan = []  # what the first program compiled says: checked before the others compile
        name, programs, ref = _programs(model, numerics, device, reference, lambda name, prog:
                                        plan.append(_prepare(ds, name, prog, package)))
        ds, inp, outputs, notes = plan[0]
        # a worker among several takes its share of the cores (a Ray task has one CPU)
        compute = (None if mode is Mode.SERIAL else
                   1 if mode is Mode.RAY else max(1, (os.cpu_count() or 1) // n))
        shared = (tuple((label, p.to_bytes()) for label, p in programs), ref, compute)
        del programs
        items = (_fit_chunk(xs, inp, ds.source) for xs in ds.chunks(chunk, count))
        t0 = time.perf_counter()
        results = map_chunks(run_chunk, items, count, shared=shared, setup=load_worker,
                             mode=mode, workers=n, address=address, desc=f"eval {name}",
                             unit="img", weight=len, progress=progress)
        wall = time.perf_counter() - t0
    except (DatasetError, ParallelError) as exc:
        raise EvalError(str(exc)) from None
    y = None if ds.labels is None else ds.labels[:count]
    on_cluster = mode is Mode.RAY and address != "local"
    return _combine(name, ds, count, outputs, [label for label, _ in shared[0]], ref, results,
                    y, wall, mode, None if on_cluster else n, notes)


def _prepare(ds, name: str, prog, package) -> tuple:
    """``(dataset, program input, outputs per sample, notes)``, or an EvalError if the
    dataset cannot feed ``prog``."""
    if len(prog.inputs) != 1:
        raise EvalError(f"model {name} takes {len(prog.inputs)} inputs; eval feeds one")
    inp, outputs = prog.inputs[0], math.prod(prog.outputs[0].shape)
    notes = _check_labels(ds, outputs)
    if ds.is_images:
        ds = ds.with_preprocessing(image_preprocessing(inp.shape, package))
    else:
        _fit(ds.sample_shape, inp.shape, ds.source)
    return ds, inp, outputs, notes


def _fit(sample: tuple, shape: tuple[int, ...], source: str) -> None:
    if tuple(sample) not in (tuple(shape), sample_shape(shape)):
        lead = " (a sample is that, with or without its leading 1)" \
            if tuple(shape[:1]) == (1,) else ""
        raise EvalError(f"dataset {source}: a sample has shape {list(sample)}; the program "
                        f"takes {list(shape)}{lead}")


def _fit_chunk(xs: np.ndarray, inp, source: str) -> np.ndarray:
    """``xs`` as ``[n, *sample_shape(input shape)]`` in the input's dtype."""
    _fit(xs.shape[1:], inp.shape, source)
    return np.ascontiguousarray(xs.reshape(len(xs), *sample_shape(inp.shape)),
                                dtype=inp.dtype)


def _check_labels(ds, outputs: int) -> tuple[str, ...]:
    notes = []
    if ds.labels is None:
        notes.append("no labels: top-1 and top-5 are not measured")
    elif len(ds.labels) and ds.labels.max() >= outputs:
        raise EvalError(f"dataset {ds.source}: label {int(ds.labels.max())} is out of range "
                        f"for a model with {outputs} outputs")
    if ds.classes is not None and len(ds.classes) != outputs:
        notes.append(f"{len(ds.classes)} class folders for {outputs} outputs: labels are the "
                     "folders' positions in name order")
    return tuple(notes)


def _combine(name, ds, count, outputs, formats, ref, results, y, wall, mode, n,
             notes) -> EvalResult:
    preds, rows = {}, []
    for fmt in formats:
        top = np.concatenate([r[fmt][0] for r in results])
        # simulation speed after each worker's first chunk, which loads the kernels
        timed = [r[fmt] for r in results if not r[fmt][3]] or [r[fmt] for r in results]
        secs, timed_count = sum(t[2] for t in timed), sum(len(t[0]) for t in timed)
        diff = None if ref is None else float(np.max(np.concatenate(
            [r[fmt][1] for r in results])))
        agree = None
        if ref is not None:
            agree = 1.0 if fmt == ref else float(np.mean(top[:, 0] == preds[ref][:, 0]))
        top1 = top5 = None
        if y is not None:
            top1 = float(np.mean(top[:, 0] == y))
            if outputs >= TOP_K:
                top5 = float(np.mean((top[:, :TOP_K] == y[:, None]).any(axis=1)))
        preds[fmt] = top
        rows.append(FormatResult(fmt, count, top1, top5, agree, diff,
                                 timed_count / secs if secs else None))
    return EvalResult(name, ds.source, count, outputs, tuple(rows), preds, y, wall,
                      mode.value, n, notes)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.2%}"


def format_eval(result: EvalResult) -> str:
    """The table: one row per format, then the wall time of the whole run."""
    table = [["format", "samples", "top-1", "top-5", "agree fp32", "max |diff|", "img/s"]]
    for r in result.rows:
        table.append([r.format, str(r.samples), _pct(r.top1), _pct(r.top5),
                      _pct(r.agree_fp32), "-" if r.max_abs_diff is None
                      else f"{r.max_abs_diff:.3g}",
                      "-" if r.images_per_s is None else f"{r.images_per_s:.1f}"])
    widths = [max(len(line[j]) for line in table) for j in range(len(table[0]))]
    lines = ["  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                       for j, (c, w) in enumerate(zip(line, widths))) for line in table]
    where = {"serial": "serially", "processes": f"on {result.workers} processes",
             "ray": f"on {result.workers} Ray workers" if result.workers else "on Ray"}
    where = where[result.mode]
    programs = f"{len(result.rows)} program{'s' if len(result.rows) > 1 else ''}"
    lines.append(f"{result.model} on {result.data}: {result.samples} samples x {programs} "
                 f"{where} in {result.wall_s:.1f} s "
                 f"(img/s: simulation of one program on one worker)")
    return "\n".join(lines)


def calibration_feeds(data: str | Path, model, input_shapes: dict | None = None,
                      limit: int = 64, package: str | Path | None = None) -> list[dict]:
    """The first ``limit`` samples of a dataset (anything :func:`load_dataset` reads) as
    one feed dict each, shaped as ``model``'s single input: the calibration inputs of
    ``npusim compile --numerics auto``."""
    from npusim.compiler.frontend import to_graph
    from npusim.compiler.ir import node

    if not (isinstance(limit, int) and limit > 0):
        raise EvalError(f"calibration samples must be a positive integer, not {limit!r}")
    g = to_graph(model, input_shapes)
    inputs = g.graph["inputs"]
    if len(inputs) != 1:
        raise EvalError(f"the model takes {len(inputs)} inputs; calibration data feeds one")
    name = inputs[0]
    shape, dtype = tuple(node(g, name).shape), np.dtype(node(g, name).dtype)
    try:
        ds = load_dataset(data)
        if ds.is_images:
            ds = ds.with_preprocessing(image_preprocessing(shape, package))
        else:
            _fit(ds.sample_shape, shape, ds.source)
        count = min(ds.count, limit)
        feeds = []
        for xs in ds.chunks(16, count):
            _fit(xs.shape[1:], shape, ds.source)
            feeds += [{name: np.ascontiguousarray(x.reshape(shape), dtype=dtype)} for x in xs]
    except DatasetError as exc:
        raise EvalError(str(exc)) from None
    if not feeds:
        raise EvalError(f"dataset {data} has no samples")
    return feeds
