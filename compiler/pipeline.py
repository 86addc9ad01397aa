# SPDX-License-Identifier: Apache-2.0
"""The pass pipeline, in order. ``run_passes(..., stop_after=NAME)`` stops after any pass."""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx

from npusim.compiler import passes
from npusim.compiler.errors import CompileError
from npusim.compiler.ir import verify
from npusim.compiler.options import CompileOptions
from npusim.compiler.vector_forms import vector_forms

PIPELINE: tuple[tuple[str, Callable[[nx.DiGraph, CompileOptions], nx.DiGraph]], ...] = (
    ("fold_constants", passes.fold_constants),
    ("remove_identities", passes.remove_identities),
    ("fold_scale_shift", passes.fold_scale_shift),
    ("fold_batchnorm", passes.fold_batchnorm),
    ("canonicalize", passes.canonicalize),
    ("vector_forms", vector_forms),
    ("fuse_residual", passes.fuse_residual),
    ("fuse_relu", passes.fuse_relu),
    ("keep_host_work_together", passes.keep_host_work_together),
    ("quantize_weights", passes.quantize_weights),
)
PASS_NAMES = tuple(name for name, _ in PIPELINE)


def run_passes(g: nx.DiGraph, opts: CompileOptions, stop_after: str | None = None,
               progress=None) -> nx.DiGraph:
    """Run the pipeline on ``g``, verifying the IR after every pass; ``progress`` (a
    :func:`npusim.simulator.progress.task`) hears of each pass."""
    if stop_after is not None and stop_after not in PASS_NAMES:
        raise CompileError(f"unknown pass {stop_after!r}; passes: {', '.join(PASS_NAMES)}")
    for name, fn in PIPELINE:
        if progress is not None:
            progress.note(name)
        g = fn(g, opts)
        verify(g)
        if progress is not None:
            progress.update()
        if name == stop_after:
            break
    return g
