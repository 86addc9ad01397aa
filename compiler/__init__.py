# SPDX-License-Identifier: Apache-2.0
"""npusim's compiler: ONNX -> IR graph -> passes -> instructions -> ``.npub`` program.

The names are imported on first use (``compiler.compile_model``), so that importing a light
module of the package (``compiler.errors``) does not load onnx, networkx and the passes.
"""

from __future__ import annotations

from importlib import import_module

_LAZY = {
    "Compiled": "compiler.driver",
    "compile_full": "compiler.driver",
    "compile_model": "compiler.driver",
    "CompileError": "compiler.errors",
    "UnsupportedOpError": "compiler.errors",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> object:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
