# SPDX-License-Identifier: Apache-2.0
"""The compute threads' pool: every task once, errors reach the caller, concurrent
callers and a parked pool still get their work done."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from npusim.simulator import threads


@pytest.fixture
def three_workers():
    """Three compute threads (two spinning workers besides the caller), whatever the
    machine's cores; the default count again afterwards."""
    before = threads._WORKERS
    threads.set_workers(3)
    yield
    threads.set_workers(before or threads.cores())
    threads._WORKERS = before


def _squares(out: np.ndarray, seen: list):
    def fn(t0: int, t1: int) -> None:
        seen.append((threading.get_ident(), t0, t1))
        out[t0:t1] += np.arange(t0, t1) ** 2
    return fn


@pytest.mark.parametrize("tasks", [1, 2, 3, 7, 1000])
def test_every_task_runs_once(three_workers, tasks: int) -> None:
    out, seen = np.zeros(tasks, np.int64), []
    for _ in range(50):  # many hand-offs in a row, as a network's layers make
        threads.run(_squares(out, seen), tasks)
    assert np.array_equal(out, 50 * np.arange(tasks) ** 2)
    assert {(a, b) for _, a, b in seen} == set(threads.shares(tasks))


def test_the_workers_share_the_work(three_workers) -> None:
    seen: list = []
    squares = _squares(np.zeros(30, np.int64), seen)

    def fn(t0: int, t1: int) -> None:
        squares(t0, t1)
        if t0 == 0:  # the caller's share lasts until the workers have taken theirs
            _until(lambda: len(seen) == 3)

    threads.run(fn, 30)
    assert len({ident for ident, _, _ in seen}) == 3


def test_a_share_no_worker_has_taken_runs_on_the_caller(three_workers) -> None:
    """A worker that has not taken its share by the time the caller is done with its own
    (asleep, waking, waiting for the GIL) leaves it to the caller, who runs it rather
    than wait; the worker, when it comes, finds it taken."""
    threads.run(lambda t0, t1: None, 3)  # the pool starts
    pool = threads._POOL
    threads.park()
    assert _until(lambda: all(pool.asleep))
    asleep_on = pool.wake
    pool.wake = [threading.Condition() for _ in asleep_on]  # its notes wake nobody
    try:
        out, seen = np.zeros(12, np.int64), []
        done = threading.Event()
        caller = threading.Thread(target=lambda: (threads.run(_squares(out, seen), 12),
                                                  done.set()), daemon=True)
        caller.start()
        assert done.wait(5.0), "the caller waited for a worker that never came"
        assert np.array_equal(out, np.arange(12) ** 2)
        assert {ident for ident, _, _ in seen} == {caller.ident} and len(seen) == 3
    finally:
        pool.wake = asleep_on
        for w in pool.wake:
            with w:
                w.notify()
    out2, seen2 = np.zeros(12, np.int64), []
    threads.run(_squares(out2, seen2), 12)  # the workers woke, found their shares taken
    assert np.array_equal(out2, np.arange(12) ** 2)


def test_a_share_that_raises_reaches_the_caller(three_workers) -> None:
    def fn(t0: int, t1: int) -> None:
        if t0 > 0:
            raise ValueError(f"share {t0}")
    with pytest.raises(ValueError, match="share"):
        threads.run(fn, 9)
    out, seen = np.zeros(9, np.int64), []
    threads.run(_squares(out, seen), 9)  # the pool still works
    assert np.array_equal(out, np.arange(9) ** 2)


def test_a_parked_pool_wakes_for_the_next_layer(three_workers) -> None:
    out, seen = np.zeros(12, np.int64), []
    for _ in range(5):
        threads.run(_squares(out, seen), 12)
        threads.park()
    assert np.array_equal(out, 5 * np.arange(12) ** 2)


def test_concurrent_callers_each_get_their_result(three_workers) -> None:
    """The server's request threads call in at once: one has the workers, the others
    run their layer on their own thread."""
    results, errors = {}, []

    def caller(k: int) -> None:
        try:
            out = np.zeros(64, np.int64)
            for _ in range(200):
                threads.run(_squares(out, []), 64)
            results[k] = out
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
    callers = [threading.Thread(target=caller, args=(k,)) for k in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert not errors
    assert all(np.array_equal(results[k], 200 * np.arange(64) ** 2) for k in range(4))


def test_a_small_layer_is_not_split(three_workers) -> None:
    seen: list = []
    threads.run(_squares(np.zeros(10, np.int64), seen), 10, grain=8)
    assert [(a, b) for _, a, b in seen] == [(0, 10)]


def test_more_shares_than_workers(three_workers, monkeypatch: pytest.MonkeyPatch) -> None:
    """A caller that cuts more shares than the pool has workers runs the rest itself."""
    threads.run(lambda t0, t1: None, 2)  # the pool starts with its two workers
    monkeypatch.setattr(threads, "workers", lambda: 6)
    out, seen = np.zeros(60, np.int64), []
    threads.run(_squares(out, seen), 60)
    assert np.array_equal(out, np.arange(60) ** 2)
    assert len(seen) == 6


def _until(condition, seconds: float = 5.0) -> bool:
    end = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > end:
            return False
        time.sleep(1e-3)
    return True


def test_a_hold_wakes_the_workers_and_its_end_parks_them(three_workers) -> None:
    """A run of the device holds the pool: its sleeping workers wake at the start, with
    no share posted yet, and sleep again when the last of nested holds ends."""
    threads.run(lambda t0, t1: None, 3)  # the pool starts
    pool = threads._POOL
    threads.park()
    assert _until(lambda: all(pool.asleep))
    before = list(pool.wakings)
    with threads.hold():
        assert _until(lambda: all(a > b for a, b in zip(pool.wakings, before)))
        with threads.hold():
            out, seen = np.zeros(12, np.int64), []
            threads.run(_squares(out, seen), 12)
        assert pool.holders == 1 and pool.flags[pool.park] == 0  # the outer run goes on
        threads.run(_squares(out, seen), 12)
        assert np.array_equal(out, 2 * np.arange(12) ** 2)
    assert pool.holders == 0 and pool.flags[pool.park] == 1
    assert _until(lambda: all(pool.asleep))


def test_a_hold_without_a_pool_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "_POOL", None)
    with threads.hold():
        out, seen = np.zeros(4, np.int64), []
        _squares(out, seen)(0, 4)
    assert threads._POOL is None
