# SPDX-License-Identifier: Apache-2.0
"""A readable text form of an IR graph, one value per line, in topological order."""

from __future__ import annotations

import networkx as nx
import numpy as np

from npusim.compiler.ir import Op, inputs_of, node, topo_order
from npusim.simulator.numerics import BfpTensor


def _attr_text(value) -> str:
    if isinstance(value, np.ndarray):
        return f"array{list(value.shape)}"
    return repr(value)


def dump_graph(g: nx.DiGraph) -> str:
    """``name: shape = Op(inputs) {attrs}``; constants show only their shape and type."""
    lines = [f"graph {g.graph.get('name', 'model')}  inputs={g.graph['inputs']}  "
             f"outputs={g.graph['outputs']}"]
    for name in topo_order(g):
        n = node(g, name)
        if n.op == Op.CONST:
            kind = n.value.fmt.name if isinstance(n.value, BfpTensor) else n.dtype
            lines.append(f"{name}: {list(n.shape)} = Const<{kind}>")
            continue
        attrs = ", ".join(f"{k}={_attr_text(v)}" for k, v in n.attrs)
        args = ", ".join(inputs_of(g, name))
        lines.append(f"{name}: {list(n.shape)} = {n.op.value}({args})"
                     + (f" {{{attrs}}}" if attrs else ""))
    return "\n".join(lines) + "\n"
