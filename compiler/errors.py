# SPDX-License-Identifier: Apache-2.0
"""Errors a user can cause; the CLI prints them as one line and exits non-zero."""

from __future__ import annotations


class CompileError(ValueError):
    """The model cannot be compiled (malformed file, bad shapes, ...)."""


class UnsupportedOpError(CompileError):
    """An op the device cannot run."""
