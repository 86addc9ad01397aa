# SPDX-License-Identifier: Apache-2.0
"""Golden evaluation of an IR graph with the device's numerics.

Every op the device runs is computed by :mod:`npusim.simulator.kernels` (hence by
:mod:`npusim.simulator.numerics`); every other op runs on the host exactly as the program
runs it (the same one-node onnxruntime model). So evaluating the compiled graph
gives bit for bit what the simulated device gives for the compiled program.
Constant folding uses it too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import numpy as np

from npusim.compiler.errors import UnsupportedOpError
from npusim.compiler.hostgroups import group_model, host_groups, run_order, single
from npusim.compiler.ir import Node, Op, inputs_of, node
from npusim.compiler.placement import on_device, softmax_rows
from npusim.simulator import kernels
from npusim.simulator.host import host_kernel
from npusim.simulator.kernels import ConvGeometry
from npusim.simulator.numerics import FP32, BfpTensor, Format, Rounding
from npusim.simulator.progress import task


@dataclass(frozen=True)
class Numerics:
    """How the matrix unit rounds: the format, the rounding mode and its seed."""

    fmt: Format = FP32
    rounding: Rounding = Rounding.NEAREST_EVEN
    seed: int = 0


def conv_geometry(n: Node, in_shape: tuple[int, ...], kernel: tuple[int, int]) -> ConvGeometry:
    """Resolve ONNX Conv/pool attributes (auto_pad included) to explicit geometry."""
    strides = tuple(n.attr("strides", (1, 1)))
    dil = tuple(n.attr("dilations", (1, 1)))
    pads = tuple(n.attr("pads", (0, 0, 0, 0)))
    auto = n.attr("auto_pad", "NOTSET")
    if len(kernel) != 2 or len(in_shape) != 4:
        raise UnsupportedOpError(f"unsupported {n.op.value} on a {len(in_shape)}-D tensor "
                                 f"(node '{n.origin[0] if n.origin else '?'}'): only 2-D")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        full = []
        for i in range(2):
            out = -(-in_shape[2 + i] // strides[i])
            eff = (kernel[i] - 1) * dil[i] + 1
            full.append(max((out - 1) * strides[i] + eff - in_shape[2 + i], 0))
        lo = [p // 2 if auto == "SAME_UPPER" else p - p // 2 for p in full]
        pads = (lo[0], lo[1], full[0] - lo[0], full[1] - lo[1])
    elif auto == "VALID":
        pads = (0, 0, 0, 0)
    return ConvGeometry(tuple(kernel), strides, pads, dil, int(n.attr("group", 1)))


def conv_weight_rows(w: np.ndarray) -> np.ndarray:
    """ONNX ``[O, C/g, KH, KW]`` -> the matrix unit's ``[O, KH*KW*C/g]`` (channel fastest)."""
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1).reshape(w.shape[0], -1))


