# SPDX-License-Identifier: Apache-2.0
"""Error text from untrusted sources (a model's names, a library's message) made safe
to print: one line, bounded, no control characters."""

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
    """A name as errors quote it: long ones elided in the middle."""
    return name if len(name) <= limit else f"{name[:limit // 2]}...{name[-limit // 4:]}"
