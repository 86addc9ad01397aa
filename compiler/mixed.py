# SPDX-License-Identifier: Apache-2.0
"""Per-layer formats chosen from calibration data: ``npusim compile --numerics auto``.

A block format's error is not spread evenly over a network: a few layers (often the
first convolution, a 1x1 projection, the classifier) lose most of the accuracy, and the
others can go narrow for free. :func:`choose_formats` finds, layer by layer, the
narrowest format that keeps the model's outputs within a tolerance of fp32's on the
calibration inputs:

1. *Sensitivity.* The model runs in fp32 on the calibration inputs, and each
   matrix-unit layer runs again in each candidate format ``f`` on the fp32 values of its
   inputs: its relative L2 error against the fp32 output, over the calibration samples,
   is the error the layer makes on its own, ``added[f][layer]`` (the per-layer
   comparison of ``npusim compare`` measures a whole narrow run, where the errors of the
   layers before mix in; a layer's own error is what matters once those run wider).
2. *Assignment by threshold.* For a threshold ``t``, every layer takes the narrowest
   candidate (by bits per element) whose own error is at most ``t``, else the widest.
   The assignment only gets wider as ``t`` falls, and so the output error only falls
   (near enough): a bisection over the measured errors finds the largest ``t``
   whose assignment keeps the outputs within the tolerance, measured on the whole
   calibration set on the simulated device (bit for bit the golden model).
3. *Narrowing.* Then, layer by layer, the most MACs first, each layer moves one candidate
   narrower while the outputs stay within the tolerance.

The tolerance is on ``metric``: ``"agreement"`` (default) is the fraction of the first
output's top-1 choices (the argmax over its last axis, at every position: one per image
for a classifier, one per time step for a sequence) that differ from fp32's, held to half
the tolerance on the calibration set (a share of rare changes measured on a few hundred
samples is noisy), so that on new data at most about one prediction in a hundred changes
at 1%, and accuracy can fall by at most that;
``"error"`` is the outputs' relative L2 error against fp32, for models whose outputs are
not scores; ``"ctc"`` is the character error rate of the first output's greedy CTC
decoding (top-1 per step, repeats collapsed, blank 0 dropped) against fp32's, for text
recognizers, where a flip between a blank and a repeated character changes no text.
It costs ``F`` per-layer passes, about ``log2`` of the number of distinct layer errors
evaluations of the calibration set, and one per step of the narrowing.

Example:
    >>> choice = choose_formats("digits.onnx", "brainwave-s10", feeds, 0.01)  # doctest: +SKIP
    >>> choice.formats                                  # doctest: +SKIP
    {'conv1': 'msfp12', 'conv2': 'msfp8', 'dense': 'msfp8', 'logits': 'msfp16'}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np
import onnx

from npusim.compiler.errors import CompileError
from npusim.compiler.frontend import to_graph
from npusim.compiler.interpret import Numerics, evaluate, evaluate_node
from npusim.compiler.ir import Op, inputs_of, node, topo_order
from npusim.compiler.options import CompileOptions
from npusim.compiler.passes import quantize_weights
from npusim.compiler.select import op_label
from npusim.simulator.config import DeviceConfig
from npusim.simulator.numerics import FP32, Rounding, get_format
from npusim.simulator.progress import task

DEFAULT_FORMATS = ("msfp8", "msfp9", "msfp12", "mxint8", "msfp16", "fp32")
"""The candidates of ``--numerics auto`` unless told otherwise: the MSFP family and MX INT8,
and fp32 for the layers that no block format serves within the tolerance."""

METRICS = ("agreement", "error", "ctc")
"""What the tolerance bounds (see the module docstring)."""
_MEASURES = {"agreement": "share of top-1 choices that differ", "error": "relative error",
             "ctc": "character error rate of the greedy CTC decoding"}


def _ctc(scores: np.ndarray) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of ``[..., T, C]`` scores (blank 0): per sequence, the top-1
    labels with repeats collapsed and blanks dropped."""
    top = scores.reshape(-1, *scores.shape[-2:]).argmax(-1) if scores.ndim >= 2 else \
        scores.reshape(1, -1).argmax(-1)[:, None]
    out = []
    for seq in top:
        keep = np.concatenate([[True], seq[1:] != seq[:-1]]) & (seq != 0)
        out.append(tuple(int(s) for s in seq[keep]))
    return out


def _edits(a: Sequence[int], b: Sequence[int]) -> int:
    """Levenshtein distance."""
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


