# SPDX-License-Identifier: Apache-2.0
"""Instruction selection: the one instruction (or few) that computes a device value.

``addr(v)`` gives the DRAM byte address of value ``v``; the memory plan is
:mod:`npusim.compiler.lower`'s.
"""

from __future__ import annotations

from collections.abc import Callable

import networkx as nx
import numpy as np

from npusim.compiler.interpret import conv_geometry
from npusim.compiler.ir import Node, Op, inputs_of, node
from npusim.compiler.placement import ALU_OPS, alu_form, softmax_rows
from npusim.simulator import isa
from npusim.simulator.isa import PoolMode, f32_bits, to_u32

Addr = Callable[[str], int]


def op_label(n: Node, residual: bool) -> str:
    """The op name the per-layer tables show (``Conv+Add+Relu``, ``HardSwish``, ...)."""
    base = {Op.NPU_CONV: "Conv", Op.NPU_DENSE: "Dense", Op.NPU_MATMUL: "MatMul"}.get(
        n.op, n.attr("label") or n.op.value)
    if n.op == Op.NPU_CONV and tuple(n.attr("input_dilation", (1, 1))) != (1, 1):
        base = "ConvTranspose"
    return (base + ("+Add" if residual else "") + ("+Relu" if n.attr("relu") else "")
            + ("+Clip" if n.attr("clip") else ""))


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def concat(g: nx.DiGraph, v: str, n: Node, srcs: list[str], addr: Addr) -> list[isa.Instruction]:
    """One strided copy per operand into its slice of the output."""
    axis = n.attr("axis")
    axis = axis + len(n.shape) if axis < 0 else axis
    rows = _size(n.shape[:axis])
    dst_stride = _size(n.shape[axis:])
    out, offset = [], 0
    for s in srcs:
        row_len = _size(node(g, s).shape[axis:])
        out.append(isa.VCopy(addr(s), addr(v) + 4 * offset, rows, row_len, row_len, dst_stride))
        offset += row_len
    return out


def _matrix(g: nx.DiGraph, v: str, n: Node, srcs: list[str], addr: Addr) -> isa.MvMul:
    x = node(g, srcs[0])
    res = len(srcs) > 3
    clip = n.attr("clip")
    common = dict(src=addr(srcs[0]), dst=addr(v), weights=addr(srcs[1]), bias=addr(srcs[2]),
                  residual=addr(srcs[3]) if res else 0, relu=int(bool(n.attr("relu"))),
                  has_residual=int(res), pinned=0, clip=int(clip is not None),
                  clip_lo=isa.f32_bits(clip[0]) if clip else 0,
                  clip_hi=isa.f32_bits(clip[1]) if clip else 0)
    if n.op == Op.NPU_DENSE:
        return isa.MvMul(**common, batch=_size(x.shape[:-1]), channels=x.shape[-1], height=1,
                         width=1, out_channels=n.shape[-1], groups=1, kernel_h=1, kernel_w=1,
                         stride_h=1, stride_w=1, pad_top=0, pad_left=0, pad_bottom=0,
                         pad_right=0, dilation_h=1, dilation_w=1, in_dil_h=1, in_dil_w=1)
    pads = n.attr("pads")
    kh, kw = n.attr("kernel")
    idil = n.attr("input_dilation", (1, 1))
    return isa.MvMul(**common, batch=x.shape[0], channels=x.shape[1], height=x.shape[2],
                     width=x.shape[3], out_channels=n.shape[1], groups=n.attr("groups"),
                     kernel_h=kh, kernel_w=kw, stride_h=n.attr("strides")[0],
                     stride_w=n.attr("strides")[1], pad_top=pads[0], pad_left=pads[1],
                     pad_bottom=pads[2], pad_right=pads[3], dilation_h=n.attr("dilations")[0],
                     dilation_w=n.attr("dilations")[1], in_dil_h=idil[0], in_dil_w=idil[1])


