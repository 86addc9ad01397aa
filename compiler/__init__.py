# SPDX-License-Identifier: Apache-2.0
"""npusim's compiler: ONNX -> IR graph -> passes -> instructions -> ``.npub`` program.

The names are imported on first use (``compiler.compile_model``), so that importing a light
module of the package (``compiler.errors``) does not load onnx, networkx and the passes.
"""

from __future__ import annotations

from simulator.lazy import lazy_names

_LAZY = {
    "Compiled": "compiler.driver",
    "compile_full": "compiler.driver",
    "compile_model": "compiler.driver",
    "CompileError": "compiler.errors",
    "UnsupportedOpError": "compiler.errors",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_names(globals(), _LAZY)
