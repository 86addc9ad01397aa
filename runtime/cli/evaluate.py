# SPDX-License-Identifier: Apache-2.0
"""``npusim eval``: the accuracy of a program, or of every format, over a dataset.

Prints one row per format (:func:`npusim.runtime.analysis.evaluate.format_eval`) and, with
``--json``, writes the figures atomically. Notes (no labels, a class-folder count that differs from
the model's outputs) go to stderr.

Example::

    npusim eval digits.onnx digits-test.npz --numerics all --json eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``npusim eval``."""
    p.add_argument("model", help=".npub program, ONNX file, zoo name or light:NAME")
    p.add_argument("data", help=".npz (x, y), .npy of inputs, folder of images or of class "
                   "folders")
    p.add_argument("--labels", metavar="FILE.npy", help="class indices for an .npy or a "
                   "folder of images")
    p.add_argument("--numerics", metavar="FMT", help="format, comma list or 'all' (ONNX "
                   "models; default: the device's own); fp32 always runs as the reference")
    p.add_argument("--device", help="preset or TOML/JSON file to compile for (default "
                   "brainwave-s10)")
    p.add_argument("--reference", metavar="MODEL", help="for a .npub: the ONNX model to "
                   "compile in fp32 as the reference")
    run = p.add_mutually_exclusive_group()
    run.add_argument("--workers", type=int, metavar="N", help="local processes (default: "
                     "one per core)")
    run.add_argument("--serial", action="store_true", help="run here, one chunk after another")
    p.add_argument("--address", metavar="RAY_ADDR", help="run on the Ray cluster at this "
                   "address ('local': a fresh local Ray instance)")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N samples")
    p.add_argument("--package", metavar="PKG.zip", help="pipeline package whose "
                   "preprocessing decodes the images")
    p.add_argument("--json", metavar="OUT", help="also write the figures as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def cmd_eval(args: argparse.Namespace) -> int:
    from npusim.runtime.analysis.evaluate import EvalError, evaluate, format_eval
    from npusim.simulator.fileio import atomic_write
    from npusim.simulator.progress import enabled

    out = Path(args.json) if args.json else None
    if out is not None and out.is_dir():  # found out now, not after the whole run
        raise EvalError(f"--json {out}: is a directory")
    result = evaluate(args.model, args.data, numerics=args.numerics, labels=args.labels,
                      workers=args.workers, address=args.address, serial=args.serial,
                      progress=not args.no_progress and enabled(), device=args.device,
                      package=args.package, reference=args.reference, limit=args.limit)
    for note in result.notes:
        print(f"npusim eval: {note}", file=sys.stderr)
    print(format_eval(result))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(result.to_dict(), indent=2) + "\n"
        atomic_write(out, lambda tmp: Path(tmp).write_text(text))
    return 0
