# SPDX-License-Identifier: Apache-2.0
"""Package names imported on first use (PEP 562), so that importing a package stays cheap."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module


def lazy_names(namespace: dict, table: dict[str, str]) -> tuple[Callable, Callable]:
    """``__getattr__`` and ``__dir__`` for a package whose ``namespace`` (its ``globals()``)
    gets each name of ``table`` (name -> module) from its module when first asked for."""

    def __getattr__(name: str) -> object:
        if name in table:
            value = getattr(import_module(table[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *table])

    return __getattr__, __dir__
