# SPDX-License-Identifier: Apache-2.0
"""The graph IR: a networkx MultiDiGraph with one typed, frozen node per value.

A graph node is keyed by the name of the tensor it produces and carries a
:class:`Node` under the ``"node"`` attribute; an edge ``u -> v`` with attribute
``index=i`` says that ``u`` is input ``i`` of ``v`` (a multigraph, since one value
may feed several inputs of the same node, as in ``Add(x, x)``). Graph-level attributes:
``inputs`` (names of the model inputs, in order), ``outputs`` (names of the model
outputs, in order) and ``name``. Passes never mutate a :class:`Node`; they make a
new one and :func:`set_node` it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import networkx as nx
import numpy as np

from npusim.compiler.errors import CompileError
from npusim.simulator.program_schema import HOST_ONLY_DTYPE


class Op(StrEnum):
    """Every op kind the IR knows."""

    # graph boundary and constants
    INPUT = "Input"
    CONST = "Const"
    # foldable generators and layout-only ops (no device work)
    CONSTANT_OF_SHAPE = "ConstantOfShape"
    IDENTITY = "Identity"
    DROPOUT = "Dropout"
    RESHAPE = "Reshape"
    FLATTEN = "Flatten"
    # matrix unit: reductions over the native dimension
    CONV = "Conv"
    GEMM = "Gemm"
    MATMUL = "MatMul"
    BATCHNORM = "BatchNormalization"
    # vector unit: element-wise and windowed ops
    RELU = "Relu"
    LEAKY_RELU = "LeakyRelu"
    SIGMOID = "Sigmoid"
    TANH = "Tanh"
    CLIP = "Clip"
    ADD = "Add"
    SUB = "Sub"
    MUL = "Mul"
    DIV = "Div"
    SUM = "Sum"
    CONCAT = "Concat"
    GLOBAL_MAXPOOL = "GlobalMaxPool"
    MAXPOOL = "MaxPool"
    AVGPOOL = "AveragePool"
    GLOBAL_AVGPOOL = "GlobalAveragePool"
    SOFTMAX = "Softmax"
    MAX = "Max"
    MIN = "Min"
    POW = "Pow"
    # vector unit: element-wise functions of one operand (canonicalized to NpuUnary)
    HARD_SIGMOID = "HardSigmoid"
    HARD_SWISH = "HardSwish"
    EXP = "Exp"
    LOG = "Log"
    SQRT = "Sqrt"
    RECIPROCAL = "Reciprocal"
    NEG = "Neg"
    ABS = "Abs"
    ERF = "Erf"
    GELU = "Gelu"
    ELU = "Elu"
    SOFTPLUS = "Softplus"
    SELU = "Selu"
    SOFTSIGN = "Softsign"
    FLOOR = "Floor"
    CEIL = "Ceil"
    ROUND = "Round"
    SIGN = "Sign"
    # vector unit: reductions and normalizations (canonicalized to NpuReduce / NpuNorm)
    REDUCE_MEAN = "ReduceMean"
    REDUCE_SUM = "ReduceSum"
    REDUCE_MAX = "ReduceMax"
    REDUCE_MIN = "ReduceMin"
    REDUCE_SUM_SQUARE = "ReduceSumSquare"
    REDUCE_L2 = "ReduceL2"
    LAYERNORM = "LayerNormalization"
    INSTANCENORM = "InstanceNormalization"
    # vector unit: resampling and data movement (canonicalized to NpuResize / NpuMove / ...)
    RESIZE = "Resize"
    UPSAMPLE = "Upsample"
    TRANSPOSE = "Transpose"
    SLICE = "Slice"
    GATHER = "Gather"
    EXPAND = "Expand"
    PAD = "Pad"
    DEPTH_TO_SPACE = "DepthToSpace"
    SPACE_TO_DEPTH = "SpaceToDepth"
    CAST = "Cast"
    # matrix unit, transposed
    CONV_TRANSPOSE = "ConvTranspose"
    # alias-only layout ops (no data movement)
    SQUEEZE = "Squeeze"
    UNSQUEEZE = "Unsqueeze"
    # any other ONNX op: placed on the host and run by onnxruntime
    ONNX = "OnnxOp"
    OUTPUT = "Output"
    """output ``index`` of the multi-output host op that feeds it (TopK's indices, ...)"""
    # device compound ops, made by the passes: one matrix-unit pass with its epilogue
    NPU_CONV = "NpuConv"
    """inputs: x, weight [O, KH*KW*C/groups], bias [O], (residual); attrs: geometry, relu"""
    NPU_DENSE = "NpuDense"
    """inputs: x [..., K], weight [O, K], bias [O], (residual); attrs: relu"""
    NPU_MATMUL = "NpuMatMul"
    """inputs: a [batch, M, K], b [batch or 1, K, N], both activations; attrs: batch, m,
    k, n, b_shared (b is quantized on the fly as the stationary operand)"""
    # device compound ops of the vector unit, made by canonicalization
    NPU_UNARY = "NpuUnary"
    """inputs: x; attrs: fn (a ``UnaryFn`` name), alpha, beta, label (the ONNX op)"""
    NPU_REDUCE = "NpuReduce"
    """inputs: x viewed as [outer, mid, inner]; attrs: mode, outer, mid, inner, label"""
    NPU_NORM = "NpuNorm"
    """inputs: x as [rows, cols], scale, bias; attrs: rows, cols, channels, epsilon, label"""
    NPU_RESIZE = "NpuResize"
    """inputs: x as [planes, H, W]; attrs: mode, coord, nearest, scales, label"""
    NPU_MOVE = "NpuMove"
    """inputs: x; attrs: offset, dims, strides (elements of x's flat data), label"""
    NPU_GATHER = "NpuGather"
    """inputs: x as [outer, axis_len, inner], table (int32); attrs: outer, axis_len, inner"""
    NPU_PAD = "NpuPad"
    """inputs: x as [outer, H, W]; attrs: pads (top, left, bottom, right), mode, value"""


DEVICE_KINDS = (Op.NPU_CONV, Op.NPU_DENSE, Op.NPU_MATMUL, Op.NPU_UNARY, Op.NPU_REDUCE, Op.NPU_NORM,
                Op.NPU_RESIZE, Op.NPU_MOVE, Op.NPU_GATHER, Op.NPU_PAD)
ONNX_OPS = {op.value: op for op in Op
            if op not in (Op.INPUT, Op.CONST, Op.ONNX, Op.OUTPUT) + DEVICE_KINDS}


@dataclass(frozen=True, eq=False)
class Node:
    """One value of the graph: the op that makes it, its attributes, shape and dtype.

    ``attrs`` is a sorted tuple of ``(name, value)`` pairs; ``value`` holds the
    array of a ``Const`` (a float32 ndarray, or a ``BfpTensor`` once quantized).
    ``origin`` names the ONNX nodes this node stands for after fusion.
    """

    op: Op
    shape: tuple[int, ...]
    dtype: str = "float32"
    attrs: tuple[tuple[str, Any], ...] = ()
    value: Any = None
    origin: tuple[str, ...] = field(default=())
    proto: bytes | None = None
    """The serialized ONNX NodeProto this value came from (op type, domain, attributes),
    kept so that the host can run the op with onnxruntime."""

    def attr(self, name: str, default: Any = None) -> Any:
        for key, val in self.attrs:
            if key == name:
                return val
        return default

    def with_attrs(self, **changes: Any) -> Node:
        merged = dict(self.attrs)
        merged.update(changes)
        return Node(self.op, self.shape, self.dtype, tuple(sorted(merged.items())),
                    self.value, self.origin, self.proto)


def make_attrs(**kwargs: Any) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted(kwargs.items()))


