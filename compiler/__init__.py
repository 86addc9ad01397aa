# SPDX-License-Identifier: Apache-2.0
"""npusim's compiler: ONNX -> IR graph -> passes -> instructions -> ``.npub`` program."""

from compiler.driver import Compiled, compile_full, compile_model
from compiler.errors import CompileError, UnsupportedOpError

__all__ = ["Compiled", "CompileError", "UnsupportedOpError", "compile_full", "compile_model"]
