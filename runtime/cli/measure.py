# SPDX-License-Identifier: Apache-2.0
"""``npusim bench``, ``compare``, ``sweep``, ``eval`` and ``verify``: what users run to measure."""

from __future__ import annotations

import argparse
from pathlib import Path

from npusim.runtime.cli.common import (
    UsageError,
    layers_opt,
    parse_inputs,
    print_layers,
    safe_name,
    write_json,
)


def add_commands(sub: argparse._SubParsersAction, formats: tuple[str, ...]) -> None:
    """Add this group's subcommands to the ``npusim`` parser."""
    cp = sub.add_parser("compare", help="per-layer error of a format against fp32")
    cp.add_argument("model")
    cp.add_argument("--numerics", choices=formats, required=True)
    cp.add_argument("--device", help="preset name or TOML/JSON file (default brainwave-s10)")
    cp.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                    help="inputs (default: seeded standard normal)")
    cp.add_argument("--seed", type=int, default=0, help="seed of the default inputs")
    cp.add_argument("--json", help="also write the rows as JSON")
    cp.set_defaults(fn=cmd_compare)

    b = sub.add_parser("bench", help="simulated latency, utilization and host timings")
    b.add_argument("models", nargs="+", metavar="MODEL",
                   help="zoo name, light:NAME or ONNX file")
    b.add_argument("--device", action="append", help="preset or file; repeat for several")
    b.add_argument("--numerics", action="append", choices=formats,
                   help="format(s) (default: each device's own); repeat for several")
    b.add_argument("--rounds", type=int, default=3, help="timed runs per model (median)")
    b.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    b.add_argument("--no-reference", action="store_true", help="skip onnxruntime")
    layers_opt(b)
    b.add_argument("--json", help="write the rows (with per-layer stats) as JSON")
    b.add_argument("--plot", metavar="DIR", help="write latency-breakdown and roofline PNGs")
    b.set_defaults(fn=cmd_bench)

    sw = sub.add_parser("sweep", help="design-space sweep over a grid of device variations")
    sw.add_argument("model", help="zoo name, light:NAME or ONNX file")
    sw.add_argument("--grid", required=True, help="TOML grid file (see examples/sweep.toml)")
    sw.add_argument("--out", help="output directory (default sweep-MODEL)")
    sw.add_argument("--address", help="Ray cluster address (default: a local Ray instance)")
    sw.add_argument("--serial", action="store_true", help="run the points here, without Ray")
    sw.set_defaults(fn=cmd_sweep)

    from npusim.runtime.cli.evaluate import add_arguments, cmd_eval

    ev = sub.add_parser("eval", help="accuracy of a program, or of every format, over a "
                        "dataset (top-1, top-5, agreement with fp32)")
    add_arguments(ev)
    ev.set_defaults(fn=cmd_eval)

    vf = sub.add_parser("verify", help="run the RTL kernels' cocotb suite against the golden "
                        "numerics and the timing model")
    vf.add_argument("--sim", choices=("icarus", "verilator"), help="HDL simulator (default: "
                    "$SIM, else icarus)")
    vf.add_argument("-k", metavar="PATTERN", help="only the tests matching (pytest -k)")
    vf.add_argument("--json", metavar="FILE", help="write every test's counters as JSON")
    vf.set_defaults(fn=cmd_verify)



def cmd_bench(args: argparse.Namespace) -> int:
    from npusim.runtime.analysis.bench import (
        BENCH_HEAD,
        bench_model,
        format_bench,
        format_bench_row,
    )

    rows, plotted = [], []
    devices = args.device or ["brainwave-s10"]
    stream = not args.layers  # rows as they come; with --layers, the table at the end
    if stream:
        print(BENCH_HEAD, flush=True)
    for spec in args.models:
        for device in devices:
            for fmt in args.numerics or [None]:
                try:
                    row = bench_model(spec, device, fmt, rounds=args.rounds, seed=args.seed,
                                      reference=not args.no_reference)
                except FileNotFoundError:
                    raise UsageError(f"model not found: {spec} (a zoo name, light:NAME, "
                                     "npu:NAME, deepbench:NAME or an ONNX file)") from None
                rows.append(row)
                if stream:
                    print(format_bench_row(row), flush=True)
                else:
                    print(f"\n{row['model']} on {row['device']} ({row['numerics']})")
                    print_layers(row["stats"], args.layers)
                if args.plot:
                    plotted.append(_plots(Path(args.plot), row, device))
    if not stream:
        print(format_bench(rows))
    for line in plotted:
        print(line)
    if args.json:
        write_json(Path(args.json), [{k: v for k, v in r.items() if k != "stats"}
                                      | {"layers": r["stats"].to_dict()["layers"]}
                                      for r in rows])
    return 0


def _plots(outdir: Path, row: dict, device) -> str:
    from npusim.runtime.analysis import plots
    from npusim.simulator.config import load_device

    cfg = load_device(device).replace(numerics=row["numerics"])
    stem = safe_name(f"{row['model']}-{row['device']}-{row['numerics']}")
    title = f"{row['model']} on {row['device']} ({row['numerics']})"
    a = plots.layer_breakdown(row["stats"], outdir / f"{stem}-layers.png", title)
    b = plots.roofline(row["stats"], cfg, outdir / f"{stem}-roofline.png", title)
    return f"plots: {a}, {b}"


def cmd_compare(args: argparse.Namespace) -> int:
    from npusim.compiler.frontend import load_onnx
    from npusim.runtime.analysis.compare import compare_layers, default_inputs, format_rows

    model = load_onnx(args.model)
    feeds = default_inputs(model, args.seed)
    feeds.update(parse_inputs(args.input, list(feeds)))
    rows = compare_layers(model, args.numerics, feeds, args.device)
    print(f"{args.model}: {args.numerics} against fp32, layer by layer")
    print(format_rows(rows))
    if args.json:
        write_json(Path(args.json), rows)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from npusim.runtime.analysis.sweep import format_sweep, run_sweep
    from npusim.simulator.progress import enabled

    rows = run_sweep(args.model, Path(args.grid), Path(args.out) if args.out else None,
                     address=args.address, serial=args.serial, progress=enabled())
    print(format_sweep(rows))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from npusim.runtime.analysis.verify import format_summary, verify
    from npusim.simulator.progress import say

    rows = verify(args.sim, args.k, progress=say)
    print()
    print(format_summary(rows))
    if args.json:
        write_json(Path(args.json), rows)
    return 1 if any(r["result"] == "failed" for r in rows) else 0