@dataclass
class Choice:
    """What :func:`choose_formats` found."""

    formats: dict[str, str]
    """Layer (its ONNX node name) -> format."""
    default: str
    """The program's own format: the widest block-format candidate (what any other matrix
    work, such as attention's products of two activations, runs in)."""
    layers: list[dict] = field(default_factory=list)
    """Per layer: ``layer``, ``op``, ``macs``, ``format`` and ``added`` (format -> the
    layer's own relative error in it)."""
    metric: str = "agreement"
    tolerance: float = 0.0
    disagreement: float = 0.0
    """Fraction of the first output's top-1 choices that differ from fp32's."""
    rel_error: float = 0.0
    """Relative L2 error of the outputs against fp32's, over the calibration set."""
    ctc_error: float = 0.0
    """Edits between the greedy CTC decodings of the first output and fp32's, per character
    of fp32's."""
    samples: int = 0
    evaluations: int = 0

    def mac_share(self) -> dict[str, float]:
        """Fraction of the matrix-unit layers' MACs in each format."""
        total = sum(r["macs"] for r in self.layers) or 1
        share: dict[str, float] = {}
        for r in self.layers:
            share[r["format"]] = share.get(r["format"], 0) + r["macs"] / total
        return share

    def to_dict(self) -> dict:
        return {"formats": self.formats, "default": self.default, "metric": self.metric,
                "tolerance": self.tolerance, "disagreement": self.disagreement,
                "rel_error": self.rel_error, "ctc_error": self.ctc_error, "samples": self.samples,
                "evaluations": self.evaluations, "mac_share": self.mac_share(),
                "layers": self.layers}


def _layers(g: nx.DiGraph) -> list[tuple[str, str, int]]:
    """``(IR node, layer name, MACs)`` of every matrix-unit layer with constant weights."""
    out = []
    for v in topo_order(g):
        n = node(g, v)
        if n.op not in (Op.NPU_CONV, Op.NPU_DENSE) or not n.origin:
            continue
        w = node(g, inputs_of(g, v)[1])
        if not isinstance(w.value, np.ndarray):
            continue
        out.append((v, n.origin[0], math.prod(n.shape) * int(w.shape[-1])))
    return out


def _assign(names: Sequence[str], added: dict[str, dict[str, float]],
            formats: Sequence[str], threshold: float) -> dict[str, str]:
    return {name: next((f for f in formats if added[f][name] <= threshold), formats[-1])
            for name in names}


