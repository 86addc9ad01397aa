# SPDX-License-Identifier: Apache-2.0
"""Map a function over work items: serially, on local processes, or with Ray.

:func:`map_chunks` calls ``fn(state, item)`` for every item and returns the results in
input order. ``state`` is ``setup(shared)``, built once per worker (a sweep's model, an
evaluation's loaded programs), so ``shared`` crosses to each worker once, not with every
item. The three modes give the same results; they differ only in where ``fn`` runs:

- :attr:`Mode.SERIAL`: here, one item after the other;
- :attr:`Mode.PROCESSES`: ``workers`` local processes (``concurrent.futures``, started
  with ``spawn``: the caller may hold TensorFlow's or the simulator's threads, which
  ``fork`` would copy mid-flight);
- :attr:`Mode.RAY`: Ray tasks, on a fresh local instance (``address`` None or
  ``"local"``, ``workers`` CPUs) or on the cluster at ``address``, whose workers must be
  able to import npusim.

``fn`` and ``setup`` must be module-level functions (they are pickled by name). Items are
drawn from ``items`` lazily, a few per worker ahead, so a large dataset is never all in
memory. An exception from ``fn`` or from ``items``, or Ctrl-C, cancels the work not yet
done and is raised here. A result for which ``stop(result)`` is true cancels it too, and
the results come back with ``None`` for the items not run. A tqdm bar on stderr counts
``weight(item)`` units per item done.

Example:
    >>> map_chunks(pow, [1, 2, 3], 3, shared=2, setup=None, progress=False)
    [2, 4, 8]
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterable
from enum import StrEnum
from pathlib import Path

AHEAD = 2
"""Items in flight per worker: one running, one queued so the worker never waits."""


class ParallelError(ValueError):
    """A parallel run that cannot start: Ray missing, or its cluster unreachable."""


class Mode(StrEnum):
    """Where the items run."""

    SERIAL = "serial"
    PROCESSES = "processes"
    RAY = "ray"


_END = object()


def ray_installed() -> bool:
    """Whether ``import ray`` works (a test may block it through ``sys.modules``)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return False
    return True


def map_chunks(fn: Callable, items: Iterable, total: int, *, shared=None,
               setup: Callable | None = None, mode: Mode = Mode.SERIAL,
               workers: int | None = None, address: str | None = None, desc: str = "",
               unit: str = "it", weight: Callable = lambda item: 1,
               stop: Callable | None = None, progress: bool = True) -> list:
    """``[fn(setup(shared), item) for item in items]``, in ``mode`` (see the module
    docstring); ``total`` is the progress bar's length in ``weight`` units."""
    mode = Mode(mode)

    def bar():
        return _Bar(total, desc, unit, progress)

    if mode is Mode.SERIAL:
        state = shared if setup is None else setup(shared)
        results = []
        with bar() as b:
            for item in items:
                results.append(fn(state, item))
                if stop is not None and stop(results[-1]):
                    break
                b.update(weight(item))
        return results
    if mode is Mode.PROCESSES:
        return _run_processes(fn, items, shared, setup, workers, bar, weight, stop)
    return _run_ray(fn, items, shared, setup, workers, address, bar, weight, stop)


class _Bar:
    """A tqdm bar on stderr, made once the workers are up (a start-up error stays one
    line) and wiped on an error (the error is the last thing the user should read)."""

    def __init__(self, total: int, desc: str, unit: str, progress: bool) -> None:
        from tqdm import tqdm

        self.tqdm = tqdm(total=total, desc=desc, unit=unit, disable=not progress,
                         file=sys.stderr, dynamic_ncols=True)

    def update(self, n: int) -> None:
        self.tqdm.update(n)

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, kind, *_) -> None:
        if kind is not None:
            self.tqdm.leave = False
        self.tqdm.close()


def _run_window(submit: Callable, wait_one: Callable, items: Iterable, limit: int, bar,
                weight: Callable, stop: Callable | None, pending: dict) -> list:
    """Keep ``limit`` items in flight; ``wait_one(handles)`` gives ``(handle, result)``
    pairs of finished ones. Returns the results; ``pending`` keeps the handles not done
    (on a stop or an error, for the caller to cancel)."""
    results: list = []
    source = iter(items)
    more = True
    while True:
        while more and len(pending) < limit:
            item = next(source, _END)
            if item is _END:
                more = False
                break
            pending[submit(item)] = (len(results), weight(item))
            results.append(None)
        if not pending:
            return results
        for handle, result in wait_one(list(pending)):
            k, w = pending.pop(handle)
            results[k] = result
            if stop is not None and stop(result):
                return results
            bar.update(w)


# --- local processes ---
_STATE = None


