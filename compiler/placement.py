# SPDX-License-Identifier: Apache-2.0
"""Where each op runs: on the device when the datapath can do it, on the host otherwise.

One function decides, and the lowering, the golden interpreter and the compile
report all ask it, so they never disagree.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from npusim.compiler.ir import NON_TENSOR, Node, Op, inputs_of, is_dynamic, node

ALIAS_OPS = (Op.RESHAPE, Op.FLATTEN, Op.IDENTITY, Op.DROPOUT, Op.SQUEEZE, Op.UNSQUEEZE)
MATRIX_OPS = (Op.NPU_CONV, Op.NPU_DENSE, Op.NPU_MATMUL)
ALU_OPS = (Op.ADD, Op.SUB, Op.MUL, Op.DIV, Op.MAX, Op.MIN, Op.POW)
VECTOR_FORMS = (Op.NPU_UNARY, Op.NPU_REDUCE, Op.NPU_NORM, Op.NPU_RESIZE, Op.NPU_MOVE,
                Op.NPU_GATHER, Op.NPU_PAD)
"""Made by :mod:`npusim.compiler.vector_forms` only where the vector unit can run them."""
VECTOR_OPS = (Op.RELU, Op.MAXPOOL, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.GLOBAL_MAXPOOL, Op.SOFTMAX,
              Op.CONCAT) + ALU_OPS + VECTOR_FORMS


def _spread(small: tuple[int, ...], out: tuple[int, ...]) -> tuple[int, int] | None:
    """``(div, mod)`` such that element ``i`` of ``out`` reads ``small[(i // div) % mod]``,
    if ``small`` broadcasts to ``out`` that way (its non-unit axes one contiguous run)."""
    if len(small) > len(out):
        return None
    padded = (1,) * (len(out) - len(small)) + tuple(small)
    if any(d != 1 and d != o for d, o in zip(padded, out, strict=True)):
        return None
    full = [i for i, d in enumerate(padded) if d != 1]
    if not full:
        return 1, 1
    lo, hi = full[0], full[-1] + 1
    if any(padded[i] != out[i] for i in range(lo, hi)):
        return None
    return int(np.prod(out[hi:], dtype=np.int64)), int(np.prod(out[lo:hi], dtype=np.int64))


def alu_form(a_shape: tuple[int, ...], b_shape: tuple[int, ...],
             out: tuple[int, ...]) -> tuple[bool, int, int] | None:
    """How ``VV_ALU`` runs ``a op b``: ``(swapped, div, mod)`` or ``None``.

    The full-size operand streams as ``src0`` and the other is read as
    ``src1[(i // div) % mod]``; ``swapped`` says the full-size one is ``b`` (the
    instruction's ``rev`` flag then keeps ``a op b``).
    """
    if tuple(a_shape) == tuple(out):
        spread = _spread(b_shape, out)
        if spread is not None:
            return (False, *spread)
    if tuple(b_shape) == tuple(out):
        spread = _spread(a_shape, out)
        if spread is not None:
            return (True, *spread)
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
    if n.attr("host_pin"):
        return HOST, n.attr("host_pin")
    if n.attr("data_dependent"):
        return HOST, f"shape depends on data: {n.attr('data_dependent')}"
    if is_dynamic(n) or any(is_dynamic(s) for s in srcs):
        return HOST, "shape depends on data" if n.dtype != NON_TENSOR else "not a tensor"
    if 0 in n.shape or any(0 in s.shape for s in srcs if s.op != Op.CONST):
        return HOST, "an empty tensor"
    if n.op == Op.OUTPUT:
        op = node(g, inputs_of(g, name)[0]).attr("onnx_op")
        return HOST, f"output {n.attr('index')} of a host op ({op})"
    if n.op in MATRIX_OPS or n.op in VECTOR_FORMS:
        return DEVICE, "matrix unit" if n.op in MATRIX_OPS else "vector unit"
    if n.attr("why_host"):
        return HOST, n.attr("why_host")
    if n.op in ALIAS_OPS:
        if n.op == Op.DROPOUT and not is_identity(g, name):
            return HOST, "training-mode Dropout"
        if srcs and srcs[0].dtype == n.dtype:
            return DEVICE, "layout only: aliases its input's buffer"
        return HOST, "changes the data type"
    if n.op == Op.ONNX:
        if n.attr("outputs"):
            return HOST, "an op with several outputs: the host runs it whole"
        return HOST, "no device kernel for this op"
    if n.op == Op.CAST:
        return HOST, "changes the data type"
    if n.op in (Op.CONV, Op.GEMM, Op.MATMUL, Op.BATCHNORM, Op.CONV_TRANSPOSE):
        return HOST, "weights are not constants" if n.op != Op.BATCHNORM else "not foldable"
    if n.op not in VECTOR_OPS:
        return HOST, "no device kernel for this op"
    if any(s.dtype != "float32" for s in srcs) or n.dtype != "float32":
        return HOST, "not float32 data"
    if n.op in ALU_OPS:
        if len(srcs) != 2 or alu_form(srcs[0].shape, srcs[1].shape, n.shape) is None:
            return HOST, "both operands broadcast: done on the host"
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
