# SPDX-License-Identifier: Apache-2.0
"""``npusim compile``, ``run`` and ``inspect``: a model to a program, a program on the device."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from npusim.runtime.cli.common import (
    UsageError,
    layers_opt,
    parse_inputs,
    parse_shapes,
    pinning,
    print_layers,
    safe_name,
    write_file,
    write_json,
)


def add_commands(sub: argparse._SubParsersAction, formats: tuple[str, ...]) -> None:
    """Add this group's subcommands to the ``npusim`` parser."""
    c = sub.add_parser("compile", help="compile an ONNX model to a .npub program")
    c.add_argument("model")
    c.add_argument("-o", "--output")
    c.add_argument("--device", help="preset name or TOML/JSON file (default brainwave-s10)")
    c.add_argument("--numerics", choices=(*formats, "auto"),
                   help="override the format; auto: per layer, the narrowest that keeps the "
                   "outputs within --tolerance of fp32 on --calibration data")
    c.add_argument("--layer-format", action="append", default=[], metavar="NAME=FMT",
                   help="give one matrix-unit layer (its ONNX node name, as `npusim compare` "
                   "lists it) a format of its own (repeatable; with auto: kept as given)")
    c.add_argument("--calibration", metavar="DATA", help="with auto: .npz/.npy of inputs or "
                   "a folder of images (the first --calibration-samples)")
    c.add_argument("--calibration-samples", type=int, default=64, metavar="N",
                   help="with auto: samples used (default 64)")
    c.add_argument("--tolerance", default="1%", metavar="PCT",
                   help="with auto: how far from fp32 the outputs may go (default 1%%)")
    c.add_argument("--metric", choices=("agreement", "error", "ctc"), default="agreement",
                   help="with auto: what --tolerance bounds: the share of top-1 choices that "
                   "differ from fp32's (default), the outputs' relative L2 error, or the "
                   "character error rate of a CTC text recognizer's greedy decoding")
    c.add_argument("--formats", metavar="F1,F2,...", help="with auto: the candidates "
                   "(default msfp8,msfp9,msfp12,mxint8,msfp16,fp32; the widest block format "
                   "is the program's own)")
    c.add_argument("--rounding", choices=["nearest_even", "nearest_away", "stochastic"],
                   default="nearest_even", help="how values round to the format (nearest_away: "
                   "ties away from zero, as microsoft/microxcaling does)")
    c.add_argument("--seed", type=int, default=0, help="seed of stochastic rounding")
    c.add_argument("--strict", action="store_true",
                   help="refuse (by name) any op the device cannot run instead of using the host")
    c.add_argument("--input-shape", action="append", default=[], metavar="NAME=1x3x224x224",
                   help="fix the shape of an input with symbolic dimensions (repeatable)")
    c.add_argument("--report", help="write where every node runs (JSON) and print it as a table"
                   ", ending with a summary line")
    c.add_argument("--stop-after", metavar="PASS", help="stop after this pass and dump the IR "
                   "(the passes, in order: compiler/pipeline.py; a wrong name lists them)")
    c.add_argument("--dump", help="with --stop-after: write the IR here instead of stdout")
    c.set_defaults(fn=cmd_compile)

    r = sub.add_parser("run", help="run a program on the simulated device")
    r.add_argument("program")
    r.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy")
    r.add_argument("--output-dir", default=".",
                   help="folder for the outputs, NAME.npy each (default: the current folder)")
    r.add_argument("--stats", help="write cycle statistics (whole model and per layer) as JSON")
    r.add_argument("--trace", help="write the simulated timeline as a Chrome trace (Perfetto)")
    layers_opt(r)
    r.add_argument("--device", help="preset name or TOML/JSON file to run on (default: the "
                   "program's own target; another must have its fingerprint)")
    r.set_defaults(fn=cmd_run)

    i = sub.add_parser("inspect", help="show a program's header, target, sections, code")
    i.add_argument("program")
    i.add_argument("--disasm", action="store_true", help="list every instruction")
    i.set_defaults(fn=cmd_inspect)



