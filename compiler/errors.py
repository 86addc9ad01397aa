# SPDX-License-Identifier: Apache-2.0
"""Errors a user can cause; the CLI prints them as one line and exits non-zero."""

from __future__ import annotations

from npusim.simulator.text import one_line, shorten  # noqa: F401  (re-exported)


class CompileError(ValueError):
    """The model cannot be compiled (malformed file, bad shapes, ...).

    Its text is always one line: the CLI prints it after ``npusim: error:``.
    """

    def __str__(self) -> str:
        return one_line(super().__str__(), 600)


class UnsupportedOpError(CompileError):
    """An op the device cannot run."""
