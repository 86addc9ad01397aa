# SPDX-License-Identifier: Apache-2.0
"""The simulator's compute threads: one per core, each running whole shares of a kernel.

The fast kernels are single-threaded numba functions that release the GIL, and BLAS
calls made from these threads run on one thread each, so the work of a layer is split
once, here, into one contiguous share per core. BLAS's own pool and an OpenMP runtime
stay out: they would fight these threads over the cores (measured: 2-3x slower than
this on ResNet-18).

A hand-off has to be fast: a layer of MobileNet takes 50-300 µs, and waking a sleeping
thread costs 20-40 µs on a virtual machine (a futex wake is an interrupt to another
core): through ``concurrent.futures`` a hand-off of an empty share took 35-80 µs, here
10-25 µs. Each worker waits for its next share spinning in a compiled loop that has
released the GIL (it sees the share within a microsecond), and sleeps after
``SPIN_SECONDS`` without work or when :func:`park` says a run has ended; :func:`hold`
(a run of the device) wakes the sleeping workers when the run starts. A woken worker
can land on the caller's core: every spin yields the core at each load
(``sched_yield``, a no-op on a core nobody else wants), so two threads on one core take
turns at once rather than a time slice apart (measured with both pinned to one core:
MobileNetV3-Small 6.5 ms, against 8.9 ms without the yield; unpinned, a MobileNetV3
layer of 100 µs had taken 0.4-1.4 ms). Spinning for longer inside a run gained nothing
measurable on one stream of images, and kept the cores from the server's request
threads. Its "done" is
stored by the compiled loop once the GIL is released, and the caller waits for it in
another compiled loop, without the GIL, so the worker's last Python steps never wait
for the caller. (The worker still takes the GIL to call its share.) A share is taken by
an atomic compare-and-swap, by its worker or by the caller: a caller done with its own
share takes any its worker has not started (asleep, waking, waiting for the GIL) and
runs it, rather than wait for the worker to come.

The pool starts on first use, never at import. Starting it limits the BLAS library to
one thread per call (``threadpoolctl``), for the whole process. One caller uses the
pool at a time; a call made while another thread's call holds it (the server's
concurrent requests) runs on its own thread.

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

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

_LOCK = threading.Lock()
_POOL: _Pool | None = None
_WORKERS: int | None = None

SPIN_SECONDS = 2e-3
"""How long an idle worker spins for its next share before it sleeps: longer than the
host work between two layers, short enough that an idle simulator leaves the cores."""


def cores() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_CORES: int | None = None


def workers() -> int:
    """Compute threads: one per core (as the process found them on its first layer), or as
    :func:`set_workers` said."""
    global _CORES
    if _WORKERS:
        return _WORKERS
    if _CORES is None:
        _CORES = cores()
    return _CORES


def set_workers(count: int) -> None:
    """Use ``count`` compute threads from now on (a process that shares the machine with
    others, as each of ``npusim eval``'s worker processes does, takes its share)."""
    global _WORKERS, _POOL
    count = max(1, int(count))
    with _LOCK:
        if _POOL is not None and count != _WORKERS:
            _POOL.shutdown()
            _POOL = None
        _WORKERS = count


# --- the compiled waits: atomic loads and stores the optimizer cannot hoist ----------

@intrinsic
def _load_acquire(typingctx, flags, i):
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        return builder.load_atomic(ptr, "acquire", 8)
    return types.int64(flags, i), codegen


@intrinsic
def _store_release(typingctx, flags, i, value):
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        builder.store_atomic(args[2], ptr, "release", 8)
        return context.get_dummy_value()
    return types.void(flags, i, value), codegen


@intrinsic
def _compare_swap(typingctx, flags, i, expected, value):
    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]])
        pair = builder.cmpxchg(ptr, args[2], args[3], "acq_rel", "acquire")
        return builder.extract_value(pair, 1)
    return types.boolean(flags, i, expected, value), codegen


@numba.njit(nogil=True, cache=True)
def _claim(flags, i, seq):  # pragma: no cover - compiled
    # share `seq` of a worker is taken by whoever moves flags[i] from seq - 1 to seq first
    return _compare_swap(flags, i, seq - 1, seq)


