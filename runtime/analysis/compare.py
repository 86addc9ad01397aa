# SPDX-License-Identifier: Apache-2.0
"""Where the numbers diverge: every layer of a model in fp32 and in a block format.

Both compiled graphs are evaluated with the golden model (which the simulator
matches bit for bit), keeping every intermediate value, and each layer of the
format run is compared with the same layer of the fp32 run.

Example:
    >>> rows = compare_layers("resnet50.onnx", "msfp8")    # doctest: +SKIP
    >>> worst = max(rows, key=lambda r: r["rel_error"])     # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from npusim.compiler import compile_full
from npusim.compiler.interpret import Numerics, evaluate
from npusim.compiler.ir import Op, inputs_of, node, topo_order
from npusim.compiler.select import op_label


def default_inputs(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal inputs for every true model input."""
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
        feeds[vi.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


def compare_layers(model: str | Path | onnx.ModelProto, numerics: str,
                   feeds: dict[str, np.ndarray] | None = None, device=None) -> list[dict]:
    """Per layer: relative L2 error, cosine similarity and max abs error against fp32."""
    if not isinstance(model, onnx.ModelProto):
        from npusim.compiler.frontend import load_onnx

        model = load_onnx(model)
    feeds = feeds if feeds is not None else default_inputs(model)
    ref = compile_full(model, device, "fp32")
    test = compile_full(model, device, numerics)
    ref_vals = evaluate(ref.graph, feeds, Numerics(ref.options.format), keep_all=True)
    test_vals = evaluate(test.graph, feeds, Numerics(test.options.format, test.options.rounding,
                                                     test.options.seed), keep_all=True)
    rows = []
    for v in topo_order(test.graph):
        n = node(test.graph, v)
        if n.op in (Op.INPUT, Op.CONST) or v not in ref_vals:
            continue
        a = np.asarray(ref_vals[v], np.float64).ravel()
        b = np.asarray(test_vals[v], np.float64).ravel()
        if a.size == 0 or not np.issubdtype(np.asarray(ref_vals[v]).dtype, np.floating):
            continue
        diff = b - a
        norm_a, norm_b = np.linalg.norm(a), np.linalg.norm(b)
        rows.append({
            "layer": n.origin[0] if n.origin else v,
            "op": n.attr("onnx_op") or op_label(n, n.op in (Op.NPU_CONV, Op.NPU_DENSE)
                                                and len(inputs_of(test.graph, v)) > 3),
            "rel_error": float(np.linalg.norm(diff) / norm_a) if norm_a else float("nan"),
            "cosine": float(a @ b / (norm_a * norm_b)) if norm_a and norm_b else float("nan"),
            "max_abs_error": float(np.abs(diff).max()),
        })
    return rows


def format_rows(rows: list[dict]) -> str:
    width = min(max([len(r["layer"]) for r in rows] + [5]), 40)
    wop = max([len(r["op"]) for r in rows] + [2])
    out = [f"{'layer':<{width}}  {'op':<{wop}}  {'rel. L2 err':>11}  {'cosine':>9}  "
           f"{'max abs err':>11}"]
    for r in rows:
        out.append(f"{r['layer'][:width]:<{width}}  {r['op']:<{wop}}  {r['rel_error']:>11.3e}  "
                   f"{r['cosine']:>9.6f}  {r['max_abs_error']:>11.3e}")
    return "\n".join(out)