def _vector_form(g: nx.DiGraph, v: str, n: Node, srcs: list[str], addr: Addr):
    src, dst = addr(srcs[0]), addr(v)
    x = node(g, srcs[0])
    if n.op == Op.NPU_UNARY:
        return isa.VUnary(src, dst, _size(n.shape), isa.UnaryFn[n.attr("fn").upper()],
                          f32_bits(n.attr("alpha")), f32_bits(n.attr("beta")))
    if n.op == Op.NPU_REDUCE:
        return isa.VReduce(src, dst, n.attr("outer"), n.attr("mid"), n.attr("inner"),
                           isa.ReduceMode[n.attr("mode").upper()])
    if n.op == Op.NPU_NORM:
        return isa.VNorm(src, dst, addr(srcs[1]), addr(srcs[2]), n.attr("rows"), n.attr("cols"),
                         n.attr("channels"), f32_bits(n.attr("epsilon")))
    if n.op == Op.NPU_RESIZE:
        b, c, h, w = x.shape
        sh, sw = n.attr("scales")
        return isa.VResize(src, dst, b * c, h, w, n.shape[2], n.shape[3],
                           isa.ResizeMode[n.attr("mode").upper()],
                           isa.CoordMode[n.attr("coord").upper()],
                           isa.NearestMode[n.attr("nearest").upper()], f32_bits(sh), f32_bits(sw))
    if n.op == Op.NPU_MOVE:
        dims = (1,) * (6 - len(n.attr("dims"))) + tuple(n.attr("dims"))
        strides = (0,) * (6 - len(n.attr("strides"))) + tuple(n.attr("strides"))
        return isa.VMove(src + 4 * n.attr("offset"), dst, *dims, *(to_u32(s) for s in strides))
    if n.op == Op.NPU_PAD:
        top, left, bottom, right = n.attr("pads")
        return isa.VPad(src, dst, n.attr("outer"), n.attr("height"), n.attr("width"), top, left,
                        bottom, right, isa.PadMode[n.attr("mode").upper()],
                        f32_bits(n.attr("value")))
    if n.op == Op.NPU_GATHER:
        count = node(g, srcs[1]).value.size
        return isa.VGather(src, dst, addr(srcs[1]), n.attr("outer"), count, n.attr("axis_len"),
                           n.attr("inner"))
    raise AssertionError(f"no vector form for {n.op}")


def instructions(g: nx.DiGraph, v: str, addr: Addr) -> list[isa.Instruction]:
    """The instructions that compute device value ``v``."""
    n = node(g, v)
    srcs = inputs_of(g, v)
    if n.op in (Op.NPU_CONV, Op.NPU_DENSE):
        return [_matrix(g, v, n, srcs, addr)]
    if n.op == Op.NPU_MATMUL:
        return [isa.MmMul(addr(srcs[0]), addr(srcs[1]), addr(v), n.attr("batch"), n.attr("m"),
                          n.attr("k"), n.attr("n"), int(bool(n.attr("b_shared"))))]
    if n.op == Op.CONCAT:
        return concat(g, v, n, srcs, addr)
    if n.op.value.startswith("Npu"):
        return [_vector_form(g, v, n, srcs, addr)]
    x = node(g, srcs[0])
    length = _size(n.shape)
    if n.op == Op.ADD and all(node(g, s).shape == n.shape for s in srcs):
        return [isa.VvAdd(addr(srcs[0]), addr(srcs[1]), addr(v), length,
                          int(bool(n.attr("relu"))))]
    if n.op in ALU_OPS:
        rev, div, mod = alu_form(x.shape, node(g, srcs[1]).shape, n.shape)
        full, spread = (srcs[1], srcs[0]) if rev else (srcs[0], srcs[1])
        return [isa.VvAlu(addr(full), addr(spread), addr(v), length, isa.AluOp[n.op.name],
                          int(rev), div, mod)]
    if n.op == Op.RELU:
        return [isa.VRelu(addr(srcs[0]), addr(v), length)]
    if n.op == Op.SOFTMAX:
        rows, cols = softmax_rows(n)
        return [isa.VSoftmax(addr(srcs[0]), addr(v), rows, cols)]
    b, c, h, w = x.shape
    if n.op in (Op.GLOBAL_AVGPOOL, Op.GLOBAL_MAXPOOL):
        mode = PoolMode.GLOBAL_AVG if n.op == Op.GLOBAL_AVGPOOL else PoolMode.GLOBAL_MAX
        return [isa.VPool(addr(srcs[0]), addr(v), mode, b, c, h, w, h, w, 1, 1,
                          0, 0, 0, 0, 0, 0)]
    geom = conv_geometry(n, x.shape, tuple(n.attr("kernel_shape")))
    mode = PoolMode.MAX if n.op == Op.MAXPOOL else PoolMode.AVG
    return [isa.VPool(addr(srcs[0]), addr(v), mode, b, c, h, w, *geom.kernel, *geom.strides,
                      *geom.pads, int(n.attr("ceil_mode", 0)),
                      int(n.attr("count_include_pad", 0)))]