if hasattr(os, "sched_yield"):
    @intrinsic
    def _yield_core(typingctx):
        def codegen(context, builder, signature, args):
            fnty = ir.FunctionType(ir.IntType(32), [])
            builder.call(cgutils.get_or_insert_function(builder.module, fnty, "sched_yield"),
                         [])
            return context.get_dummy_value()
        return types.void(), codegen
else:  # pragma: no cover - no sched_yield (Windows): spin alone
    @numba.njit(inline="always")
    def _yield_core():
        pass


@numba.njit(nogil=True, cache=True)
def _post_and_wait(flags, post, value, watch, old, park, spins):  # pragma: no cover
    # flags[post] = value (if post >= 0), then spin until flags[watch] != old, at most
    # `spins` loads or until flags[park] is set (if park >= 0); the value seen (old if
    # none came). Each load yields the core to any thread waiting for it: the scheduler
    # may have put the thread we wait for on our core.
    if post >= 0:
        _store_release(flags, post, value)
    for _ in range(spins):
        v = _load_acquire(flags, watch)
        if v != old:
            return v
        if park >= 0 and _load_acquire(flags, park) != 0:
            break
        _yield_core()
    return old


_STRIDE = 16
"""int64 flags per worker: its own 128 bytes, so two workers' flags share no cache line."""
_POSTED, _DONE, _CLAIMED = 0, 1, 2


class _Pool:
    """``count`` spinning worker threads (see the module's docstring)."""

    def __init__(self, count: int) -> None:
        self.flags = np.zeros(count * _STRIDE + _STRIDE, np.int64)
        self.park = count * _STRIDE  # set: the workers sleep instead of spinning
        self.holders = 0  # callers inside hold()
        self.generation = 0  # runs that hold() has started
        self.jobs: list[tuple | None] = [None] * count
        self.errors: list[BaseException | None] = [None] * count
        self.seq = [0] * count
        self.asleep = [False] * count
        self.wakings = [0] * count  # times a hold woke the worker
        self.wake = [threading.Condition(threading.Lock()) for _ in range(count)]
        self.busy = threading.Lock()
        self.closing = False
        self.spins = _calibrate(self.flags)
        self.threads = [threading.Thread(target=self._work, args=(i,), daemon=True,
                                         name=f"npusim-{i + 1}") for i in range(count)]
        for t in self.threads:
            t.start()

    def _work(self, i: int) -> None:
        flags, posted, done = self.flags, i * _STRIDE + _POSTED, i * _STRIDE + _DONE
        seen, finished, generation = 0, -1, self.generation
        while True:
            v = _post_and_wait(flags, done if finished >= 0 else -1, finished, posted, seen,
                               self.park, self.spins)
            finished = -1
            if v == seen:  # no share for SPIN_SECONDS: sleep until one is posted, or
                with self.wake[i]:  # until hold() starts another run
                    self.asleep[i] = True
                    while (flags[posted] == seen and not self.closing
                           and self.generation == generation):
                        self.wake[i].wait()
                    self.asleep[i] = False
                    if self.generation != generation:
                        generation = self.generation
                        self.wakings[i] += 1
                if self.closing:
                    return
                continue
            seen = v
            if not _claim(flags, i * _STRIDE + _CLAIMED, v):
                continue  # the caller ran this share itself: nothing to report
            fn, a, b = self.jobs[i]
            self.jobs[i] = None
            try:
                fn(a, b)
            except BaseException as e:  # noqa: BLE001 - handed to the caller
                self.errors[i] = e
            finished = seen

    def run(self, fn: Callable[[int, int], object], parts: list[tuple[int, int]]) -> None:
        self.flags[self.park] = 0
        count = len(self.jobs)
        mine = [parts[0], *parts[1 + count:]]  # more shares than workers: the rest are ours
        posted = []
        for i, (a, b) in enumerate(parts[1:1 + count]):
            self.jobs[i] = (fn, a, b)
            self.seq[i] += 1
            self.flags[i * _STRIDE + _POSTED] = self.seq[i]
            with self.wake[i]:  # a worker asleep (or falling asleep) sees it
                self.wake[i].notify()
            posted.append((i, a, b))
        error: BaseException | None = None
        try:
            for a, b in mine:
                fn(a, b)
        except BaseException as e:  # noqa: BLE001 - raised once the workers are done
            error = e
        for i, a, b in posted:
            # a share its worker has not taken yet (asleep, waking, waiting for the GIL)
            # is ours: running it beats waiting for the worker to start it
            if _claim(self.flags, i * _STRIDE + _CLAIMED, self.seq[i]):
                self.jobs[i] = None
                if error is None:
                    try:
                        fn(a, b)
                    except BaseException as e:  # noqa: BLE001
                        error = e
            else:
                self._wait_done(i)
        errors = [self.errors[i] for i, _, _ in posted if self.errors[i] is not None]
        for i, _, _ in posted:
            self.errors[i] = None
        if error is not None:
            raise error
        if errors:
            raise errors[0]

    def _wait_done(self, i: int) -> None:
        """Spin for worker ``i``'s "done" of the share it took, for about
        ``SPIN_SECONDS``, then poll it every 0.1 ms (a long share leaves the core to
        whoever else has work)."""
        done, seq = i * _STRIDE + _DONE, self.seq[i]
        old = int(self.flags[done])  # the last share it ran (not every share is its)
        if old == seq or _post_and_wait(self.flags, -1, 0, done, old, -1, self.spins) == seq:
            return
        while self.flags[done] != seq:
            time.sleep(1e-4)

    def enter(self) -> None:
        """A run starts: sleeping workers wake to spin for its shares."""
        with _LOCK:
            self.holders += 1
            self.generation += 1
            self.flags[self.park] = 0
        for w in self.wake:
            with w:
                w.notify()

    def leave(self) -> None:
        with _LOCK:
            self.holders -= 1
            if self.holders == 0:
                self.flags[self.park] = 1

    def shutdown(self) -> None:
        self.closing = True
        for i in range(len(self.threads)):
            with self.wake[i]:
                self.wake[i].notify()
        for t in self.threads:
            t.join()