def cmd_compile(args: argparse.Namespace) -> int:
    from npusim.compiler.dump import dump_graph
    from npusim.compiler.frontend import to_graph
    from npusim.compiler.options import CompileOptions
    from npusim.compiler.pipeline import run_passes

    shapes = parse_shapes(args.input_shape)
    if args.stop_after:
        from npusim.compiler.pipeline import PASS_NAMES

        if args.stop_after not in PASS_NAMES:
            raise UsageError(f"--stop-after: no pass '{args.stop_after}'; the passes are "
                             f"{', '.join(PASS_NAMES)}")
        opts = CompileOptions.make(args.device, args.numerics, args.rounding, args.seed)
        text = dump_graph(run_passes(to_graph(args.model, shapes), opts, args.stop_after))
        if args.dump:
            write_file(Path(args.dump), lambda tmp: Path(tmp).write_text(text))
        else:
            sys.stdout.write(text)
        return 0
    if not args.output:
        raise UsageError("compile needs -o OUT.npub (or --stop-after PASS to dump the graph)")
    from npusim.compiler import compile_model
    from npusim.compiler.driver import summary_line

    t0 = time.perf_counter()
    layer_formats = parse_layer_formats(args.layer_format)
    numerics, choice = args.numerics, None
    if numerics == "auto":
        choice = _choose(args, shapes)
        numerics = choice.default
        layer_formats = {**choice.formats, **layer_formats}
    elif args.calibration:
        raise UsageError("--calibration is for --numerics auto")
    prog = compile_model(args.model, args.device, numerics, args.rounding, args.seed,
                         args.strict, shapes, layer_formats or None)
    if choice is not None:
        prog.metadata["numerics_auto"] = choice.to_dict()
    elapsed = time.perf_counter() - t0
    placement = prog.metadata["placement"]
    if args.report:
        write_json(Path(args.report), placement)
        print(format_placement(placement))
    prog.save(args.output)
    host = sorted({r["op"] for r in placement if r["where"] == "host"})
    print(summary_line(prog.metadata["summary"]) + (f" (host: {', '.join(host)})" if host else ""))
    print(f"compiled {args.model} for {prog.target.name} ({prog.numerics_label}): "
          f"{len(prog.instructions)} instructions, {len(prog.weights) / 2**20:.2f} MiB weights, "
          f"{elapsed:.2f} s -> {args.output}")
    return 0


def parse_layer_formats(specs: list[str]) -> dict[str, str]:
    """``NAME=FMT`` -> ``{"NAME": "FMT"}`` (the compiler checks both)."""
    out = {}
    for spec in specs:
        name, sep, fmt = spec.rpartition("=")
        if not sep or not name or not fmt:
            raise UsageError(f"--layer-format {spec}: expected NAME=FORMAT, e.g. conv1=msfp16")
        out[name] = fmt
    return out


def _tolerance(text: str) -> float:
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value < 1:  # NaN fails too
        raise UsageError(f"--tolerance {text}: expected a share such as 1% or 0.01")
    return value


def _choose(args: argparse.Namespace, shapes):
    """``--numerics auto``: the per-layer formats from the calibration data, printed."""
    from npusim.compiler.mixed import choose_formats, format_choice
    from npusim.runtime.analysis.evaluate import calibration_feeds

    if not args.calibration:
        raise UsageError("--numerics auto needs --calibration DATA (inputs to measure on)")
    tolerance = _tolerance(args.tolerance)
    candidates = (None if args.formats is None
                  else [f.strip() for f in args.formats.split(",")])
    feeds = calibration_feeds(args.calibration, args.model, shapes, args.calibration_samples)
    choice = choose_formats(args.model, args.device, feeds, tolerance, candidates,
                            args.metric, args.rounding, args.seed, shapes)
    print(format_choice(choice), flush=True)
    return choice


