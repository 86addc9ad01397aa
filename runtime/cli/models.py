# SPDX-License-Identifier: Apache-2.0
"""``npusim zoo`` and ``demo``: the bundled models, and the featurizer compiled and run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from npusim.runtime.cli.common import (
    UsageError,
    device_opts,
    pinning,
    write_file,
)


def add_commands(sub: argparse._SubParsersAction, formats: tuple[str, ...]) -> None:
    """Add this group's subcommands to the ``npusim`` parser."""
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

    d = sub.add_parser("demo", help="compile and run the bundled ResNet-50 featurizer")
    device_opts(d, formats)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_demo)



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
    write_file(Path(args.output), lambda tmp: onnx.save(model, tmp))
    print(f"{name} (seed {args.seed}) -> {args.output}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from npusim.compiler import compile_model
    from npusim.runtime.analysis.reference import median_seconds, onnxruntime_session
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
              f"({pinning(prog)})")
        print(f"  simulated latency   {st.latency_us / 1000:.3f} ms  ({st.cycles} cycles at "
              f"{st.clock_mhz:g} MHz, {st.macs / 1e9:.2f} GMAC)")
        print(f"  compile {t_compile:.2f} s, functional simulation {t_sim * 1e3:.1f} ms")
        verdict = ("agrees within 1e-4" if rel < 1e-4 else "quantization error")
        print(f"  vs onnxruntime fp32: relative L2 error {rel:.2e}, cosine {cos:.6f}  "
              f"({verdict})")
    return 0

