# SPDX-License-Identifier: Apache-2.0
"""npusim's compiler: ONNX -> IR graph -> passes -> instructions -> ``.npub`` program.

The names are imported on first use (``npusim.compiler.compile_model``), so that importing a light
module of the package (``npusim.compiler.errors``) does not load onnx, networkx and the passes.
"""

from __future__ import annotations

from npusim.simulator.lazy import lazy_names

_LAZY = {
    "Compiled": "npusim.compiler.driver",
    "compile_full": "npusim.compiler.driver",
    "compile_model": "npusim.compiler.driver",
    "CompileError": "npusim.compiler.errors",
    "UnsupportedOpError": "npusim.compiler.errors",
}

__all__ = list(_LAZY)

__getattr__, __dir__ = lazy_names(globals(), _LAZY)