def _calibrate(flags: np.ndarray) -> int:
    """Spin loads in about ``SPIN_SECONDS``."""
    n = 1 << 16
    _post_and_wait(flags, -1, 0, len(flags) - 1, 0, len(flags) - 2, 16)  # compile first
    t = time.perf_counter()
    _post_and_wait(flags, -1, 0, len(flags) - 1, 0, len(flags) - 2, n)
    return max(n, int(n * SPIN_SECONDS / max(time.perf_counter() - t, 1e-9)))


def _forget_pool() -> None:
    """In a forked child: the parent's workers do not exist here."""
    global _POOL, _LOCK, _CORES
    _POOL, _LOCK, _CORES = None, threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _pool() -> _Pool:
    global _POOL
    with _LOCK:
        if _POOL is None:
            from threadpoolctl import threadpool_limits

            threadpool_limits(1, user_api="blas")
            _POOL = _Pool(max(1, workers() - 1))
        return _POOL


def park() -> None:
    """Let the workers sleep now rather than spin for a next share: the caller has no
    more work for a while."""
    if _POOL is not None:
        _POOL.flags[_POOL.park] = 1


@contextlib.contextmanager
def hold() -> Iterator[None]:
    """A stretch of layers (a run of the device): sleeping workers are woken now (a
    sleeping core took 0.1-1 ms to wake on a virtual machine), and sleep when the last
    holder leaves. Without a pool (one core, or none started yet) it does nothing."""
    pool = _POOL if workers() > 1 else None
    if pool is None:
        yield
        return
    pool.enter()
    try:
        yield
    finally:
        pool.leave()


def shares(tasks: int, grain: int = 1) -> list[tuple[int, int]]:
    """``[0, tasks)`` cut into at most one contiguous range per worker, each of at least
    ``grain`` tasks (so a small layer is not split)."""
    n = min(workers(), tasks // max(1, grain))
    if n <= 1:  # most of a small network's layers: no cuts to make
        return [(0, tasks)] if tasks > 0 else []
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
    if not pool.busy.acquire(blocking=False):  # another thread's layer has the workers
        fn(0, tasks)
        return
    try:
        pool.run(fn, parts)
    finally:
        pool.busy.release()