class _Runner:
    """The model before weight quantization, the calibration inputs and fp32's results."""

    def __init__(self, g: nx.DiGraph, opts: CompileOptions, feeds: list[dict]) -> None:
        self.g, self.opts, self.feeds = g, opts, feeds
        self.ctx = Numerics(opts.format, opts.rounding, opts.seed)
        self.runs = 0
        with task("fp32 reference", total=len(feeds), unit="sample") as progress:
            self.ref = []
            for f in feeds:
                self.ref.append(evaluate(g, f, Numerics(FP32), keep_all=True))
                progress.update()

    def options(self, formats: dict[str, str]) -> CompileOptions:
        return dataclasses.replace(self.opts, layer_formats=tuple(sorted(formats.items())))

    def graph(self, formats: dict[str, str]) -> nx.DiGraph:
        return quantize_weights(self.g, self.options(formats))

    def layer_errors(self, formats: dict[str, str], layers) -> dict[str, float]:
        """Each layer's own relative error with ``formats``: the layer run in its format on
        the fp32 model's values of its inputs, against the fp32 model's output. (Errors
        measured in a run of the whole model in a narrow format mix in those of the layers
        before, and say little of the layer once those run wider.)"""
        g = self.graph(formats)
        sums = {v: np.zeros(2) for v, _, _ in layers}  # |error|^2, |output|^2
        self.runs += 1
        with task(f"sensitivity ({next(iter(formats.values()))})", total=len(self.feeds),
                  unit="sample") as progress:
            for ref in self.ref:
                for v, _, _ in layers:
                    args = {i: (node(g, i).value if node(g, i).op == Op.CONST else ref[i])
                            for i in inputs_of(g, v)}
                    a = np.asarray(ref[v], np.float64)
                    d = np.asarray(evaluate_node(g, v, args, self.ctx), np.float64) - a
                    sums[v] += (np.vdot(d, d).real, np.vdot(a, a).real)
                progress.update()
        out = {}
        for v, name, _ in layers:
            err, norm = sums[v]
            rel = math.sqrt(err / norm) if norm else (0.0 if err == 0 else math.inf)
            out[name] = max(out.get(name, 0.0), rel if math.isfinite(rel) else math.inf)
        return out

    def outputs(self, formats: dict[str, str]) -> list[dict[str, np.ndarray]]:
        """The model's outputs per calibration sample with ``formats``: the program
        compiled and run on the simulated device, the samples as one batch (bit for bit
        what the golden model gives, and much faster than it)."""
        from npusim.compiler.lower import lower
        from npusim.simulator.device import Device

        program = lower(self.graph(formats), self.options(formats), "auto")
        device = Device(program.target)
        device.load(program)
        names = [t.name for t in program.inputs]
        batch = {n: np.stack([np.asarray(f[n]) for f in self.feeds]) for n in names}
        got, _ = device.run_batch(batch)
        return [{o: got[o][k] for o in got} for k in range(len(self.feeds))]

    def outputs_error(self, formats: dict[str, str]) -> dict[str, float]:
        """Each metric of :data:`METRICS` for the outputs with ``formats``."""
        outputs = self.g.graph["outputs"]
        self.runs += 1
        changed = total = edits = chars = 0
        d2 = r2 = 0.0
        with task("outputs", total=len(self.feeds), unit="sample") as progress:
            for got, ref in zip(self.outputs(formats), self.ref):
                for k, o in enumerate(outputs):
                    a = np.asarray(ref[o], np.float64)
                    b = np.asarray(got[o], np.float64).reshape(a.shape)
                    d2 += float(np.sum((b - a) ** 2))
                    r2 += float(np.sum(a ** 2))
                    if k == 0 and a.size:
                        top_a = a.reshape(-1, a.shape[-1] if a.ndim else 1).argmax(-1)
                        top_b = b.reshape(-1, b.shape[-1] if b.ndim else 1).argmax(-1)
                        changed += int(np.sum(top_a != top_b))
                        total += top_a.size
                        for sa, sb in zip(_ctc(a), _ctc(b)):
                            edits += _edits(sa, sb)
                            chars += len(sa)
                progress.update()
        rel = math.sqrt(d2 / r2) if r2 else (0.0 if d2 == 0 else math.inf)
        return {"agreement": changed / total if total else 0.0,
                "error": rel if math.isfinite(rel) else math.inf,
                "ctc": edits / chars if chars else float(edits > 0)}


