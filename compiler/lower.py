# SPDX-License-Identifier: Apache-2.0
"""Lowering and emission: the optimized graph -> instructions, memory plan, weight image.

DRAM holds three regions, each 64-byte aligned: the weight image (packed BFP, or
fp32 in fp32 mode), the constant image (fp32 biases and operands) and the
activation arena. Arena buffers are reused once their value is dead (first fit);
layout-only ops (Reshape, Flatten, Squeeze, ...) alias their input's buffer and
cost nothing. Ops placed on the host (:mod:`compiler.placement`) become
``HOST_CALL`` instructions with a one-node ONNX model each.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from compiler.errors import CompileError, UnsupportedOpError
from compiler.hostops import host_model
from compiler.interpret import clip_bounds, conv_geometry
from compiler.ir import Node, Op, inputs_of, node, topo_order
from compiler.options import CompileOptions
from compiler.pinning import pin_weights
from compiler.placement import (
    ALIAS_OPS,
    ALU_OPS,
    DEVICE,
    HOST,
    UNARY_OPS,
    broadcast_mode,
    place,
    softmax_rows,
)
from simulator import isa
from simulator.isa import PoolMode
from simulator.numerics import BfpTensor, pack
from simulator.program import HostOp, Program, TensorDesc, align


def _label(name: str, n: Node) -> str:
    return n.origin[0] if n.origin else name


class _Arena:
    """First-fit allocator of the activation arena."""

    def __init__(self) -> None:
        self.free: list[tuple[int, int]] = []
        self.top = 0

    def alloc(self, size: int) -> int:
        size = align(max(size, 1))
        for i, (off, length) in enumerate(self.free):
            if length >= size:
                self.free[i:i + 1] = [(off + size, length - size)] if length > size else []
                return off
        off, self.top = self.top, self.top + size
        return off

    def release(self, off: int, size: int) -> None:
        self.free.append((off, align(max(size, 1))))
        self.free.sort()
        merged: list[tuple[int, int]] = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


def _nbytes(n: Node) -> int:
    return int(np.prod(n.shape, dtype=np.int64)) * np.dtype(n.dtype).itemsize


def placement_report(g: nx.DiGraph) -> list[dict]:
    """One record per value the compiled graph computes: where it runs and why."""
    rows = []
    for v in topo_order(g):
        n = node(g, v)
        if n.op == Op.INPUT or (n.op == Op.CONST and not n.origin):
            continue
        where, why = place(g, v)
        residual = n.op in (Op.NPU_CONV, Op.NPU_DENSE) and len(inputs_of(g, v)) > 3
        op = n.attr("onnx_op") or op_label(n, residual)
        rows.append({"value": v, "op": op, "nodes": list(n.origin), "where": where, "why": why})
    return rows


def lower(g: nx.DiGraph, opts: CompileOptions, name: str = "model") -> Program:
    """Turn an optimized graph into a :class:`Program` for ``opts.device``."""
    order = topo_order(g)
    outputs = g.graph["outputs"]
    where = {v: place(g, v) for v in order}
    if opts.strict:
        for v in order:
            n = node(g, v)
            if where[v][0] == HOST and n.op != Op.INPUT:
                op = n.attr("onnx_op") or n.op.value
                raise UnsupportedOpError(f"unsupported op {op} (node '{_label(v, n)}') on the "
                                         f"device: {where[v][1]} (--strict)")
    device_users = {v for v in order if where[v][0] == DEVICE}

    # --- weight and constant images ---
    weights, consts = bytearray(), bytearray()
    weight_descs: list[TensorDesc] = []
    const_addr: dict[str, tuple[str, int]] = {}
    for v in order:
        if node(g, v).op not in (Op.NPU_CONV, Op.NPU_DENSE):
            continue
        wname = inputs_of(g, v)[1]
        if wname in const_addr:
            continue
        w = node(g, wname).value
        blob = pack(w) if isinstance(w, BfpTensor) else np.ascontiguousarray(
            w, np.float32).tobytes()
        const_addr[wname] = ("weights", len(weights))
        weight_descs.append(TensorDesc(wname, tuple(node(g, wname).shape),
                                       w.fmt.name if isinstance(w, BfpTensor) else "float32",
                                       len(weights), len(blob)))
        weights += blob + b"\0" * (align(len(blob)) - len(blob))
    for v in order:
        n = node(g, v)
        if n.op != Op.CONST or v in const_addr or not isinstance(n.value, np.ndarray):
            continue
        read_on_device = n.dtype == "float32" and any(
            u in device_users and node(g, u).op not in ALIAS_OPS for u in g.successors(v))
        if read_on_device or v in outputs:  # a constant model output is read back from here
            const_addr[v] = ("constants", len(consts))
            blob = np.ascontiguousarray(n.value).tobytes()
            consts += blob + b"\0" * (align(len(blob)) - len(blob))
    wbase, cbase = 0, align(len(weights))
    abase = cbase + align(len(consts))

    # --- activation arena: liveness, aliases, first-fit reuse ---
    root: dict[str, str] = {}
    for v in order:
        n = node(g, v)
        if n.op in ALIAS_OPS and where[v][0] == DEVICE:
            root[v] = root[inputs_of(g, v)[0]]
        elif n.op != Op.CONST:
            root[v] = v
    last_use: dict[str, int] = {}
    for i, v in enumerate(order):
        if v in root:
            last_use[root[v]] = max(last_use.get(root[v], i), i)
        for s in inputs_of(g, v):
            if s in root:
                last_use[root[s]] = i
    keep = {root[o] for o in outputs if o in root}
    arena, offset = _Arena(), {}
    for i, v in enumerate(order):
        if root.get(v) == v:
            offset[v] = arena.alloc(_nbytes(node(g, v)))
        for s in {root[s] for s in inputs_of(g, v) if s in root}:
            if last_use[s] == i and s not in keep:
                arena.release(offset[s], _nbytes(node(g, s)))

    def addr(v: str) -> int:
        if v in const_addr:
            region, off = const_addr[v]
            return (wbase if region == "weights" else cbase) + off
        return abase + offset[root[v]]

    def desc(v: str) -> TensorDesc:
        n = node(g, v)
        return TensorDesc(v, n.shape, n.dtype, addr(v), _nbytes(n))

    # --- instructions ---
    instrs: list[isa.Instruction] = []
    layers: list[dict] = []
    host_ops: list[HostOp] = []

    def emit(instr: isa.Instruction, v: str, op: str) -> None:
        instrs.append(instr)
        origin = list(node(g, v).origin) if v in g else []
        layers.append({"name": origin[0] if origin else v, "op": op, "tensor": v,
                       "nodes": origin})

    inputs = tuple(desc(v) for v in g.graph["inputs"])
    for i, t in enumerate(inputs):
        emit(isa.VRd(i, t.addr, t.nbytes), t.name, "HostToDevice")
    for v in order:
        n = node(g, v)
        if n.op in (Op.INPUT, Op.CONST) or (n.op in ALIAS_OPS and where[v][0] == DEVICE):
            continue
        srcs = inputs_of(g, v)
        if where[v][0] == HOST:
            model, fed = host_model(g, v)
            op = n.attr("onnx_op") or n.op.value
            host_ops.append(HostOp(v, op, model, tuple(desc(srcs[k]) for k in fed), desc(v)))
            emit(isa.HostCall(len(host_ops) - 1), v, f"Host:{op}")
            continue
        if n.op == Op.CONCAT:
            for instr in _concat(g, v, n, srcs, addr):
                emit(instr, v, "Concat")
            continue
        emit(_instruction(g, v, n, srcs, addr), v,
             op_label(n, n.op in (Op.NPU_CONV, Op.NPU_DENSE) and len(srcs) > 3))
    outs = tuple(desc(v) for v in outputs)
    for i, t in enumerate(outs):
        emit(isa.VWr(i, t.addr, t.nbytes), t.name, "DeviceToHost")
    instrs.append(isa.EndChain())
    instrs = pin_weights(instrs, weight_descs, opts.device, wbase)
    pinned_at = {i.weights for i in instrs if isinstance(i, isa.MvMul) and i.pinned}
    pinned = sum(t.nbytes for t in weight_descs if wbase + t.addr in pinned_at)
    layers.append({"name": "end", "op": "EndChain", "tensor": "", "nodes": []})
    mmap = {"weights": (wbase, len(weights)), "constants": (cbase, len(consts)),
            "activations": (abase, arena.top)}
    if abase + arena.top > opts.device.dram_mib * 2**20:
        raise CompileError(f"the program needs {abase + arena.top} bytes of device DRAM; "
                           f"{opts.device.name} has {opts.device.dram_mib} MiB")
    return Program(opts.device, tuple(instrs), bytes(weights), bytes(consts), inputs, outs,
                   tuple(weight_descs), tuple(layers), mmap,
                   {"model": name, "rounding": opts.rounding.value, "seed": opts.seed,
                    "pinned_weight_bytes": pinned,
                    "streamed_weight_bytes": sum(t.nbytes for t in weight_descs) - pinned,
                    "placement": placement_report(g)},
                   tuple(host_ops))


def _concat(g: nx.DiGraph, v: str, n: Node, srcs: list[str], addr) -> list[isa.Instruction]:
    """One strided copy per operand into its slice of the output."""
    axis = n.attr("axis")
    axis = axis + len(n.shape) if axis < 0 else axis
    rows = int(np.prod(n.shape[:axis], dtype=np.int64))
    dst_stride = int(np.prod(n.shape[axis:], dtype=np.int64))
    out, offset = [], 0
    for s in srcs:
        row_len = int(np.prod(node(g, s).shape[axis:], dtype=np.int64))
        out.append(isa.VCopy(addr(s), addr(v) + 4 * offset, rows, row_len, row_len, dst_stride))
        offset += row_len
    return out


def op_label(n: Node, residual: bool) -> str:
    base = {Op.NPU_CONV: "Conv", Op.NPU_DENSE: "Dense"}.get(n.op, n.op.value)
    return base + ("+Add" if residual else "") + ("+Relu" if n.attr("relu") else "")


def _instruction(g: nx.DiGraph, v: str, n: Node, srcs: list[str], addr):
    x = node(g, srcs[0])
    if n.op in (Op.NPU_CONV, Op.NPU_DENSE):
        res = len(srcs) > 3
        common = dict(src=addr(srcs[0]), dst=addr(v), weights=addr(srcs[1]), bias=addr(srcs[2]),
                      residual=addr(srcs[3]) if res else 0, relu=int(bool(n.attr("relu"))),
                      has_residual=int(res), pinned=0)
        if n.op == Op.NPU_DENSE:
            rows = int(np.prod(x.shape[:-1], dtype=np.int64))
            return isa.MvMul(**common, batch=rows, channels=x.shape[-1], height=1, width=1,
                             out_channels=n.shape[-1], groups=1, kernel_h=1, kernel_w=1,
                             stride_h=1, stride_w=1, pad_top=0, pad_left=0, pad_bottom=0,
                             pad_right=0, dilation_h=1, dilation_w=1)
        pads = n.attr("pads")
        return isa.MvMul(**common, batch=x.shape[0], channels=x.shape[1], height=x.shape[2],
                         width=x.shape[3], out_channels=n.shape[1], groups=n.attr("groups"),
                         kernel_h=n.attr("kernel")[0], kernel_w=n.attr("kernel")[1],
                         stride_h=n.attr("strides")[0], stride_w=n.attr("strides")[1],
                         pad_top=pads[0], pad_left=pads[1], pad_bottom=pads[2],
                         pad_right=pads[3], dilation_h=n.attr("dilations")[0],
                         dilation_w=n.attr("dilations")[1])
    length = int(np.prod(n.shape, dtype=np.int64))
    if n.op == Op.ADD and all(node(g, s).shape == n.shape for s in srcs):
        return isa.VvAdd(addr(srcs[0]), addr(srcs[1]), addr(v), length, int(bool(n.attr("relu"))))
    if n.op in ALU_OPS:
        b = node(g, srcs[1])
        mode = broadcast_mode(x.shape, b.shape, n.shape)
        channels = n.shape[1] if mode == "channel" else 1
        plane = int(np.prod(n.shape[2:], dtype=np.int64)) if mode == "channel" else 1
        return isa.VvAlu(addr(srcs[0]), addr(srcs[1]), addr(v), length,
                         isa.AluOp[n.op.name], isa.Broadcast[mode.upper()], channels, plane)
    if n.op == Op.RELU:
        return isa.VRelu(addr(srcs[0]), addr(v), length)
    if n.op in UNARY_OPS:
        alpha, beta = 0.0, 0.0
        if n.op == Op.LEAKY_RELU:
            alpha = n.attr("alpha", 0.01)
        elif n.op == Op.CLIP:
            alpha, beta = clip_bounds(n, [node(g, s).value for s in srcs[1:]])
        bits = lambda f: int(np.float32(f).view(np.uint32))  # noqa: E731
        return isa.VUnary(addr(srcs[0]), addr(v), length, isa.UnaryFn[n.op.name], bits(alpha),
                          bits(beta))
    if n.op == Op.SOFTMAX:
        rows, cols = softmax_rows(n)
        return isa.VSoftmax(addr(srcs[0]), addr(v), rows, cols)
    b, c, h, w = x.shape
    if n.op in (Op.GLOBAL_AVGPOOL, Op.GLOBAL_MAXPOOL):
        mode = PoolMode.GLOBAL_AVG if n.op == Op.GLOBAL_AVGPOOL else PoolMode.GLOBAL_MAX
        return isa.VPool(addr(srcs[0]), addr(v), mode, b, c, h, w, h, w, 1, 1,
                         0, 0, 0, 0, 0, 0)
    geom = conv_geometry(n, x.shape, tuple(n.attr("kernel_shape")))
    mode = PoolMode.MAX if n.op == Op.MAXPOOL else PoolMode.AVG
    return isa.VPool(addr(srcs[0]), addr(v), mode, b, c, h, w, *geom.kernel, *geom.strides,
                     *geom.pads, int(n.attr("ceil_mode", 0)), int(n.attr("count_include_pad", 0)))
