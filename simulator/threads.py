# SPDX-License-Identifier: Apache-2.0
"""The simulator's compute threads: one per core, each running whole shares of a kernel.

The fast kernels are single-threaded numba functions that release the GIL, and BLAS
calls made from these threads run on one thread each, so the work of a layer is split
once, here, into one contiguous share per core. Nothing spins: an OpenMP runtime or
BLAS's own thread pool would busy-wait between the many short calls of a layer and
fight the other over two cores (measured: 2-3x slower than this on ResNet-18).

The pool starts on first use, never at import. Starting it limits the BLAS library to
one thread per call (``threadpoolctl``), for the whole process.

Example:
    >>> out = [0] * 8
    >>> def square(t0, t1):
    ...     for t in range(t0, t1):
    ...         out[t] = t * t
    >>> run(square, 8)
    >>> out
    [0, 1, 4, 9, 16, 25, 36, 49]
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

_LOCK = threading.Lock()
_POOL: ThreadPoolExecutor | None = None
_WORKERS: int | None = None


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def workers() -> int:
    """Compute threads: one per core, or as :func:`set_workers` said."""
    return _WORKERS or cores()


def set_workers(count: int) -> None:
    """Use ``count`` compute threads from now on (a process that shares the machine with
    others, as each of ``npusim eval``'s worker processes does, takes its share)."""
    global _WORKERS, _POOL
    count = max(1, int(count))
    with _LOCK:
        if _POOL is not None and count != _WORKERS:
            _POOL.shutdown(wait=True)
            _POOL = None
        _WORKERS = count


def _pool() -> ThreadPoolExecutor:
    global _POOL
    with _LOCK:
        if _POOL is None:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1, user_api="blas")
            _POOL = ThreadPoolExecutor(max(1, workers() - 1), thread_name_prefix="npusim")
        return _POOL


def shares(tasks: int, grain: int = 1) -> list[tuple[int, int]]:
    """``[0, tasks)`` cut into at most one contiguous range per worker, each of at least
    ``grain`` tasks (so a small layer is not split)."""
    n = max(1, min(workers(), tasks // max(1, grain)))
    bounds = [tasks * k // n for k in range(n + 1)]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def run(fn: Callable[[int, int], object], tasks: int, grain: int = 1) -> None:
    """Call ``fn(t0, t1)`` over ``[0, tasks)``, one share per worker; the caller runs the
    first share itself. Shares never call :func:`run` (a share waiting for the pool could
    wait for itself)."""
    parts = shares(tasks, grain)
    if len(parts) <= 1:
        if tasks > 0:
            fn(0, tasks)
        return
    pool = _pool()
    futures: list[Future] = [pool.submit(fn, a, b) for a, b in parts[1:]]
    try:
        fn(*parts[0])
    finally:
        for f in futures:
            f.result()
