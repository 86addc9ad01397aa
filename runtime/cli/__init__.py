# SPDX-License-Identifier: Apache-2.0
"""The ``npusim`` command: one entry point, one subcommand per job.

The subcommands live by group: :mod:`~npusim.runtime.cli.program` (compile, run, inspect),
:mod:`~npusim.runtime.cli.models` (zoo, demo), :mod:`~npusim.runtime.cli.device`,
:mod:`~npusim.runtime.cli.measure` (bench, compare, sweep, eval, verify) and
:mod:`~npusim.runtime.cli.serving` (package, keygen, serve, predict). Each imports what its
commands need when they run, so that ``npusim --help`` starts at once.

User errors (bad files, bad inputs, unsupported ops) print one line
``npusim: error: ...`` on stderr and exit with status 2; nothing half-written is
left behind.
"""

from __future__ import annotations

import argparse
import sys

from npusim.runtime.cli import device, measure, models, program, serving
from npusim.runtime.cli.common import UsageError

__all__ = ["UsageError", "build_parser", "main"]

GROUPS = (program, measure, models, serving, device)
"""Command groups, in the order ``npusim --help`` lists them."""


def build_parser() -> argparse.ArgumentParser:
    from npusim.simulator.numerics import FORMAT_NAMES

    p = argparse.ArgumentParser(prog="npusim", description="Brainwave-class NPU toolkit: "
                                "compile ONNX models, simulate them bit-exactly, count cycles.")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress bars (they show only on a terminal anyway)")
    sub = p.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.add_commands(sub, FORMAT_NAMES)
    for command in sub.choices.values():  # -q after the command too
        command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                             help="no progress bars")
    return p


USER_ERRORS = {
    "npusim.compiler.errors": ("CompileError",),
    "npusim.simulator.program": ("ProgramError",),
    "npusim.simulator.device": ("InputError", "ExecutionError"),
    "npusim.simulator.config": ("ConfigError",),
    "npusim.simulator.isa_fields": ("EncodingError",),
    "npusim.simulator.host": ("HostOpError",),
    "npusim.runtime.analysis.sweep": ("SweepError",),
    "npusim.runtime.analysis.evaluate": ("EvalError",),
    "npusim.runtime.analysis.datasets": ("DatasetError",),
    "npusim.runtime.analysis.parallel": ("ParallelError",),
    "npusim.runtime.analysis.verify": ("VerifyError",),
    "npusim.runtime.serving.pipeline": ("PipelineError",),
    "npusim.runtime.serving.config": ("ServingConfigError",),
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
    from npusim.simulator.progress import shown
    from npusim.simulator.text import one_line

    args = build_parser().parse_args(argv)
    try:
        with shown(not args.quiet):
            return args.fn(args)
    except BrokenPipeError:  # `npusim inspect --disasm | head`
        sys.stderr.close()
        return 0
    except OSError as exc:
        print(f"npusim: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
              file=sys.stderr)
        return 2
    except Exception as exc:
        client = sys.modules.get("npusim.runtime.serving.client")
        if client is not None and isinstance(exc, client.PredictionError):
            # the server's answer; 1 when it could not be reached
            print(f"npusim: error: {one_line(exc, 1000)}", file=sys.stderr)
            return 1 if exc.code.name in ("UNAVAILABLE", "DEADLINE_EXCEEDED") else 2
        if not _is_user_error(exc):
            raise
        # names from files and models: printed safely
        print(f"npusim: error: {one_line(exc, 1000)}", file=sys.stderr)
        return 2

