# SPDX-License-Identifier: Apache-2.0
"""Errors a user can cause; the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


def one_line(exc: BaseException | str, limit: int = 300) -> str:
    """An exception's text on one line, at most ``limit`` characters: whitespace collapsed,
    control characters escaped (a model's names must not drive the user's terminal)."""
    text = " ".join(str(exc).split())
    text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    if not text and isinstance(exc, BaseException):
        text = type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def shorten(name: str, limit: int = 80) -> str:
    """A model's name as errors quote it: long ones elided in the middle."""
    return name if len(name) <= limit else f"{name[:limit // 2]}...{name[-limit // 4:]}"


class CompileError(ValueError):
    """The model cannot be compiled (malformed file, bad shapes, ...).

    Its text is always one line: the CLI prints it after ``npusim: error:``.
    """

    def __str__(self) -> str:
        return one_line(super().__str__(), 600)


class UnsupportedOpError(CompileError):
    """An op the device cannot run."""