def choose_formats(model: str | Path | onnx.ModelProto | bytes,
                   device: str | Path | DeviceConfig | None, feeds: Sequence[dict],
                   tolerance: float, formats: Sequence[str] | None = None,
                   metric: str = "agreement",
                   rounding: Rounding | str = Rounding.NEAREST_EVEN, seed: int = 0,
                   input_shapes: dict[str, tuple[int, ...]] | None = None) -> Choice:
    """The per-layer formats of ``model`` (see the module docstring): the narrowest that
    keep ``metric`` within ``tolerance`` (a fraction: 0.01 is 1%) on ``feeds`` (one dict
    of inputs per calibration sample). Raises :class:`CompileError` when even every
    layer in the widest candidate misses the tolerance."""
    from npusim.compiler.driver import check_sizes
    from npusim.compiler.pipeline import run_passes

    if metric not in METRICS:
        raise CompileError(f"unknown metric {metric!r}; choose {', '.join(METRICS)}")
    if not (math.isfinite(tolerance) and 0 <= tolerance < 1):
        raise CompileError(f"tolerance {tolerance!r} is not a fraction in [0, 1)")
    if not feeds:
        raise CompileError("no calibration inputs")
    candidates = list(formats or DEFAULT_FORMATS)
    if not candidates or len(set(candidates)) != len(candidates):
        raise CompileError(f"candidate formats {candidates}: give each once")
    cfg = CompileOptions.make(device).device
    try:
        fmts = {f: get_format(f, cfg.native_dim) for f in candidates}  # "" is no default
    except ValueError as exc:
        raise CompileError(str(exc)) from None
    candidates.sort(key=lambda f: (fmts[f].bits_per_element, fmts[f].mantissa_bits))
    widest = candidates[-1]
    default = next((f for f in reversed(candidates) if f != "fp32"), widest)
    opts = CompileOptions.make(cfg, default, rounding, seed)
    source = to_graph(model, input_shapes, per_step=opts.device.mvu is not None)
    check_sizes(source, opts)
    g = run_passes(source, opts, stop_after="keep_host_work_together")
    layers = _layers(g)
    if not layers:
        raise CompileError("the model has no matrix-unit layer with constant weights to "
                           "give a format")
    macs_of: dict[str, int] = {}  # a recurrent layer's steps add up under its name
    for _, name, macs in layers:
        macs_of[name] = macs_of.get(name, 0) + macs
    names = list(macs_of)
    run = _Runner(g, opts, list(feeds))
    added = {f: run.layer_errors(dict.fromkeys(names, f), layers) for f in candidates}

    def measure(threshold: float) -> tuple[dict[str, str], dict[str, float]]:
        chosen = _assign(names, added, candidates, threshold)
        errors = run.outputs_error(chosen)
        return chosen, errors

    # a share of rare changes measured on a calibration set of tens or hundreds of samples
    # is noisy: the changed top-1 choices must stay within half the tolerance there, so
    # that the share on new data stays within it (the narrowing pass below otherwise
    # stops right at the edge the calibration samples happen to allow)
    budget = tolerance / 2 if metric == "agreement" else tolerance

    def ok(errors: dict[str, float]) -> bool:
        return errors[metric] <= budget

    # thresholds from widest-everywhere (-1) to narrowest-everywhere (inf)
    steps = [-1.0, *sorted({a for per in added.values() for a in per.values()
                            if math.isfinite(a)}), math.inf]
    best = measure(steps[0])
    if not ok(best[1]):
        raise CompileError(f"with every layer in {widest}, the {_MEASURES[metric]} against "
                           f"fp32 is {best[1][metric]:.2%}, above "
                           f"{'half ' if budget < tolerance else ''}the tolerance "
                           f"{tolerance:.2%}: widen the "
                           "candidates (--formats ..., fp32) or loosen the tolerance")
    lo, hi = 0, len(steps) - 1  # steps[lo] meets the tolerance
    top = measure(steps[hi])
    if ok(top[1]):
        best, lo = top, hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        got = measure(steps[mid])
        if ok(got[1]):
            best, lo = got, mid
        else:
            hi = mid
    # then layer by layer, the most MACs first: one step narrower while the outputs hold
    chosen, errors = best
    rank = {f: k for k, f in enumerate(candidates)}
    for name in sorted(names, key=lambda n: -macs_of[n]):
        while rank[chosen[name]] > 0:
            trial = {**chosen, name: candidates[rank[chosen[name]] - 1]}
            got = run.outputs_error(trial)
            if not ok(got):
                break
            chosen, errors = trial, got
    first = {}
    for v, name, _ in layers:
        first.setdefault(name, v)
    rows = [{"layer": name, "op": op_label(node(g, first[name]), False),
             "macs": macs_of[name], "format": chosen[name],
             "added": {f: added[f][name] for f in candidates}} for name in names]
    return Choice(chosen, default, rows, metric, tolerance, errors["agreement"], errors["error"],
                  errors["ctc"], len(feeds), run.runs)


def format_choice(choice: Choice) -> str:
    """The assignment as a table (layer, op, MACs, format, own error per candidate) and
    a summary line."""
    fmts = list(next(iter(choice.layers))["added"]) if choice.layers else []
    w = min(max([len(r["layer"]) for r in choice.layers] + [5]), 40)
    wop = max([len(r["op"]) for r in choice.layers] + [2])
    head = f"{'layer':<{w}}  {'op':<{wop}}  {'MMACs':>8}  {'format':<8}  " + "  ".join(
        f"{f:>8}" for f in fmts)
    lines = [head + "   (each layer's own relative error, per format)"]
    for r in choice.layers:
        lines.append(f"{r['layer'][:w]:<{w}}  {r['op']:<{wop}}  {r['macs'] / 1e6:>8.2f}  "
                     f"{r['format']:<8}  " + "  ".join(f"{r['added'][f]:>8.2%}" for f in fmts))
    share = ", ".join(f"{f} {s:.0%}" for f, s in sorted(choice.mac_share().items(),
                                                        key=lambda kv: -kv[1]))
    ctc = f", CTC character error {choice.ctc_error:.2%}" if choice.metric == "ctc" else ""
    half = ", half of it on the calibration set" if choice.metric == "agreement" else ""
    lines.append(f"MACs by format: {share}; against fp32 on {choice.samples} calibration "
                 f"samples: {choice.disagreement:.2%} of top-1 choices differ, relative error "
                 f"{choice.rel_error:.2%}{ctc} (tolerance {choice.tolerance:.2%} on "
                 f"{choice.metric}{half}; {choice.evaluations} evaluations)")
    return "\n".join(lines)
