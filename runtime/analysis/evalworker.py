# SPDX-License-Identifier: Apache-2.0
"""What an evaluation's workers run (:mod:`npusim.runtime.analysis.evaluate`): load the programs
once, then run chunks of samples through them.

The state :func:`load_worker` builds from the programs' bytes holds one Session per
program; :func:`run_chunk` returns, per program, each sample's top-k output indices,
its largest difference from the reference program's outputs and the seconds the chunk
took (a worker's first chunk is flagged: its seconds include loading the kernels).
Workers import this module only, not the driver's (datasets, compiler).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

TOP_K = 5
"""Predictions kept per sample: enough for top-5 accuracy."""


ARENA_BUDGET = 64 * 2**20
"""Activation memory of one batched run: a chunk runs in batches that fit it (a device
keeps its last batch's activations, one arena per image)."""


def sample_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One sample of a program input ``shape``: without its leading 1, if it has one."""
    return tuple(shape[1:]) if tuple(shape[:1]) == (1,) else tuple(shape)


def _predict(session, xs: np.ndarray) -> np.ndarray:
    """The first output of ``session``'s program for each sample of ``xs`` (``[n,
    *sample_shape(input shape)]``), flattened: ``[n, outputs]``.

    The samples run as batches (:meth:`npusim.runtime.session.Session.run` takes ``n`` in place
    of the input's leading 1, or a new leading axis), bit for bit the one-by-one result.
    """
    inp, out = session.get_inputs()[0], session.get_outputs()[0]
    step = max(1, ARENA_BUDGET // max(1, session.program.memory_map["activations"][1]))
    rows = []
    for i in range(0, len(xs), step):
        batch = xs[i:i + step]
        rows.append(session.run([out.name], {inp.name: batch})[0].reshape(len(batch), -1))
    return np.concatenate(rows) if rows else np.zeros((0, math.prod(out.shape)), np.float32)


@dataclass
class Worker:
    """What a worker keeps between chunks."""

    sessions: list
    """``(row name, Session)`` per program."""
    reference: str | None
    """The row whose outputs the others are compared with."""
    chunks: int = 0
    """Chunks run so far."""


def load_worker(shared: tuple) -> Worker:
    """A worker's state from ``(((row name, program bytes), ...), reference row name,
    compute threads or None)``: a worker among several takes its share of the cores."""
    from npusim.runtime.session import Session
    from npusim.simulator import threads
    from npusim.simulator.program import Program

    programs, reference, compute_threads = shared
    if compute_threads:
        threads.set_workers(compute_threads)
    return Worker([(name, Session(Program.from_bytes(data, name)))
                   for name, data in programs], reference)


def run_chunk(state: Worker, xs: np.ndarray) -> dict[str, tuple]:
    """Per program: top-k indices, each sample's largest difference from the reference
    (or None), the seconds the chunk took and whether it was the worker's first chunk
    (whose seconds include loading the kernels)."""
    first, outs, secs = state.chunks == 0, {}, {}
    state.chunks += 1
    for name, sess in state.sessions:
        t0 = time.perf_counter()
        outs[name] = _predict(sess, xs)
        secs[name] = time.perf_counter() - t0
    ref = outs.get(state.reference)
    k = min(TOP_K, next(iter(outs.values())).shape[1])
    return {name: (np.argsort(-y, axis=1, kind="stable")[:, :k].astype(np.int32),
                   None if ref is None else np.abs(y - ref).max(axis=1, initial=0.0),
                   secs[name], first) for name, y in outs.items()}