def _pool(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    x = args[0]
    geom = conv_geometry(n, x.shape, tuple(n.attr("kernel_shape")))
    ceil = bool(n.attr("ceil_mode", 0))
    if n.op == Op.MAXPOOL:
        return kernels.maxpool(x, geom, ceil)
    return kernels.avgpool(x, geom, ceil, bool(n.attr("count_include_pad", 0)))


def _reshape(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    return args[0].reshape(n.shape)


def _softmax(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    rows, cols = softmax_rows(n)
    return kernels.softmax(args[0].reshape(rows, cols), -1).reshape(n.shape)


def layer_format(n: Node, weight, ctx: Numerics) -> Format:
    """The format a matrix-unit layer multiplies in: its weights' once they are quantized,
    fp32 for a layer marked so, else the evaluation's."""
    if isinstance(weight, BfpTensor):
        return weight.fmt
    return FP32 if n.attr("format") == "fp32" else ctx.fmt


def _npu_conv(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    geom = ConvGeometry(n.attr("kernel"), n.attr("strides"), n.attr("pads"),
                        n.attr("dilations"), n.attr("groups"),
                        tuple(n.attr("input_dilation", (1, 1))))
    res = args[3] if len(args) > 3 else None
    return kernels.conv2d(args[0], args[1], args[2], geom, layer_format(n, args[1], ctx), res,
                          n.attr("relu"), ctx.rounding, ctx.seed, n.attr("clip"))


def _npu_dense(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    res = args[3] if len(args) > 3 else None
    return kernels.dense(args[0], args[1], args[2], layer_format(n, args[1], ctx), res,
                         n.attr("relu"), ctx.rounding, ctx.seed, n.attr("clip"))


def _const_of_shape(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    value = n.attr("value")
    fill = np.asarray(value).reshape(-1)[0] if value is not None else np.float32(0)
    return np.full(tuple(int(d) for d in args[0]), fill, dtype=np.asarray(fill).dtype)


def _add(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    out = args[0]
    for a in args[1:]:
        out = kernels.alu("add", out, a)
    return kernels.relu(out) if n.attr("relu") else out


def clip_bounds(n: Node, consts: list) -> tuple[float, float]:
    """Clip's bounds: attributes before opset 11, optional constant inputs after."""
    lo = n.attr("min", -np.inf) if not consts else consts[0]
    hi = n.attr("max", np.inf) if len(consts) < 2 else consts[1]
    lo = -np.inf if lo is None else float(np.asarray(lo))
    hi = np.inf if hi is None else float(np.asarray(hi))
    return lo, hi


def _concat(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    return np.concatenate(args, axis=n.attr("axis"))


LAYOUT_OPS: dict[Op, Callable[[Node, list, Numerics], np.ndarray]] = {
    Op.IDENTITY: lambda n, a, c: a[0],
    Op.DROPOUT: lambda n, a, c: a[0],
    Op.RESHAPE: _reshape,
    Op.FLATTEN: _reshape,
    Op.SQUEEZE: _reshape,
    Op.UNSQUEEZE: _reshape,
}
"""Ops that only relabel their input's data."""

def _reduce(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    x3 = args[0].reshape(n.attr("outer"), n.attr("mid"), n.attr("inner"))
    return kernels.reduce(x3, n.attr("mode")).reshape(n.shape)


def _norm(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    x2 = args[0].reshape(n.attr("rows"), n.attr("cols"))
    return kernels.norm(x2, args[1], args[2], n.attr("epsilon"),
                        n.attr("channels")).reshape(n.shape)


def _resize(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    b, c, h, w = args[0].shape
    y = kernels.resize(args[0].reshape(b * c, h, w), n.shape[2:], n.attr("mode"),
                       n.attr("coord"), n.attr("nearest"), n.attr("scales"))
    return y.reshape(n.shape)


def _pad(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    x3 = args[0].reshape(n.attr("outer"), n.attr("height"), n.attr("width"))
    return kernels.pad2d(x3, n.attr("pads"), n.attr("mode"), n.attr("value")).reshape(n.shape)


def _gather(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    x3 = args[0].reshape(n.attr("outer"), n.attr("axis_len"), n.attr("inner"))
    return kernels.gather(x3, args[1]).reshape(n.shape)


def _move(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    flat = np.ascontiguousarray(args[0], np.float32).reshape(-1)
    return kernels.move(flat, n.attr("offset"), n.attr("dims"),
                        n.attr("strides")).reshape(n.shape)


def _npu_matmul(n: Node, args: list, ctx: Numerics) -> np.ndarray:
    a = args[0].reshape(n.attr("batch"), n.attr("m"), n.attr("k"))
    b = args[1].reshape(-1, n.attr("k"), n.attr("n"))
    return kernels.matmul_act(a, b, ctx.fmt, ctx.rounding, ctx.seed).reshape(n.shape)


def _alu(op: str):
    return lambda n, a, c: kernels.alu(op, a[0], a[1])


DEVICE_OPS: dict[Op, Callable[[Node, list, Numerics], np.ndarray]] = {
    Op.SUB: _alu("sub"), Op.MUL: _alu("mul"), Op.DIV: _alu("div"), Op.MAX: _alu("max"),
    Op.MIN: _alu("min"), Op.POW: _alu("pow"),
    Op.NPU_UNARY: lambda n, a, c: kernels.unary(n.attr("fn"), a[0], n.attr("alpha"),
                                                n.attr("beta")),
    Op.NPU_MATMUL: _npu_matmul,
    Op.NPU_REDUCE: _reduce,
    Op.NPU_NORM: _norm,
    Op.NPU_RESIZE: _resize,
    Op.NPU_PAD: _pad,
    Op.NPU_GATHER: _gather,
    Op.NPU_MOVE: _move,
    Op.CONCAT: _concat,
    Op.GLOBAL_MAXPOOL: lambda n, a, c: kernels.global_maxpool(a[0]),
    **LAYOUT_OPS,
    Op.RELU: lambda n, a, c: kernels.relu(a[0]),
    Op.ADD: _add,
    Op.MAXPOOL: _pool,
    Op.AVGPOOL: _pool,
    Op.GLOBAL_AVGPOOL: lambda n, a, c: kernels.global_avgpool(a[0]),
    Op.SOFTMAX: _softmax,
    Op.NPU_CONV: _npu_conv,
    Op.NPU_DENSE: _npu_dense,
}
"""Golden kernels of the ops the device runs (see :mod:`npusim.compiler.placement`)."""

FOLD_OPS: dict[Op, Callable[[Node, list, Numerics], np.ndarray]] = {
    Op.CONSTANT_OF_SHAPE: _const_of_shape,
    **LAYOUT_OPS,
}
"""Cheap numpy versions used by constant folding; anything else folds via the host."""


def evaluate_node(g: nx.DiGraph, name: str, values: dict,
                  ctx: Numerics = Numerics(), folding: bool = False) -> np.ndarray:
    """One value: a device op with the golden kernels, any other op on the host."""
    n = node(g, name)
    args = [values[i] for i in inputs_of(g, name)]
    if folding and n.op in FOLD_OPS:
        return np.asarray(FOLD_OPS[n.op](n, args, ctx)).astype(n.dtype, copy=False)
    if n.op in DEVICE_OPS and on_device(g, name):
        return DEVICE_OPS[n.op](n, args, ctx)
    grp = single(g, name)
    return host_kernel(group_model(g, grp)).run([values[i] for i in grp.inputs])[0]


def evaluate(g: nx.DiGraph, inputs: dict[str, np.ndarray], ctx: Numerics = Numerics(),
             keep_all: bool = False) -> dict:
    """Evaluate ``g`` on ``inputs`` with the matrix unit's numerics ``ctx``.

    Host ops run in the same groups, as the same models, as the program runs them.
    Returns the graph outputs (or, with ``keep_all``, every value by name).
    """
    order = run_order(g)
    first = {}
    for grp in host_groups(g, order):
        first[grp.values[0]] = grp
    in_group = {v for grp in first.values() for v in grp.values}
    values: dict[str, np.ndarray] = {}
    with task(f"evaluate ({ctx.fmt.name})", total=len(order), unit="node") as progress:
        for name in order:
            n = node(g, name)
            if n.op == Op.INPUT:
                values[name] = np.asarray(inputs[name], dtype=n.dtype)
            elif n.op == Op.CONST:
                values[name] = n.value
            elif name in first:
                grp = first[name]
                got = host_kernel(group_model(g, grp)).run([values[i] for i in grp.inputs])
                values.update(zip(grp.outputs, got, strict=True))
            elif name not in in_group:
                values[name] = evaluate_node(g, name, values, ctx)
            progress.update()
    if keep_all:
        return values
    return {o: values[o] for o in g.graph["outputs"]}