def _init_process(setup: Callable | None, shared) -> None:
    global _STATE
    _STATE = shared if setup is None else setup(shared)


def _call_in_process(fn: Callable, item):
    return fn(_STATE, item)


def _run_processes(fn, items, shared, setup, workers, bar, weight, stop) -> list:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    n = max(1, workers or os.cpu_count() or 1)
    pool = ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_process, initargs=(setup, shared))

    def wait_one(futures):
        done, _ = wait(futures, return_when=FIRST_COMPLETED)
        return [(f, f.result()) for f in done]

    pending: dict = {}
    try:
        with bar() as b:
            results = _run_window(lambda item: pool.submit(_call_in_process, fn, item),
                                  wait_one, items, AHEAD * n, b, weight, stop, pending)
    except BaseException:
        _terminate(pool)
        raise
    if pending:  # stopped early
        _terminate(pool)
    else:
        pool.shutdown(wait=True)
    return results


def _terminate(pool) -> None:
    """Stop now: drop the queued items and end the workers mid-item (an error or Ctrl-C
    should not wait for chunks whose results nobody will read)."""
    terminate = getattr(pool, "terminate_workers", None)  # Python 3.14
    if terminate is not None:
        terminate()
        return
    procs = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        p.terminate()
    for p in procs:
        p.join(timeout=5)


# --- Ray ---
_RAY_STATE: tuple[str, object] | None = None


def _call_in_ray(token: str, fn: Callable, setup: Callable | None, boxed: list, item):
    """One Ray task. The worker process builds the state of run ``token`` on its first
    task and keeps it for the next ones; ``boxed`` holds the shared value's object ref
    in a list so that Ray does not fetch it for every task."""
    global _RAY_STATE
    if _RAY_STATE is None or _RAY_STATE[0] != token:
        import ray

        _RAY_STATE = None  # free the previous run's state before building this one
        shared = ray.get(boxed[0])
        _RAY_STATE = (token, shared if setup is None else setup(shared))
    return fn(_RAY_STATE[1], item)


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast on a ``host:port`` nobody listens at: ``ray.init`` would retry for minutes."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        return  # "auto", "local" and the like: Ray resolves them itself
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise ParallelError(f"cannot reach a Ray cluster at {address}: "
                            f"{exc.strerror or exc}") from None


def _start_ray(ray, address: str | None, workers: int | None) -> bool:
    """Connect to ``address`` or start a local instance; True if this call started Ray."""
    import logging

    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": logging.ERROR}
    try:
        if address and address != "local":
            check_reachable(address)
            ray.init(address=address, **quiet)
            return True
        # Workers import npusim from wherever this process found it.
        root = str(Path(__file__).resolve().parents[1])
        path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        local = dict(address="local",  # a fresh instance even if RAY_ADDRESS is set
                     num_cpus=max(1, workers or os.cpu_count() or 1),
                     include_dashboard=False,
                     runtime_env={"env_vars": {"PYTHONPATH": path}}, **quiet)
        try:
            ray.init(**local)
        except Exception as exc:  # Ray raises a bare Exception for this
            # a local node can miss Ray's startup deadline on a loaded machine
            # (ray-project/ray#47087): try once more before giving up
            if "timed out during startup" not in str(exc):
                raise
            ray.shutdown()
            ray.init(**local)
    except ConnectionError as exc:
        raise ParallelError(f"cannot connect to Ray at {address}: {exc}") from None
    return True


def _run_ray(fn, items, shared, setup, workers, address, bar, weight, stop) -> list:
    import uuid

    try:
        import ray
    except ImportError:
        raise ParallelError("Ray is not installed (pip install 'npusim[sweep]')") from None
    started = _start_ray(ray, address, workers)
    pending: dict = {}
    try:
        boxed = [ray.put(shared)]  # one copy in the object store, fetched once per worker
        task = ray.remote(num_cpus=1)(_call_in_ray)
        token = uuid.uuid4().hex
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))

        def wait_one(refs):
            done, _ = ray.wait(refs, num_returns=1)
            try:
                return list(zip(done, ray.get(done)))
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)  # the worker's own exception
                if isinstance(cause, Exception):
                    raise cause from None
                raise

        with bar() as b:
            return _run_window(lambda item: task.remote(token, fn, setup, boxed, item),
                               wait_one, items, AHEAD * cpus, b, weight, stop, pending)
    finally:
        # An error, a stop or Ctrl-C: drop the items not yet run. Not with ray.cancel,
        # which races with a task finishing and can abort this process (a failed check
        # in Ray's task manager, ray-project/ray#54846): shutting down ends our tasks,
        # and on a Ray someone else started we let the few in flight finish.
        if started:
            ray.shutdown()
        elif pending:
            ray.wait(list(pending), num_returns=len(pending))
