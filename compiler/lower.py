# SPDX-License-Identifier: Apache-2.0
"""Lowering and emission: the optimized graph -> instructions, memory plan, weight image.

DRAM holds three regions, each 64-byte aligned: the weight image (packed BFP, or
fp32 in fp32 mode), the constant image (fp32 biases and operands) and the
activation arena. Arena buffers are reused once their value is dead (first fit);
layout-only ops (Reshape, Flatten, Squeeze, ...) alias their input's buffer and
cost nothing. Runs of ops placed on the host (:mod:`npusim.compiler.placement`) become
one ``HOST_CALL`` each (:mod:`npusim.compiler.hostgroups`); a host value that no device op
reads stays in host memory and never crosses the link.
"""

from __future__ import annotations

import math

import networkx as nx
import numpy as np

from npusim.compiler.errors import CompileError, UnsupportedOpError
from npusim.compiler.hostgroups import group_model, host_groups, run_order
from npusim.compiler.ir import NON_TENSOR, Node, Op, inputs_of, node, topo_order
from npusim.compiler.options import CompileOptions
from npusim.compiler.pinning import pin_weights
from npusim.compiler.placement import ALIAS_OPS, DEVICE, HOST, place
from npusim.compiler.select import instructions, op_label
from npusim.simulator import isa
from npusim.simulator.host import HostOpError, host_kernel
from npusim.simulator.mvu import round_trip
from npusim.simulator.numerics import BfpTensor, pack
from npusim.simulator.program import HostOp, Program, ProgramError, TensorDesc, align
from npusim.simulator.program_schema import NUMERIC_DTYPES


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


def _window(g: nx.DiGraph, v: str, n: Node) -> bool:
    """A move that reads one contiguous range of its input (a slice of leading rows, for
    example) and keeps its type: the consumers read the input in place, so it costs
    nothing (like the layout-only ops)."""
    if n.op != Op.NPU_MOVE or node(g, inputs_of(g, v)[0]).dtype != n.dtype:
        return False
    used = [(d, s) for d, s in zip(n.attr("dims"), n.attr("strides"), strict=True) if d > 1]
    return not used or used == [(math.prod(n.shape), 1)]


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


def _check_strict(g: nx.DiGraph, order: list[str], where: dict) -> None:
    for v in order:
        n = node(g, v)
        if where[v][0] == HOST and n.op != Op.INPUT:
            op = n.attr("onnx_op") or n.op.value
            raise UnsupportedOpError(f"unsupported op {op} (node '{_label(v, n)}') on the "
                                     f"device: {where[v][1]} (--strict)")


def _check_fields(instrs: list[isa.Instruction], layers: list[dict],
                  opts: CompileOptions) -> None:
    """Every instruction encodes for the target (else the program could not be saved)."""
    widths = isa.FieldWidths.for_device(opts.device)
    for instr, layer in zip(instrs, layers, strict=False):
        try:
            instr.encode(widths)
        except isa.EncodingError as exc:
            raise CompileError(f"node '{layer['name']}' ({layer['op']}) does not fit the "
                               f"device's instruction fields: {exc}") from None


def _host_model(g: nx.DiGraph, grp) -> bytes:
    """A host group's model, loaded once by onnxruntime: one it refuses is refused here,
    naming its nodes, rather than when the program runs."""
    model = group_model(g, grp)
    try:
        host_kernel(model)  # cached: the simulator in this process reuses the session
    except HostOpError as exc:
        raise CompileError(str(exc)) from None
    return model


def _mvu_cost(g: nx.DiGraph, opts: CompileOptions):
    """Each device value's round trip on a matrix-vector unit, from its instructions as the
    timing model prices them alone (:func:`npusim.simulator.mvu.round_trip`)."""
    def cost(v: str) -> int:
        n = node(g, v)
        if n.op in (Op.INPUT, Op.CONST, Op.OUTPUT) or n.op in ALIAS_OPS \
                or place(g, v)[0] != DEVICE:
            return 0
        return sum(round_trip(i, opts.device) for i in instructions(g, v, lambda _: 0))
    return cost


