# SPDX-License-Identifier: Apache-2.0
"""Transformer graphs as torch's exporter writes them: multi-head self-attention with the
head split and merge computed from ``Shape``, both products of activations on the matrix
unit. Registered with the corpus in ``tests/compiler/test_exporter_graphs.py``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from exporter_graphs import ExporterGraph, _const, _model, _node, _rand


def _heads(src: str, tag: str, heads: int) -> list:
    """[B, N, D] -> [B, heads, N, D/heads]: Shape/Gather/Concat -> Reshape -> Transpose."""
    return [_node("Shape", [src], f"{tag}_shape"),
            _const(f"{tag}_i0", 0), _const(f"{tag}_i1", 1),
            _node("Gather", [f"{tag}_shape", f"{tag}_i0"], f"{tag}_b", axis=0),
            _node("Gather", [f"{tag}_shape", f"{tag}_i1"], f"{tag}_n", axis=0),
            _node("Unsqueeze", [f"{tag}_b", "axes0"], f"{tag}_bu"),
            _node("Unsqueeze", [f"{tag}_n", "axes0"], f"{tag}_nu"),
            _const(f"{tag}_hd", [heads, -1]),
            _node("Concat", [f"{tag}_bu", f"{tag}_nu", f"{tag}_hd"], f"{tag}_target", axis=0),
            _node("Reshape", [src, f"{tag}_target"], f"{tag}_split"),
            _node("Transpose", [f"{tag}_split"], f"{tag}_heads", perm=[0, 2, 1, 3])]


def self_attention(heads: int = 4, tokens: int = 10, dim: int = 32,
                   seed: int = 0) -> ExporterGraph:
    """Two inputs (tokens and a residual), LayerNorm, q/k/v projections, scaled
    Q.K^T, Softmax, scores.V, merge heads, output projection, residual Add."""
    rng = np.random.default_rng(seed)
    w = {f"w{p}": _rand(rng, dim, dim, scale=dim ** -0.5) for p in "qkvo"}
    w |= {"ln_s": rng.uniform(0.5, 1.5, dim).astype(np.float32), "ln_b": _rand(rng, dim),
          "scale": np.array(np.sqrt(dim // heads), np.float32)}
    nodes = [_const("axes0", [0]),
             _node("LayerNormalization", ["x", "ln_s", "ln_b"], "ln", axis=-1)]
    for p in "qkv":
        nodes.append(_node("MatMul", ["ln", f"w{p}"], p))
        nodes += _heads(p, f"{p}h", heads)
    nodes += [_node("Transpose", ["kh_heads"], "kt", perm=[0, 1, 3, 2]),
              _node("MatMul", ["qh_heads", "kt"], "scores"),
              _node("Div", ["scores", "scale"], "scaled"),
              _node("Softmax", ["scaled"], "attn", axis=-1),
              _node("MatMul", ["attn", "vh_heads"], "ctx"),
              _node("Transpose", ["ctx"], "ctx_t", perm=[0, 2, 1, 3]),
              _const("merged_shape", [1, tokens, dim]),
              _node("Reshape", ["ctx_t", "merged_shape"], "merged"),
              _node("MatMul", ["merged", "wo"], "proj"),
              _node("Add", ["proj", "skip"], "y")]
    model = _model(nodes, {"x": [1, tokens, dim], "skip": [1, tokens, dim]},
                   {"y": [1, tokens, dim]}, w)
    feeds = {"x": _rand(rng, 1, tokens, dim), "skip": _rand(rng, 1, tokens, dim)}
    folded = {f"{p}h_{s}" for p in "qkv" for s in ("shape", "i0", "i1", "b", "n", "bu", "nu",
                                                     "hd", "target")}
    return ExporterGraph(model, feeds, folded=frozenset(folded | {"axes0", "merged_shape"}))


def einsum_window_attention(seed: int = 0) -> ExporterGraph:
    """MaxViT's window attention as torch exports it: Einsum products over
    [batch, grid, heads, tokens, dim], after a Pad by zero (Swin V2 pads its windows even
    where they fit exactly)."""
    rng = np.random.default_rng(seed)
    shape = [1, 2, 2, 6, 8]
    nodes = [_node("Pad", ["q", "no_pads"], "q_padded"),
             _node("Einsum", ["q_padded", "k"], "scores",
                   equation="B G H I D, B G H J D -> B G H I J"),
             _node("Softmax", ["scores"], "attn", axis=-1),
             _node("Einsum", ["attn", "v"], "y", equation="B G H I J, B G H J D -> B G H I D")]
    model = _model(nodes, {p: shape for p in "qkv"}, {"y": shape},
                   {"no_pads": np.zeros(10, np.int64)})
    return ExporterGraph(model, {p: _rand(rng, *shape) for p in "qkv"})


BUILDERS: dict[str, Callable[[], ExporterGraph]] = {
    "self_attention": self_attention,
    "einsum_window_attention": einsum_window_attention,
}
