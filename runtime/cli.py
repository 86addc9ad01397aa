# SPDX-License-Identifier: Apache-2.0
"""The ``npusim`` command: one entry point, one subcommand per job.

User errors (bad files, bad inputs, unsupported ops) print one line
``npusim: error: ...`` on stderr and exit with status 2; nothing half-written is
left behind.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def _atomic_write(path: Path, write) -> None:
    from npusim.simulator.fileio import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def cmd_compile(args: argparse.Namespace) -> int:
    from npusim.compiler.dump import dump_graph
    from npusim.compiler.frontend import to_graph
    from npusim.compiler.options import CompileOptions
    from npusim.compiler.pipeline import run_passes

    shapes = _parse_shapes(args.input_shape)
    if args.stop_after:
        from npusim.compiler.pipeline import PASS_NAMES

        if args.stop_after not in PASS_NAMES:
            raise UsageError(f"--stop-after: no pass '{args.stop_after}'; the passes are "
                             f"{', '.join(PASS_NAMES)}")
        opts = CompileOptions.make(args.device, args.numerics, args.rounding, args.seed)
        text = dump_graph(run_passes(to_graph(args.model, shapes), opts, args.stop_after))
        if args.dump:
            _atomic_write(Path(args.dump), lambda tmp: Path(tmp).write_text(text))
        else:
            sys.stdout.write(text)
        return 0
    if not args.output:
        raise UsageError("compile needs -o OUT.npub (or --stop-after PASS to dump the graph)")
    from npusim.compiler import compile_model
    from npusim.compiler.driver import summary_line

    t0 = time.perf_counter()
    prog = compile_model(args.model, args.device, args.numerics, args.rounding, args.seed,
                         args.strict, shapes)
    elapsed = time.perf_counter() - t0
    placement = prog.metadata["placement"]
    if args.report:
        _write_json(Path(args.report), placement)
        print(format_placement(placement))
    prog.save(args.output)
    host = sorted({r["op"] for r in placement if r["where"] == "host"})
    print(summary_line(prog.metadata["summary"]) + (f" (host: {', '.join(host)})" if host else ""))
    print(f"compiled {args.model} for {prog.target.name} ({prog.numerics}): "
          f"{len(prog.instructions)} instructions, {len(prog.weights) / 2**20:.2f} MiB weights, "
          f"{elapsed:.2f} s -> {args.output}")
    return 0


def format_placement(rows: list[dict]) -> str:
    """The compile report as a table: node, op, where it runs, why."""
    w_node = min(max([len(r["node"]) for r in rows] + [4]), 40)
    w_op = max([len(r["op"]) for r in rows] + [2])
    lines = [f"{'node':<{w_node}}  {'op':<{w_op}}  {'where':<8}  why"]
    for r in rows:
        lines.append(f"{r['node'][:w_node]:<{w_node}}  {r['op']:<{w_op}}  {r['where']:<8}  "
                     f"{r['why']}")
    return "\n".join(lines)


def _parse_shapes(specs: list[str]) -> dict[str, tuple[int, ...]]:
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


def _parse_inputs(specs: list[str], names: list[str]) -> dict[str, np.ndarray]:
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


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def cmd_run(args: argparse.Namespace) -> int:
    from npusim.runtime.session import Session

    sess = Session(args.program, args.device)
    feeds = _parse_inputs(args.input, [t.name for t in sess.get_inputs()])
    t0 = time.perf_counter()
    outs = sess.run(None, feeds)
    wall = time.perf_counter() - t0
    stats = sess.last_stats
    outdir = Path(args.output_dir)
    for t, arr in zip(sess.get_outputs(), outs):
        target = outdir / f"{_safe_name(t.name)}.npy"
        _atomic_write(target, lambda tmp, a=arr: np.save(open(tmp, "wb"), a))
        print(f"{t.name}: {list(arr.shape)} -> {target}")
    if args.stats:
        _write_json(Path(args.stats), {**stats.to_dict(), "wall_s": wall,
                                       "device": sess.device.config.name,
                                       "numerics": sess.program.numerics})
    if args.trace:
        _write_trace(Path(args.trace), stats, sess)
    if args.layers:
        _print_layers(stats, args.layers)
    images = sess.last_images
    per = f" per image ({images} images, one after another)" if images > 1 else ""
    print(f"simulated latency {stats.latency_us:.1f} us{per} ({stats.cycles} cycles at "
          f"{stats.clock_mhz:g} MHz, utilization {stats.utilization:.1%}, "
          f"{stats.roofline_ratio:.2f}x roofline); functional simulation {wall * 1e3:.1f} ms"
          + (f" ({wall * 1e3 / images:.1f} ms per image)" if images > 1 else ""))
    return 0


def _print_layers(stats, top: int) -> None:
    """``--layers``: every layer (-1, the flag alone) or the ``top`` slowest."""
    from npusim.runtime.bench import format_layers

    print(format_layers(stats, top if top > 0 else None))


def _write_trace(path: Path, stats, sess) -> None:
    from npusim.simulator.trace import chrome_trace

    title = f"{sess.program.metadata.get('model', 'model')} on {sess.device.config.name}"
    trace = chrome_trace(stats, title)
    _atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(trace)))
    print(f"timeline: {len(stats.timeline)} slices -> {path} (open in ui.perfetto.dev)")


def cmd_inspect(args: argparse.Namespace) -> int:
    from npusim.simulator.program import Program

    prog = Program.load(args.program)
    t = prog.target
    print(f"program   {args.program}  model={prog.metadata.get('model')}")
    print(f"target    {t.name}  numerics={t.numerics}  fingerprint={t.fingerprint().hex()[:16]}")
    print(f"array     {t.tiles} x ({t.native_dim} x {t.array_cols}) @ {t.clock_mhz:g} MHz")
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
          f"({_pinning(prog)})")
    if args.disasm:
        for idx, (ins, rec) in enumerate(zip(prog.instructions, prog.layers)):
            fields = " ".join(f"{k}={v}" for k, v in vars(ins).items())
            print(f"{idx:5d}  {ins.OPCODE.name:<10} {fields}  ; {rec['name']}")
    return 0


def _pinning(prog) -> str:
    pinned = prog.metadata.get("pinned_weight_bytes", 0)
    streamed = prog.metadata.get("streamed_weight_bytes", 0)
    if not streamed:
        return "all pinned on chip"
    if not pinned:
        return "all streamed from DRAM"
    return f"{pinned / 2**20:.1f} MiB pinned on chip, {streamed / 2**20:.1f} MiB streamed"


def cmd_device(args: argparse.Namespace) -> int:
    from npusim.runtime.devicecmd import format_device, format_device_list
    from npusim.simulator.config import load_device

    if args.device_command == "list":
        print(format_device_list())
    else:
        print(format_device(load_device(args.spec)))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from npusim.runtime.bench import BENCH_HEAD, bench_model, format_bench, format_bench_row

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
                    _print_layers(row["stats"], args.layers)
                if args.plot:
                    plotted.append(_plots(Path(args.plot), row, device))
    if not stream:
        print(format_bench(rows))
    for line in plotted:
        print(line)
    if args.json:
        _write_json(Path(args.json), [{k: v for k, v in r.items() if k != "stats"}
                                      | {"layers": r["stats"].to_dict()["layers"]}
                                      for r in rows])
    return 0


def _plots(outdir: Path, row: dict, device) -> str:
    from npusim.runtime import plots
    from npusim.simulator.config import load_device

    cfg = load_device(device).replace(numerics=row["numerics"])
    stem = _safe_name(f"{row['model']}-{row['device']}-{row['numerics']}")
    title = f"{row['model']} on {row['device']} ({row['numerics']})"
    a = plots.layer_breakdown(row["stats"], outdir / f"{stem}-layers.png", title)
    b = plots.roofline(row["stats"], cfg, outdir / f"{stem}-roofline.png", title)
    return f"plots: {a}, {b}"


def cmd_sweep(args: argparse.Namespace) -> int:
    from npusim.runtime.sweep import format_sweep, run_sweep

    rows = run_sweep(args.model, Path(args.grid), Path(args.out) if args.out else None,
                     address=args.address, serial=args.serial)
    print(format_sweep(rows))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from npusim.compiler import compile_model
    from npusim.runtime.reference import median_seconds, onnxruntime_session
    from npusim.runtime.session import Session
    from npusim.runtime.zoo import build_resnet50
    from npusim.simulator.config import load_device

    model = build_resnet50(seed=args.seed)
    feeds = {"images": np.random.default_rng(args.seed).standard_normal((1, 3, 224, 224))
             .astype(np.float32)}
    ref_sess = onnxruntime_session(model)
    (ref,) = ref_sess.run(None, feeds)
    t_ort = median_seconds(lambda: ref_sess.run(None, feeds), rounds=1)
    print(f"ResNet-50 featurizer (seeded weights, seed {args.seed}), batch 1, "
          f"onnxruntime {t_ort * 1e3:.1f} ms on this host")
    device = args.device
    formats = [args.numerics or load_device(device).numerics]
    if "fp32" not in formats:
        formats.append("fp32")
    for fmt in formats:
        t0 = time.perf_counter()
        prog = compile_model(model, device, fmt)
        t_compile = time.perf_counter() - t0
        sess = Session(prog)
        t_sim = median_seconds(lambda: sess.run(None, feeds), rounds=1)
        (feat,) = sess.run(None, feeds)
        st = sess.last_stats
        rel = float(np.linalg.norm(feat - ref) / np.linalg.norm(ref))
        cos = float(feat.ravel() @ ref.ravel() / (np.linalg.norm(feat) * np.linalg.norm(ref)))
        print(f"\n{prog.target.name}, {fmt}: {len(prog.instructions)} instructions, "
              f"weights {len(prog.weights) / 2**20:.1f} MiB "
              f"({_pinning(prog)})")
        print(f"  simulated latency   {st.latency_us / 1000:.3f} ms  ({st.cycles} cycles at "
              f"{st.clock_mhz:g} MHz, {st.macs / 1e9:.2f} GMAC)")
        print(f"  compile {t_compile:.2f} s, functional simulation {t_sim * 1e3:.1f} ms")
        verdict = ("agrees within 1e-4" if rel < 1e-4 else "quantization error")
        print(f"  vs onnxruntime fp32: relative L2 error {rel:.2e}, cosine {cos:.6f}  "
              f"({verdict})")
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from npusim.runtime.zoo import LIGHT_MODELS, MODELS, ZOO_DESCRIPTIONS, load_light_model

    if args.zoo_command == "list":
        width = max(len(n) for n in MODELS)
        for name in MODELS:
            print(f"{name:<{width}}  {ZOO_DESCRIPTIONS[name]}")
        print(f"\nfrom the onnx package (seeded weights, export as light:NAME): "
              f"{', '.join(LIGHT_MODELS)}")
        return 0
    import onnx

    name = args.name
    if name.startswith("light:"):
        try:
            model = load_light_model(name[len("light:"):], seed=args.seed)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif name in MODELS:
        model = MODELS[name](seed=args.seed, featurizer=not args.classifier)
    else:
        raise UsageError(f"unknown zoo model {name!r}; choose one of {', '.join(MODELS)} "
                         "or light:NAME")
    _atomic_write(Path(args.output), lambda tmp: onnx.save(model, tmp))
    print(f"{name} (seed {args.seed}) -> {args.output}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from npusim.compiler.frontend import load_onnx
    from npusim.runtime.compare import compare_layers, default_inputs, format_rows

    model = load_onnx(args.model)
    feeds = default_inputs(model, args.seed)
    feeds.update(_parse_inputs(args.input, list(feeds)))
    rows = compare_layers(model, args.numerics, feeds, args.device)
    print(f"{args.model}: {args.numerics} against fp32, layer by layer")
    print(format_rows(rows))
    if args.json:
        _write_json(Path(args.json), rows)
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from npusim.runtime.signing import key_id, load_private_key
    from npusim.runtime.tfstages import featurizer_pipeline

    key = load_private_key(args.sign_key) if args.sign_key else None  # before the slow build
    model = featurizer_pipeline(args.model, args.device or "brainwave-s10", args.numerics,
                                args.seed, args.classes, args.name)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out, sign_key=key)
    stages = " -> ".join(f"{s.name} ({s.kind})" for s in model.stages)
    cfg = model.device_config()
    size = out.stat().st_size
    size_text = f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size / 2**10:.0f} KiB"
    print(f"packaged {model.name} v{model.version} for {cfg.name} ({cfg.numerics}): {stages}; "
          f"{size_text} -> {out}"
          + (f" (signed by key {key_id(key.public_key())[:16]})" if key else ""))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from npusim.runtime.signing import generate_keypair, key_id, load_public_key

    private, public = generate_keypair(args.out)
    print(f"key {key_id(load_public_key(public))[:16]}: sign with {private} (keep it secret), "
          f"trust {public}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from npusim.runtime.verify import format_summary, verify

    rows = verify(args.sim, args.k, progress=lambda line: print(line, flush=True))
    print()
    print(format_summary(rows))
    if args.json:
        _write_json(Path(args.json), rows)
    return 1 if any(r["result"] == "failed" for r in rows) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import os

    from npusim.runtime.pipeline import import_tensorflow
    from npusim.runtime.serving import ServerConfig, read_api_key_file, serve

    keys = tuple(args.api_key or ()) + (read_api_key_file(args.api_key_file)
                                        if args.api_key_file else ())
    config = ServerConfig(args.package, host=args.host, port=args.port, devices=args.devices,
                          tls_cert=args.tls_cert, tls_key=args.tls_key, api_keys=keys,
                          max_request_bytes=int(args.max_request_mb * 2**20),
                          max_batch=args.max_batch, metrics_port=args.metrics_port,
                          max_image_pixels=args.max_image_pixels, max_queued=args.max_queued,
                          workers=args.workers, grace=args.grace,
                          trust_keys=tuple(args.trust_key or ()))
    config.validate()  # before the slow TensorFlow import
    import_tensorflow()
    logging.basicConfig(level=logging.INFO, format="npusim serve: %(levelname)s %(message)s")

    def ready(server) -> None:
        metrics = (f", metrics on {args.host}:{server.metrics_port}"
                   if server.metrics_port is not None else "")
        print(f"serving {server.model.name} version {server.model.version} on "
              f"{server.address} (TLS {'on' if config.tls else 'off'}, {len(keys)} API key(s), "
              f"{config.devices} device(s){metrics})", flush=True)

    serve(config, on_ready=ready)
    # stopped and logged: end now; the interpreter's teardown of TensorFlow (and of request
    # threads a cancelled call left running) would take seconds more
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cmd_predict(args: argparse.Namespace) -> int:
    import os

    from npusim.runtime.client import PredictionClient, format_top, parse_address

    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    key = args.api_key or os.environ.get("NPUSIM_API_KEY") or None
    tls = args.tls or args.root_cert is not None
    if key and not tls:
        raise UsageError("an API key needs --tls: a key sent in plaintext is given away")
    labels = Path(args.labels).read_text().splitlines() if args.labels else None
    images = [(path, Path(path).read_bytes()) for path in args.images]
    with PredictionClient(host, port, use_ssl=tls, access_token=key,
                          root_certificates=args.root_cert, model_name=args.model,
                          timeout=args.timeout, retries=args.retries) as client:
        for path, data in images:
            print(path)
            print("\n".join(format_top(client.score_image(data), labels, args.top)))
    return 0


class UsageError(ValueError):
    """A command line that cannot be carried out."""


def build_parser() -> argparse.ArgumentParser:
    from npusim.simulator.numerics import FORMAT_NAMES

    p = argparse.ArgumentParser(prog="npusim", description="Brainwave-class NPU toolkit: "
                                "compile ONNX models, simulate them bit-exactly, count cycles.")
    sub = p.add_subparsers(dest="command", required=True)

    def device_opts(sp, numerics=True):
        sp.add_argument("--device", help="preset name or TOML/JSON file (default brainwave-s10)")
        if numerics:
            sp.add_argument("--numerics", choices=FORMAT_NAMES, help="override the format")

    def layers_opt(sp):
        sp.add_argument("--layers", type=int, nargs="?", const=-1, default=0, metavar="N",
                        help="print the per-layer table (the N slowest layers if N is given)")

    c = sub.add_parser("compile", help="compile an ONNX model to a .npub program")
    c.add_argument("model")
    c.add_argument("-o", "--output")
    device_opts(c)
    c.add_argument("--rounding", choices=["nearest_even", "stochastic"], default="nearest_even")
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

    cp = sub.add_parser("compare", help="per-layer error of a format against fp32")
    cp.add_argument("model")
    cp.add_argument("--numerics", choices=FORMAT_NAMES, required=True)
    cp.add_argument("--device", help="preset name or TOML/JSON file (default brainwave-s10)")
    cp.add_argument("--input", action="append", default=[], metavar="NAME=FILE.npy",
                    help="inputs (default: seeded standard normal)")
    cp.add_argument("--seed", type=int, default=0, help="seed of the default inputs")
    cp.add_argument("--json", help="also write the rows as JSON")
    cp.set_defaults(fn=cmd_compare)

    z = sub.add_parser("zoo", help="the bundled models: list them, export one as ONNX")
    zsub = z.add_subparsers(dest="zoo_command", required=True)
    zsub.add_parser("list", help="list the models")
    ze = zsub.add_parser("export", help="write a model with seeded weights as ONNX (opset 17)")
    ze.add_argument("name", help="a zoo name, or light:NAME for the onnx package's models")
    ze.add_argument("-o", "--output", required=True)
    ze.add_argument("--seed", type=int, default=0)
    ze.add_argument("--classifier", action="store_true",
                    help="append the default classifier head (dense + softmax over 1000)")
    z.set_defaults(fn=cmd_zoo)

    pk = sub.add_parser("package", help="build the featurizer pipeline (preprocessing, "
                        "device program, classifier) and save it as one package")
    pk.add_argument("-o", "--output", required=True, metavar="OUT.zip")
    pk.add_argument("--model", default="resnet50", help="zoo name or ONNX file (default resnet50)")
    device_opts(pk)
    pk.add_argument("--classes", type=int, default=1000, help="classifier classes (default 1000)")
    pk.add_argument("--seed", type=int, default=0, help="seed of the model and head weights")
    pk.add_argument("--name", help="model name (default: the model's)")
    pk.add_argument("--sign-key", metavar="KEY.pem",
                    help="sign the package with this Ed25519 private key (npusim keygen)")
    pk.set_defaults(fn=cmd_package)

    kg = sub.add_parser("keygen", help="create an Ed25519 key pair to sign packages with")
    kg.add_argument("--out", default=".", metavar="DIR", help="where to write npusim-sign.pem "
                    "(private, mode 0600) and npusim-sign.pub.pem (default: here)")
    kg.set_defaults(fn=cmd_keygen)

    dv = sub.add_parser("device", help="device configurations: list presets, show one")
    dvsub = dv.add_subparsers(dest="device_command", required=True)
    dvsub.add_parser("list", help="list the presets")
    ds = dvsub.add_parser("show", help="a configuration with its derived figures")
    ds.add_argument("spec", metavar="PRESET_OR_FILE")
    dv.set_defaults(fn=cmd_device)

    b = sub.add_parser("bench", help="simulated latency, utilization and host timings")
    b.add_argument("models", nargs="+", metavar="MODEL",
                   help="zoo name, light:NAME or ONNX file")
    b.add_argument("--device", action="append", help="preset or file; repeat for several")
    b.add_argument("--numerics", action="append", choices=FORMAT_NAMES,
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

    from npusim.runtime.evalcmd import add_arguments, cmd_eval

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

    d = sub.add_parser("demo", help="compile and run the bundled ResNet-50 featurizer")
    device_opts(d)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_demo)

    sv = sub.add_parser("serve", help="serve a pipeline package over the TF Serving gRPC API")
    sv.add_argument("package", help="pipeline package (.zip)")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    sv.add_argument("--port", type=int, default=8500, help="gRPC port (default 8500; 0: any)")
    sv.add_argument("--devices", type=int, default=1, help="simulated devices (default 1)")
    sv.add_argument("--tls-cert", metavar="FILE", help="PEM certificate chain (enables TLS)")
    sv.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    sv.add_argument("--api-key", action="append", metavar="KEY",
                    help="accepted Bearer key (needs TLS; at most two, for rotation)")
    sv.add_argument("--api-key-file", metavar="FILE",
                    help="keys one per line (keeps them out of the process list)")
    sv.add_argument("--metrics-port", type=int, metavar="P",
                    help="serve Prometheus metrics over HTTP on this port (default: off)")
    sv.add_argument("--max-batch", type=int, default=16, help="largest batch (default 16)")
    sv.add_argument("--max-request-mb", type=float, default=16.0,
                    help="largest request in MiB (default 16)")
    sv.add_argument("--max-image-pixels", type=int, default=40_000_000, metavar="N",
                    help="largest image, in pixels as its header declares them, checked before "
                    "it is decoded (default 40000000)")
    sv.add_argument("--max-queued", type=int, default=64, metavar="N",
                    help="Predict calls held at once, running or waiting; more are refused "
                    "with RESOURCE_EXHAUSTED (default 64)")
    sv.add_argument("--workers", type=int, default=8,
                    help="Predict calls running the pipeline at once (default 8)")
    sv.add_argument("--grace", type=float, default=10.0,
                    help="seconds in-flight requests get on SIGINT/SIGTERM (default 10)")
    sv.add_argument("--trust-key", action="append", metavar="PUB.pem",
                    help="serve the package only if signed by this Ed25519 public key "
                    "(repeatable: any of them)")
    sv.set_defaults(fn=cmd_serve)

    pr = sub.add_parser("predict", help="score images on a running `npusim serve`")
    pr.add_argument("images", nargs="+", metavar="IMAGE", help="JPEG or PNG files")
    pr.add_argument("--address", required=True, metavar="HOST:PORT")
    pr.add_argument("--labels", metavar="FILE", help="class names, one per line")
    pr.add_argument("--top", type=int, default=5, help="classes shown per image (default 5)")
    pr.add_argument("--tls", action="store_true", help="connect with TLS")
    pr.add_argument("--root-cert", metavar="FILE", help="PEM CA certificate (implies --tls)")
    pr.add_argument("--api-key", metavar="KEY", help="Bearer key (default $NPUSIM_API_KEY)")
    pr.add_argument("--model", help="model name (default: the server's model)")
    pr.add_argument("--timeout", type=float, default=30.0, help="seconds per attempt")
    pr.add_argument("--retries", type=int, default=5, help="retries when unavailable")
    pr.set_defaults(fn=cmd_predict)
    return p


USER_ERRORS = {
    "npusim.compiler.errors": ("CompileError",),
    "npusim.simulator.program": ("ProgramError",),
    "npusim.simulator.device": ("InputError", "ExecutionError"),
    "npusim.simulator.config": ("ConfigError",),
    "npusim.simulator.isa_fields": ("EncodingError",),
    "npusim.simulator.host": ("HostOpError",),
    "npusim.runtime.sweep": ("SweepError",),
    "npusim.runtime.evaluate": ("EvalError",),
    "npusim.runtime.datasets": ("DatasetError",),
    "npusim.runtime.parallel": ("ParallelError",),
    "npusim.runtime.verify": ("VerifyError",),
    "npusim.runtime.pipeline": ("PipelineError",),
    "npusim.runtime.serving": ("ServingConfigError",),
}
"""Errors a user causes (bad files, models, requests), printed as one line with exit 2. They
are looked up among the modules a command imported: an error of a module it never loaded
cannot have been raised, and the CLI starts without importing them all."""


def _is_user_error(exc: BaseException) -> bool:
    if isinstance(exc, UsageError):
        return True
    for module, names in USER_ERRORS.items():
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, tuple(getattr(loaded, n) for n in names)):
            return True
    return False


def main(argv: list[str] | None = None) -> int:
    from npusim.simulator.text import one_line

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except BrokenPipeError:  # `npusim inspect --disasm | head`
        sys.stderr.close()
        return 0
    except OSError as exc:
        print(f"npusim: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    except Exception as exc:
        client = sys.modules.get("npusim.runtime.client")
        if client is not None and isinstance(exc, client.PredictionError):
            # the server's answer; 1 when it could not be reached
            print(f"npusim: error: {one_line(exc, 1000)}", file=sys.stderr)
            return 1 if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else 2
        if not _is_user_error(exc):
            raise
        # names from files and models: printed safely
        print(f"npusim: error: {one_line(exc, 1000)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
