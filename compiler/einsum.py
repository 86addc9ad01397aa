# SPDX-License-Identifier: Apache-2.0
"""A two-operand Einsum as the matrix unit's batched product (``NpuMatMul``).

Exporters write attention as Einsum too (torchvision's MaxViT: ``BGHID,BGHJD->BGHIJ``).
Every index of ``a op b -> out`` is a batch index (in both operands and the output),
a row index (``a`` and the output), a column index (``b`` and the output) or a
reduced one (both operands, not the output). The operands are copied into
``[batch, rows, reduced]`` and ``[batch, reduced, columns]`` order where they are not
in it already (strided ``V_MOVE``s), multiplied, and the product copied into the
output's order. An index summed away within one operand, a repeated index (a
diagonal) or an ellipsis has no such form; the Einsum then runs on the host.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from npusim.compiler.ir import Node, Op, add_node, make_attrs, node
from npusim.compiler.passes import rewire
from npusim.compiler.vector_forms import NoForm, _move, strides_of


def _parse(equation: str) -> tuple[str, str, str] | None:
    eq = equation.replace(" ", "")
    if "..." in eq or "->" not in eq:
        return None
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != 2 or any(len(set(t)) != len(t) for t in (*terms, out)):
        return None
    return terms[0], terms[1], out


def _size(dims) -> int:
    return int(np.prod(dims, dtype=np.int64))


def _permuted(g: nx.DiGraph, src: str, term: str, order: str, name: str,
              shape: tuple[int, ...]) -> str:
    """``src`` (indices ``term``) laid out in index order ``order`` with ``shape``."""
    if term == order:
        return src
    st = strides_of(node(g, src).shape)
    perm = [term.index(c) for c in order]
    dims = [node(g, src).shape[p] for p in perm]
    add_node(g, name, _move(Node(Op.TRANSPOSE, shape, "float32", origin=node(g, src).origin),
                            "Transpose", 0, dims, [st[p] for p in perm]), [src])
    return name


def einsum_as_matmul(g: nx.DiGraph, name: str, n: Node, srcs: list[str]) -> bool:
    """Rewrite Einsum ``name`` as moves around an ``NpuMatMul``; False if it has no form."""
    eq = n.attr("equation")
    parsed = _parse(eq) if isinstance(eq, str) and len(srcs) == 2 else None
    if parsed is None or any(node(g, s).dtype != "float32" for s in srcs) \
            or n.dtype != "float32" or -1 in n.shape:
        return False
    a, b, out = parsed
    dim = {}
    for term, s in ((a, srcs[0]), (b, srcs[1])):
        shape = node(g, s).shape
        if len(shape) != len(term):
            return False
        for c, d in zip(term, shape, strict=True):
            if dim.setdefault(c, d) != d:
                return False  # a broadcast index: left to the host
    batch = "".join(c for c in out if c in a and c in b)
    rows = "".join(c for c in out if c in a and c not in b)
    cols = "".join(c for c in out if c in b and c not in a)
    red = "".join(c for c in a if c in b and c not in out)
    if set(a) != set(batch + rows + red) or set(b) != set(batch + red + cols) \
            or set(out) != set(batch + rows + cols):
        return False
    nb, m, k, cols_n = (_size([dim[c] for c in x]) for x in (batch, rows, red, cols))
    try:
        lhs = _permuted(g, srcs[0], a, batch + rows + red, f"{name}.a", (nb, m, k))
        rhs = _permuted(g, srcs[1], b, batch + red + cols, f"{name}.b", (nb, k, cols_n))
        order = batch + rows + cols
        attrs = make_attrs(batch=nb, m=m, k=k, n=cols_n, b_shared=False, relu=False)
        if order == out:
            new = Node(Op.NPU_MATMUL, n.shape, n.dtype, attrs, origin=n.origin, proto=n.proto)
            rewire(g, name, new, [lhs, rhs])
            return True
        prod = f"{name}.product"
        add_node(g, prod, Node(Op.NPU_MATMUL, tuple(dim[c] for c in order), n.dtype, attrs,
                               origin=n.origin), [lhs, rhs])
        st = strides_of(tuple(dim[c] for c in order))
        move = _move(n, "Einsum", 0, n.shape, [st[order.index(c)] for c in out])
    except NoForm:
        return False
    rewire(g, name, move, [prod])
    return True