NON_TENSOR = HOST_ONLY_DTYPE
"""The dtype of a value that is a sequence or a map, not a tensor (the host keeps it)."""


def is_dynamic(n: Node) -> bool:
    """Whether a value's shape depends on tensor values (a ``-1`` dimension), or its type is
    not a tensor; such values live on the host."""
    return any(d < 0 for d in n.shape) or n.dtype == NON_TENSOR or bool(n.attr("data_dependent"))


class IRError(CompileError):
    """An IR that breaks an invariant (a :class:`CompileError`: a malformed model can cause
    it, and the CLI reports it on one line)."""


def node(g: nx.DiGraph, name: str) -> Node:
    return g.nodes[name]["node"]


def set_node(g: nx.DiGraph, name: str, n: Node) -> None:
    g.nodes[name]["node"] = n


def add_node(g: nx.DiGraph, name: str, n: Node, inputs: list[str] | tuple[str, ...] = ()) -> None:
    g.add_node(name, node=n)
    for i, src in enumerate(inputs):
        g.add_edge(src, name, index=i)


def inputs_of(g: nx.DiGraph, name: str) -> list[str]:
    """The producers of ``name``'s inputs, in input order."""
    preds = sorted(g.in_edges(name, data="index"), key=lambda e: e[2])
    return [src for src, _, _ in preds]


