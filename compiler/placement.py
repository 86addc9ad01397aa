# SPDX-License-Identifier: Apache-2.0
"""Where each op runs: on the device when the datapath can do it, on the host otherwise.

One function decides, and the lowering, the golden interpreter and the compile
report all ask it, so they never disagree.
"""

from __future__ import annotations

import networkx as nx

from compiler.ir import Op, inputs_of, node

ALIAS_OPS = (Op.RESHAPE, Op.FLATTEN, Op.IDENTITY, Op.DROPOUT, Op.SQUEEZE, Op.UNSQUEEZE)
MATRIX_OPS = (Op.NPU_CONV, Op.NPU_DENSE)
VECTOR_OPS = (Op.ADD, Op.RELU, Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.SOFTMAX)

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
    if n.op in (Op.ADD, Op.SUM) and any(s.shape != n.shape for s in srcs):
        return HOST, "broadcasting is done on the host"
    if n.op == Op.SUM:
        return HOST, "more than two operands"
    if n.op == Op.SOFTMAX:
        axis = n.attr("axis", -1)
        last = len(n.shape) - 1
        if (axis if axis >= 0 else axis + len(n.shape)) != last:
            return HOST, "softmax over a non-last axis"
    if n.op in (Op.MAXPOOL, Op.AVGPOOL):
        if len(n.shape) != 4:
            return HOST, "only 2-D pooling on the vector unit"
        if tuple(n.attr("dilations", (1, 1))) != (1, 1) or n.attr("storage_order", 0):
            return HOST, "dilated pooling"
        if max(n.attr("pads", (0,)) or (0,)) > 255 or max(n.attr("kernel_shape")) > 255:
            return HOST, "window larger than the vector unit's fields"
    if n.op == Op.GLOBAL_AVGPOOL and len(n.shape) != 4:
        return HOST, "only 2-D pooling on the vector unit"
    return DEVICE, "vector unit"


def on_device(g: nx.DiGraph, name: str) -> bool:
    return place(g, name)[0] == DEVICE
