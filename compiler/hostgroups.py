# SPDX-License-Identifier: Apache-2.0
"""Host work in one piece: runs of host ops become one ONNX model and one ``HOST_CALL``.

Each round trip over the host link costs its latency twice, so the order the
compiler runs values in (:func:`run_order`) takes device work first whenever it
can, which gathers host ops into runs; each run of consecutive host ops is one
:class:`HostGroup`. The lowering and the golden interpreter both take the groups
from here, so the program and its graph run the same host models.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from npusim.compiler.errors import UnsupportedOpError
from npusim.compiler.ir import NON_TENSOR, Op, inputs_of, is_dynamic, node
from npusim.compiler.placement import HOST, place


@dataclass(frozen=True)
class HostGroup:
    """Consecutive host values, run as one model."""

    values: tuple[str, ...]
    """In run order."""
    inputs: tuple[str, ...]
    """Values computed outside the group that it reads (constants excluded)."""
    outputs: tuple[str, ...]
    """Values the rest of the program (or the user) reads."""

    @property
    def label(self) -> str:
        return "+".join(dict.fromkeys(self._ops))[:120]

    _ops: tuple[str, ...] = ()


def _on_host(g: nx.DiGraph, v: str) -> bool:
    n = node(g, v)
    return n.op not in (Op.INPUT, Op.CONST) and place(g, v)[0] == HOST


def run_order(g: nx.DiGraph, cost: Callable[[str], int] | None = None) -> list[str]:
    """A topological order that runs ready device work before ready host work (ties by
    name), so host ops bunch into few groups.

    With ``cost`` (a value's cycles from issue to its result being usable; for a
    matrix-vector unit, whose units run in order and wait on each result's whole round
    trip), ties go first to the longest chain of cycles still to come: work off the
    critical path, such as a recurrent layer's input products, is then issued just early
    enough for the step that needs it, not all at the start. An element-wise op that is
    the sole consumer of the op before it follows it at once, to ride along in its vector
    pass (and costs nothing on the path).
    """
    # an extra output goes right after its op; then device work; then host work
    rank = {v: 0 if node(g, v).op == Op.OUTPUT else 1 + _on_host(g, v) for v in g.nodes}
    height = dict.fromkeys(g.nodes, 0)
    if cost is not None:
        for v in reversed(list(nx.topological_sort(g))):
            own = 0 if any(_rides(g, u, v) for u in set(g.predecessors(v))) else cost(v)
            height[v] = own + max((height[w] for w in g.successors(v)), default=0)
    indeg = {v: g.in_degree(v) for v in g.nodes}
    ready = [(rank[v], -height[v], v) for v, d in indeg.items() if d == 0]
    heapq.heapify(ready)
    order = []
    nxt = None
    while ready or nxt:
        v, nxt = (nxt, None) if nxt else (heapq.heappop(ready)[-1], None)
        order.append(v)
        for w in sorted(set(g.successors(v))):
            indeg[w] -= g.number_of_edges(v, w)
            if indeg[w] == 0:
                if cost is not None and _rides(g, v, w):
                    nxt = w  # its sole consumer rides along in the same vector pass
                else:
                    heapq.heappush(ready, (rank[w], -height[w], w))
    return order


def _rides(g: nx.DiGraph, v: str, w: str) -> bool:
    """Whether ``w`` rides along in ``v``'s pass of the vector chain: ``w`` is ``v``'s sole
    consumer, an element-wise op, and both run on the device."""
    return (set(g.successors(v)) == {w} and not _on_host(g, v) and not _on_host(g, w)
            and node(g, w).op in (Op.ADD, Op.SUB, Op.MUL, Op.MAX, Op.RELU, Op.NPU_UNARY))


def host_groups(g: nx.DiGraph, order: list[str] | None = None) -> list[HostGroup]:
    """The host groups of ``g``, in run order."""
    order = order or run_order(g)
    runs: list[list[str]] = []
    prev = False
    for v in order:
        n = node(g, v)
        if n.op in (Op.INPUT, Op.CONST):
            continue
        here = _on_host(g, v)
        if here and prev:
            runs[-1].append(v)
        elif here:
            runs.append([v])
        prev = here
    outs = set(g.graph["outputs"])
    groups = []
    for run in runs:
        members = set(run)
        ins: list[str] = []
        for v in run:
            for s in inputs_of(g, v):
                if s not in members and node(g, s).op != Op.CONST and s not in ins:
                    ins.append(s)
        used = [v for v in run if v in outs or any(c not in members for c in g.successors(v))]
        ops = tuple(node(g, v).attr("onnx_op") or node(g, v).op.value for v in run
                    if node(g, v).op != Op.OUTPUT)
        groups.append(HostGroup(tuple(run), tuple(ins), tuple(used), ops))
    return groups


def single(g: nx.DiGraph, name: str) -> HostGroup:
    """Value ``name`` alone as a host group (constant folding runs ops one at a time)."""
    ins = [s for s in dict.fromkeys(inputs_of(g, name)) if node(g, s).op != Op.CONST]
    return HostGroup((name,), tuple(ins), (name,), (node(g, name).attr("onnx_op") or "",))


def _value_info(name: str, n) -> onnx.ValueInfoProto:
    if n.dtype == NON_TENSOR:
        return helper.make_empty_tensor_value_info(name)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(n.dtype))
    shape = None if is_dynamic(n) and -1 in n.shape else list(n.shape)
    if n.shape == (-1,):
        shape = None
    return helper.make_tensor_value_info(name, elem, shape)


def group_model(g: nx.DiGraph, grp: HostGroup) -> bytes:
    """The ONNX model of a host group: its inputs and outputs carry the values' names."""
    nodes, values, inits, seen = [], [], [], set()
    for v in grp.values:
        n = node(g, v)
        if n.op == Op.OUTPUT:
            continue
        if n.proto is None:
            raise UnsupportedOpError(f"unsupported op {n.op.value} (value '{v}'): it cannot run "
                                     "on the device and has no ONNX form for the host")
        proto = onnx.NodeProto()
        proto.ParseFromString(n.proto)
        srcs = inputs_of(g, v)
        explicit = srcs[:len(srcs) - n.attr("implicit", 0)]  # the rest: read by subgraphs
        slots = [s for s in proto.input]
        if sum(bool(s) for s in slots) == len(explicit):
            it = iter(explicit)
            renamed = [next(it) if s else "" for s in slots]
        else:  # a pass changed the inputs (a folded operand): plain positions
            renamed = list(explicit)
        del proto.input[:]
        proto.input.extend(renamed)
        names = n.attr("outputs") or (v,)
        outs = []
        for k, _ in enumerate(proto.output):
            want = v if k == 0 else (names[k] if k < len(names) else "")
            outs.append(want or f"{v}:unused{k}")
        del proto.output[:]
        proto.output.extend(outs)
        proto.name = n.origin[0] if n.origin else v  # onnxruntime's errors name it so
        nodes.append(proto)
        values.append(v)
        for s in srcs:
            c = node(g, s)
            if c.op == Op.CONST and s not in seen and isinstance(c.value, np.ndarray):
                inits.append(numpy_helper.from_array(np.asarray(c.value), s))
                seen.add(s)
    uses = Counter(p.name for p in nodes)
    for p, v in zip(nodes, values, strict=True):
        if uses[p.name] > 1:  # one ONNX node made several values: keep them apart
            p.name = v
    graph = helper.make_graph(nodes, "host", [_value_info(s, node(g, s)) for s in grp.inputs],
                              [_value_info(o, node(g, o)) for o in grp.outputs], inits)
    opsets = [helper.make_opsetid(d, v) for d, v in g.graph.get("opsets", [("", 17)])]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="npusim")
    model.ir_version = min(model.ir_version, 10)
    return model.SerializeToString()