def lower(g: nx.DiGraph, opts: CompileOptions, name: str = "model") -> Program:
    """Turn an optimized graph into a :class:`Program` for ``opts.device``."""
    order = run_order(g, _mvu_cost(g, opts) if opts.device.mvu else None)
    outputs = g.graph["outputs"]
    where = {v: place(g, v) for v in order}
    if opts.strict:
        _check_strict(g, order, where)
    groups = host_groups(g, order)
    group_of = {v: grp for grp in groups for v in grp.values}
    device_users = {v for v in order if where[v][0] == DEVICE}
    # a host value no device op reads stays in host memory (its shape may depend on data)
    on_host = {v for v in group_of
               if not any(u in device_users for u in g.successors(v))}

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
        read_on_device = n.dtype in ("float32", "int32") and any(
            u in device_users and node(g, u).op not in ALIAS_OPS for u in g.successors(v))
        if read_on_device or v in outputs:  # a constant model output is read back from here
            const_addr[v] = ("constants", len(consts))
            blob = np.ascontiguousarray(n.value).tobytes()
            consts += blob + b"\0" * (align(len(blob)) - len(blob))
    wbase, cbase = 0, align(len(weights))
    abase = cbase + align(len(consts))

    # --- activation arena: liveness, aliases, first-fit reuse ---
    root: dict[str, str] = {}
    shift: dict[str, int] = {}  # a window's byte offset in its root's buffer
    for v in order:
        n = node(g, v)
        if n.op in ALIAS_OPS and where[v][0] == DEVICE:
            root[v] = root[inputs_of(g, v)[0]]
            shift[v] = shift.get(inputs_of(g, v)[0], 0)
        elif _window(g, v, n) and where[v][0] == DEVICE and inputs_of(g, v)[0] in root:
            src = inputs_of(g, v)[0]
            root[v] = root[src]
            shift[v] = shift.get(src, 0) + n.attr("offset") * np.dtype(n.dtype).itemsize
        elif n.op != Op.CONST and v not in on_host \
                and (v not in group_of or v in group_of[v].outputs):
            root[v] = v
    last_use: dict[str, int] = {}
    for i, v in enumerate(order):
        if v in root:
            last_use[root[v]] = max(last_use.get(root[v], i), i)
        for s in inputs_of(g, v):
            if s in root:
                last_use[root[s]] = i
    for grp in groups:  # a group reads its inputs when its first value runs
        i = order.index(grp.values[-1])
        for s in grp.inputs:
            if s in root:
                last_use[root[s]] = max(last_use[root[s]], i)
    keep = {root[o] for o in outputs if o in root}
    arena, offset = _Arena(), {}
    for v in g.graph["inputs"]:  # every input arrives (V_RD) before the first instruction
        offset[v] = arena.alloc(_nbytes(node(g, v)))
    for i, v in enumerate(order):
        if root.get(v) == v and v not in offset:
            offset[v] = arena.alloc(_nbytes(node(g, v)))
        for s in {root[s] for s in inputs_of(g, v) if s in root}:
            if last_use[s] == i and s not in keep:
                arena.release(offset[s], _nbytes(node(g, s)))
    if abase + arena.top > opts.device.dram_mib * 2**20:
        raise CompileError(f"the program needs {abase + arena.top} bytes of device DRAM; "
                           f"{opts.device.name} has {opts.device.dram_mib} MiB")

    def addr(v: str) -> int:
        if v in const_addr:
            region, off = const_addr[v]
            return (wbase if region == "weights" else cbase) + off
        return abase + offset[root[v]] + shift.get(v, 0)

    def desc(v: str) -> TensorDesc:
        n = node(g, v)
        if n.dtype not in NUMERIC_DTYPES and n.dtype != NON_TENSOR:
            raise CompileError(f"value '{v}' (node '{_label(v, n)}') has type {n.dtype}, "
                               "which a program cannot pass between the host and the device")
        if v in on_host:
            return TensorDesc(v, n.shape, n.dtype, 0, 0)
        return TensorDesc(v, n.shape, n.dtype, addr(v), _nbytes(n))

    # --- instructions ---
    instrs: list[isa.Instruction] = []
    layers: list[dict] = []
    host_ops: list[HostOp] = []

    def emit(instr: isa.Instruction, v: str, op: str, nodes: list[str] | None = None) -> None:
        instrs.append(instr)
        origin = nodes if nodes is not None else (list(node(g, v).origin) if v in g else [])
        layers.append({"name": origin[0] if origin else v, "op": op, "tensor": v,
                       "nodes": origin})

    inputs = tuple(desc(v) for v in g.graph["inputs"])
    for i, t in enumerate(inputs):
        emit(isa.VRd(i, t.addr, t.nbytes), t.name, "HostToDevice")
    for v in order:
        n = node(g, v)
        if n.op in (Op.INPUT, Op.CONST) or (v in root and root[v] != v):
            continue
        if v in group_of:
            grp = group_of[v]
            if v != grp.values[0]:
                continue
            ins, outs = tuple(desc(s) for s in grp.inputs), tuple(desc(o) for o in grp.outputs)
            held = tuple(t.name for t in ins + outs if t.name in on_host)
            host_ops.append(HostOp(v, grp.label, _host_model(g, grp), ins, outs, held))
            nodes = list(dict.fromkeys(o for u in grp.values for o in node(g, u).origin))
            emit(isa.HostCall(len(host_ops) - 1), v, f"Host:{grp.label}", nodes)
            continue
        residual = n.op in (Op.NPU_CONV, Op.NPU_DENSE) and len(inputs_of(g, v)) > 3
        for instr in instructions(g, v, addr):
            emit(instr, v, op_label(n, residual))
    outs = tuple(desc(v) for v in outputs)
    for i, t in enumerate(outs):
        if t.name not in on_host:
            emit(isa.VWr(i, t.addr, t.nbytes), t.name, "DeviceToHost")
    instrs.append(isa.EndChain())
    _check_fields(instrs, layers, opts)
    instrs = pin_weights(instrs, weight_descs, opts.device, wbase)
    pinned_at = {i.weights for i in instrs if isinstance(i, isa.MvMul) and i.pinned}
    pinned = sum(t.nbytes for t in weight_descs if wbase + t.addr in pinned_at)
    layers.append({"name": "end", "op": "EndChain", "tensor": "", "nodes": []})
    mmap = {"weights": (wbase, len(weights)), "constants": (cbase, len(consts)),
            "activations": (abase, arena.top)}
    program = Program(opts.device, tuple(instrs), bytes(weights), bytes(consts), inputs, outs,
                      tuple(weight_descs), tuple(layers), mmap,
                      {"model": name, "rounding": opts.rounding.value, "seed": opts.seed,
                       "pinned_weight_bytes": pinned,
                       "streamed_weight_bytes": sum(t.nbytes for t in weight_descs) - pinned,
                       "placement": placement_report(g)},
                      tuple(host_ops))
    try:  # what a device checks when it loads the program: fail here, not there
        program.check("compiled program")
    except ProgramError as exc:
        raise CompileError(str(exc)) from None
    return program
