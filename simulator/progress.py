# SPDX-License-Identifier: Apache-2.0
"""Progress of long work, shown only where someone asked to see it.

The compiler's passes, the device's instructions and the per-layer comparison report
their progress through :func:`task`. Nothing is shown unless a caller installed a
display with :func:`shown`: the ``npusim`` command does, on a terminal and without
``--quiet``; a library call, a test or a pipe gets no output and pays one no-op call per
step. The display is a tqdm bar on stderr that is wiped when its task ends, so the
rows a command prints as they come stay clean.

Example:
    >>> with task("simulate", total=3, unit="instr") as t:   # no display: no output
    ...     for _ in range(3):
    ...         t.update()
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

_DISPLAY: ContextVar[_Display | None] = ContextVar("npusim_progress", default=None)


class _Null:
    """A task nobody watches."""

    def update(self, n: int = 1) -> None:
        pass

    def note(self, text: str) -> None:
        pass


_NULL = _Null()


class _Bar:
    def __init__(self, bar) -> None:
        self._bar = bar

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def note(self, text: str) -> None:
        """What the task is doing now (a pass name, a layer), after the bar."""
        self._bar.set_postfix_str(text[:40])


class _Display:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.depth = 0


def enabled() -> bool:
    """Whether a display is installed (so that a caller may skip work done only to show)."""
    return _DISPLAY.get() is not None


@contextmanager
def shown(enable: bool = True, stream: TextIO | None = None) -> Iterator[None]:
    """Show the progress of the tasks run inside, on ``stream`` (default stderr), if
    ``enable`` and the stream is a terminal."""
    stream = sys.stderr if stream is None else stream
    if not enable or not getattr(stream, "isatty", lambda: False)():
        yield
        return
    token = _DISPLAY.set(_Display(stream))
    try:
        yield
    finally:
        _DISPLAY.reset(token)


def say(text: str) -> None:
    """Print a line of a command's output on stdout, above any bars being shown."""
    if _DISPLAY.get() is None:
        print(text, flush=True)
        return
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)
    sys.stdout.flush()


@contextmanager
def task(desc: str, total: int | None = None, unit: str = "it") -> Iterator[_Bar | _Null]:
    """A unit of long work of ``total`` steps (None: unknown); ``update()`` after each."""
    display = _DISPLAY.get()
    if display is None:
        yield _NULL
        return
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=display.stream, leave=False,
               position=display.depth, dynamic_ncols=True, mininterval=0.2)
    display.depth += 1
    try:
        yield _Bar(bar)
    finally:
        display.depth -= 1
        bar.close()