def format_placement(rows: list[dict]) -> str:
    """The compile report as a table: node, op, where it runs, why."""
    w_node = min(max([len(r["node"]) for r in rows] + [4]), 40)
    w_op = max([len(r["op"]) for r in rows] + [2])
    lines = [f"{'node':<{w_node}}  {'op':<{w_op}}  {'where':<8}  why"]
    for r in rows:
        lines.append(f"{r['node'][:w_node]:<{w_node}}  {r['op']:<{w_op}}  {r['where']:<8}  "
                     f"{r['why']}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from npusim.runtime.session import Session

    sess = Session(args.program, args.device)
    feeds = parse_inputs(args.input, [t.name for t in sess.get_inputs()])
    t0 = time.perf_counter()
    outs = sess.run(None, feeds)
    wall = time.perf_counter() - t0
    stats = sess.last_stats
    outdir = Path(args.output_dir)
    for t, arr in zip(sess.get_outputs(), outs):
        target = outdir / f"{safe_name(t.name)}.npy"
        write_file(target, lambda tmp, a=arr: np.save(open(tmp, "wb"), a))
        print(f"{t.name}: {list(arr.shape)} -> {target}")
    if args.stats:
        write_json(Path(args.stats), {**stats.to_dict(), "wall_s": wall,
                                       "device": sess.device.config.name,
                                       "numerics": sess.program.numerics})
    if args.trace:
        _write_trace(Path(args.trace), stats, sess)
    if args.layers:
        print_layers(stats, args.layers)
    images = sess.last_images
    per = f" per image ({images} images, one after another)" if images > 1 else ""
    print(f"simulated latency {stats.latency_us:.1f} us{per} ({stats.cycles} cycles at "
          f"{stats.clock_mhz:g} MHz, utilization {stats.utilization:.1%}, "
          f"{stats.roofline_ratio:.2f}x roofline); functional simulation {wall * 1e3:.1f} ms"
          + (f" ({wall * 1e3 / images:.1f} ms per image)" if images > 1 else ""))
    return 0


def _write_trace(path: Path, stats, sess) -> None:
    from npusim.simulator.trace import chrome_trace

    title = f"{sess.program.metadata.get('model', 'model')} on {sess.device.config.name}"
    trace = chrome_trace(stats, title)
    write_file(path, lambda tmp: Path(tmp).write_text(json.dumps(trace)))
    print(f"timeline: {len(stats.timeline)} slices -> {path} (open in ui.perfetto.dev)")


def cmd_inspect(args: argparse.Namespace) -> int:
    from npusim.simulator.program import Program

    prog = Program.load(args.program)
    t = prog.target
    print(f"program   {args.program}  model={prog.metadata.get('model')}")
    print(f"target    {t.name}  numerics={t.numerics}  fingerprint={t.fingerprint().hex()[:16]}")
    print(f"array     {t.tiles} x ({t.native_dim} x {t.array_cols}) @ {t.clock_mhz:g} MHz")
    formats = prog.layer_formats()
    if len(formats) > 1 or set(formats) - {t.numerics}:
        print("formats   " + ", ".join(f"{f} on {n} matrix layer{'s' if n > 1 else ''}"
                                       for f, n in sorted(formats.items(), key=lambda kv: -kv[1])))
    if "numerics_auto" in prog.metadata:
        auto = prog.metadata["numerics_auto"]
        print(f"          chosen per layer (--numerics auto): within {auto['tolerance']:.2%} "
              f"on {auto['metric']} over {auto['samples']} calibration samples")
    print(f"code      {len(prog.instructions)} instructions")
    print("memory map")
    for region, (base, size) in sorted(prog.memory_map.items(), key=lambda kv: kv[1][0]):
        print(f"  {region:<12} 0x{base:010x}  {size:>12} bytes")
    held = {n for h in prog.host_ops for n in h.on_host}
    for kind, descs in (("input", prog.inputs), ("output", prog.outputs)):
        for d in descs:
            where = f"@0x{d.addr:010x}"
            if d.name in held:
                where = "on the host" + (" (-1: sized by the data)" if -1 in d.shape else "")
            print(f"{kind:<9} {d.name}  {list(d.shape)} {d.dtype} {where}")
    if prog.host_ops:
        print(f"host      {len(prog.host_ops)} host call{'s' if len(prog.host_ops) > 1 else ''}: "
              + "; ".join(h.op for h in prog.host_ops)[:300])
    print(f"weights   {len(prog.weight_tensors)} tensors, {len(prog.weights)} bytes "
          f"({pinning(prog)})")
    if args.disasm:
        for idx, (ins, rec) in enumerate(zip(prog.instructions, prog.layers)):
            fields = " ".join(f"{k}={v}" for k, v in vars(ins).items())
            print(f"{idx:5d}  {ins.OPCODE.name:<10} {fields}  ; {rec['name']}")
    return 0

