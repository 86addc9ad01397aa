# SPDX-License-Identifier: Apache-2.0
"""Where each op runs: on the device when the datapath can do it, on the host otherwise.

One function decides, and the lowering, the golden interpreter and the compile
report all ask it, so they never disagree.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from compiler.ir import Node, Op, inputs_of, node

ALIAS_OPS = (Op.RESHAPE, Op.FLATTEN, Op.IDENTITY, Op.DROPOUT, Op.SQUEEZE, Op.UNSQUEEZE)
MATRIX_OPS = (Op.NPU_CONV, Op.NPU_DENSE)
ALU_OPS = (Op.ADD, Op.SUB, Op.MUL, Op.DIV)
UNARY_OPS = (Op.SIGMOID, Op.TANH, Op.LEAKY_RELU, Op.CLIP)
VECTOR_OPS = (Op.RELU, Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.GLOBAL_MAXPOOL, Op.SOFTMAX,
              Op.CONCAT) + ALU_OPS + UNARY_OPS


def broadcast_mode(a_shape: tuple[int, ...], b_shape: tuple[int, ...],
                   out: tuple[int, ...]) -> str | None:
    """How a second operand spreads over the first on the vector unit, if it can."""
    if a_shape != out:
        return None
    if b_shape == out:
        return "none"
    if int(np.prod(b_shape, dtype=np.int64)) == 1 and len(b_shape) <= len(out):
        return "scalar"
    if len(out) >= 2 and len(b_shape) <= len(out):
        padded = (1,) * (len(out) - len(b_shape)) + tuple(b_shape)
        if padded[1] == out[1] and all(d == 1 for i, d in enumerate(padded) if i != 1):
            return "channel"
    return None

def softmax_rows(n: Node) -> tuple[int, int]:
    """Softmax as ``rows`` independent softmaxes over ``cols`` contiguous values.

    Before opset 13 Softmax coerces its input to 2-D at ``axis``; from 13 it works on
    ``axis`` alone, which is contiguous when every later dimension is 1.
    """
    axis = n.attr("axis", -1)
    axis = axis + len(n.shape) if axis < 0 else axis
    rows = int(np.prod(n.shape[:axis], dtype=np.int64))
    if n.attr("opset", 13) < 13 or int(np.prod(n.shape[axis + 1:], dtype=np.int64)) == 1:
        return rows, int(np.prod(n.shape[axis:], dtype=np.int64))
    raise ValueError("softmax over a non-contiguous axis runs on the host")


DEVICE = "device"
HOST = "host"
CONST = "constant"


def place(g: nx.DiGraph, name: str) -> tuple[str, str]:
    """``(where, why)`` for value ``name``: ``device``, ``host`` or ``constant``."""
    n = node(g, name)
    if n.op == Op.CONST:
        return CONST, "folded at compile time"
    if n.op == Op.INPUT:
        return HOST, "model input"
    srcs = [node(g, s) for s in inputs_of(g, name)]
    if n.op in MATRIX_OPS:
        return DEVICE, "matrix unit"
    if n.op in ALIAS_OPS:
        if n.op == Op.DROPOUT and not is_identity(g, name):
            return HOST, "training-mode Dropout"
        if srcs and srcs[0].dtype == n.dtype:
            return DEVICE, "layout only: aliases its input's buffer"
        return HOST, "changes the data type"
    if n.op == Op.ONNX:
        return HOST, "no device kernel for this op"
    if n.op in (Op.CONV, Op.GEMM, Op.MATMUL, Op.BATCHNORM):
        return HOST, "weights are not constants" if n.op != Op.BATCHNORM else "not foldable"
    if n.op not in VECTOR_OPS:
        return HOST, "no device kernel for this op"
    if any(s.dtype != "float32" for s in srcs) or n.dtype != "float32":
        return HOST, "not float32 data"
    if n.op in ALU_OPS:
        if len(srcs) != 2 or broadcast_mode(srcs[0].shape, srcs[1].shape, n.shape) is None:
            return HOST, "this broadcast pattern is done on the host"
    if n.op == Op.CLIP and any(node(g, s).op != Op.CONST for s in inputs_of(g, name)[1:]):
        return HOST, "bounds are not constants"
    if n.op == Op.SOFTMAX:
        try:
            softmax_rows(n)
        except ValueError:
            return HOST, "softmax over a non-contiguous axis"
    if n.op in (Op.MAXPOOL, Op.AVGPOOL):
        if len(n.shape) != 4:
            return HOST, "only 2-D pooling on the vector unit"
        if tuple(n.attr("dilations", (1, 1))) != (1, 1) or n.attr("storage_order", 0):
            return HOST, "dilated pooling"
        if max(n.attr("pads", (0,)) or (0,)) > 255 or max(n.attr("kernel_shape")) > 255:
            return HOST, "window larger than the vector unit's fields"
    if n.op in (Op.GLOBAL_AVGPOOL, Op.GLOBAL_MAXPOOL) and len(n.shape) != 4:
        return HOST, "only 2-D pooling on the vector unit"
    return DEVICE, "vector unit"


def is_identity(g: nx.DiGraph, name: str) -> bool:
    """Identity always; Dropout unless its training_mode input may be true."""
    if node(g, name).op != Op.DROPOUT:
        return node(g, name).op == Op.IDENTITY
    srcs = inputs_of(g, name)
    if len(srcs) < 3:
        return True
    mode = node(g, srcs[2])
    return mode.op == Op.CONST and not bool(np.asarray(mode.value))


def on_device(g: nx.DiGraph, name: str) -> bool:
    return place(g, name)[0] == DEVICE