def set_inputs(g: nx.DiGraph, name: str, inputs: list[str]) -> None:
    """Replace every input edge of ``name``."""
    g.remove_edges_from(list(g.in_edges(name, keys=True)))
    for i, src in enumerate(inputs):
        g.add_edge(src, name, index=i)


def consumers(g: nx.DiGraph, name: str) -> list[str]:
    return sorted(set(g.successors(name)))


def const_value(g: nx.DiGraph, name: str) -> np.ndarray | None:
    n = node(g, name)
    return n.value if n.op == Op.CONST else None


def replace_uses(g: nx.DiGraph, old: str, new: str) -> None:
    """Make every consumer of ``old`` (and the graph outputs) use ``new`` instead."""
    for _, dst, key, idx in list(g.out_edges(old, keys=True, data="index")):
        g.remove_edge(old, dst, key)
        g.add_edge(new, dst, index=idx)
    g.graph["outputs"] = [new if o == old else o for o in g.graph["outputs"]]


def remove_dead(g: nx.DiGraph) -> None:
    """Drop every node that no graph output depends on."""
    live = set(g.graph["outputs"])
    for out in g.graph["outputs"]:
        live |= nx.ancestors(g, out)
    live |= set(g.graph["inputs"])
    g.remove_nodes_from([n for n in list(g.nodes) if n not in live])


def topo_order(g: nx.DiGraph) -> list[str]:
    """A deterministic topological order (ties broken by name)."""
    return list(nx.lexicographical_topological_sort(g))


def verify(g: nx.DiGraph) -> None:
    """Check the IR's invariants; raise :class:`IRError` naming the first broken one."""
    if not nx.is_directed_acyclic_graph(g):
        raise IRError("graph has a cycle")
    for name in g.graph["inputs"] + g.graph["outputs"]:
        if name not in g:
            raise IRError(f"graph boundary value '{name}' is not in the graph")
    for name, data in g.nodes(data=True):
        n = data.get("node")
        if not isinstance(n, Node):
            raise IRError(f"value '{name}' carries no Node")
        if any(not isinstance(d, int) or d < -1 for d in n.shape):
            raise IRError(f"value '{name}' has an unknown or bad shape {n.shape}")
        idx = sorted(i for _, _, i in g.in_edges(name, data="index"))
        if idx != list(range(len(idx))):
            raise IRError(f"value '{name}' has input indices {idx}, expected 0..{len(idx) - 1}")
        if n.op in (Op.INPUT, Op.CONST) and idx:
            raise IRError(f"{n.op.value} '{name}' has inputs")
        if n.op == Op.CONST and n.value is None:
            raise IRError(f"constant '{name}' has no value")
