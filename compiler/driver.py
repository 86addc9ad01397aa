# SPDX-License-Identifier: Apache-2.0
"""The compiler's entry point: ONNX model -> passes -> lowering -> :class:`Program`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import networkx as nx
import numpy as np
import onnx

from npusim.compiler.errors import CompileError
from npusim.compiler.frontend import to_graph
from npusim.compiler.ir import NON_TENSOR, Op, inputs_of, node, topo_order
from npusim.compiler.lower import lower
from npusim.compiler.options import CompileOptions
from npusim.compiler.pipeline import PIPELINE, run_passes
from npusim.compiler.placement import HOST, place
from npusim.simulator import isa
from npusim.simulator.config import DeviceConfig
from npusim.simulator.numerics import Rounding
from npusim.simulator.program import Program
from npusim.simulator.progress import task
from npusim.simulator.schedule import program_work


@dataclass(frozen=True, eq=False)
class Compiled:
    """A program with the optimized graph it was lowered from (for golden evaluation)."""

    program: Program
    graph: nx.DiGraph
    options: CompileOptions


def _model_name(model) -> str:
    if isinstance(model, (str, Path)):
        return Path(model).stem
    if isinstance(model, onnx.ModelProto):
        return model.graph.name or "model"
    return "model"


def compile_full(model: str | Path | onnx.ModelProto | bytes,
                 device: str | Path | DeviceConfig | None = None, numerics: str | None = None,
                 rounding: Rounding | str = Rounding.NEAREST_EVEN, seed: int = 0,
                 strict: bool = False,
                 input_shapes: dict[str, tuple[int, ...]] | None = None,
                 layer_formats: dict[str, str] | None = None) -> Compiled:
    """Like :func:`compile_model`, also returning the optimized graph."""
    opts = CompileOptions.make(device, numerics, rounding, seed, strict, layer_formats)
    with task("compile", total=len(PIPELINE) + 2, unit="step") as progress:
        progress.note("load")
        source = to_graph(model, input_shapes, per_step=opts.device.mvu is not None)
        check_sizes(source, opts)
        progress.update()
        graph = run_passes(source, opts, progress=progress)
        progress.note("lower")
        program = lower(graph, opts, _model_name(model))
        progress.update()
    program.metadata["placement"] = node_report(source, program.metadata["placement"])
    program.metadata["summary"] = summary(program, graph)
    return Compiled(program, graph, opts)


def check_sizes(g: nx.DiGraph, opts: CompileOptions) -> None:
    """Refuse a value larger than the target's DRAM, on the device or on the host: the
    program moves its values over the host link, and a model must not make the host
    allocate what no device it targets could hold."""
    dram = opts.device.dram_mib * 2**20
    for v in g.nodes:
        n = node(g, v)
        if min(n.shape, default=0) < 0 or n.dtype == NON_TENSOR:
            continue
        size = math.prod(n.shape) * np.dtype(n.dtype).itemsize
        if size > dram:
            where = f" (node '{n.origin[0]}')" if n.origin else ""
            raise CompileError(f"value '{v}'{where} of shape {list(n.shape)} needs {size} "
                               f"bytes, more than the {opts.device.dram_mib} MiB of DRAM of "
                               f"{opts.device.name}")


def _host_macs(g: nx.DiGraph, v: str) -> int:
    """Multiply-adds of a matrix op left on the host (0 for anything else)."""
    n = node(g, v)
    op = n.attr("onnx_op") or n.op.value
    srcs = [node(g, s) for s in inputs_of(g, v)]
    if len(srcs) < 2 or -1 in n.shape or any(-1 in s.shape for s in srcs[:2]):
        return 0
    out = int(np.prod(n.shape, dtype=np.int64))
    a, b = srcs[0].shape, srcs[1].shape
    if op == "Conv" and len(b) > 2:
        return out * int(np.prod(b[1:], dtype=np.int64))
    if op == "ConvTranspose" and len(b) > 2:
        return int(np.prod(a, dtype=np.int64)) * int(np.prod(b[1:], dtype=np.int64))
    if op == "MatMul" and a:
        return out * a[-1]
    if op == "Gemm" and len(a) == 2:
        return out * (a[0] if n.attr("transA", 0) else a[1])
    return 0


def summary(program: Program, graph: nx.DiGraph) -> dict:
    """Where the work went: nodes and MACs on the device, host calls, host-link bytes."""
    rows = program.metadata["placement"]
    works = program_work(program, program.target)
    device_macs = sum(w.macs for w in works)
    host_macs = sum(_host_macs(graph, v) for v in graph.nodes
                    if place(graph, v)[0] == HOST)
    counts = {w: sum(r["where"] == w for r in rows) for w in ("device", "host")}
    return {"nodes": len(rows), "device_nodes": counts["device"],
            "host_nodes": counts["host"], "macs": device_macs + host_macs,
            "device_macs": device_macs,
            "host_calls": sum(isinstance(i, isa.HostCall) for i in program.instructions),
            "host_link_bytes": sum(w.host_bytes for w in works),
            "host_call_bytes": sum(w.host_bytes for w, i in zip(works, program.instructions,
                                                                strict=True)
                                   if isinstance(i, isa.HostCall))}


def summary_line(s: dict) -> str:
    """The compile report's last line."""
    pct = 100.0 * s["device_macs"] / s["macs"] if s["macs"] else 100.0
    ran = s["device_nodes"] + s["host_nodes"]
    macs = s["macs"]
    amount = f"{macs / 1e9:,.2f} G" if macs >= 1e9 else f"{macs / 1e6:,.1f} M" \
        if macs >= 1e6 else f"{macs:,} "
    return (f"device: {s['device_nodes']} of {ran} nodes, {pct:.1f}% of "
            f"{amount}MACs; {s['host_calls']} host call"
            f"{'s' if s['host_calls'] != 1 else ''}, {s['host_link_bytes']:,} host-link bytes "
            "per run")


def node_report(source: nx.DiGraph, values: list[dict]) -> list[dict]:
    """Where every ONNX node of the model ended up: one row per node, in model order.

    ``values`` is the lowering's per-value placement; a node that no value covers
    was removed (an Identity, an inference Dropout, or dead code).
    """
    by_node = {}
    for row in values:
        for i, name in enumerate(row["nodes"]):
            fused = f"fused into {row['nodes'][0]} ({row['op']}); " if i else ""
            by_node.setdefault(name, {**row, "why": fused + row["why"]})
    rows = [{"node": label, "op": op, "where": "constant",
             "why": "shape arithmetic or constants, folded at compile time"}
            for label, op in source.graph.get("folded", [])]
    seen = {r["node"] for r in rows}
    for v in topo_order(source):
        n = node(source, v)
        if n.op == Op.INPUT or (n.op == Op.CONST and not n.origin) or n.op == Op.OUTPUT:
            continue
        label = n.origin[0] if n.origin else v
        op = n.attr("onnx_op") or n.op.value
        hit = by_node.get(label)
        if label in seen:
            continue
        seen.add(label)
        if hit is None:
            rows.append({"node": label, "op": op, "where": "removed",
                         "why": "no effect at inference, or feeds nothing"})
        else:
            rows.append({"node": label, "op": op, "where": hit["where"], "why": hit["why"]})
    return _fold_unrolled(rows, source.graph.get("unrolled", {}))


def _fold_unrolled(rows: list[dict], unrolled: dict[str, dict]) -> list[dict]:
    """One row per recurrent node the compiler unrolled (:mod:`npusim.compiler.recurrent`), in
    place of the rows of its steps' ops."""
    if not unrolled:
        return rows
    out: list[dict] = []
    parts: dict[str, list[dict]] = {}
    for r in rows:
        prefix = next((p for p in unrolled if r["node"].startswith(p + "/")), None)
        if prefix is None:
            out.append(r)
            continue
        if prefix not in parts:
            parts[prefix] = []
            out.append({"node": unrolled[prefix]["node"], "op": unrolled[prefix]["op"],
                        "prefix": prefix})
        parts[prefix].append(r)
    for r in out:
        prefix = r.pop("prefix", None)
        if prefix is None:
            continue
        u, steps = unrolled[prefix], parts[prefix]
        count = {w: sum(s["where"] == w for s in steps) for w in ("device", "host")}
        products = sum(s["op"] in ("Gemm", "MatMul") and s["where"] == "device" for s in steps)
        r["where"] = ("device" if count["device"] else "host" if count["host"]
                      else "constant")
        r["why"] = (f"unrolled: {u['steps']} time steps x {u['directions']} direction(s), "
                    f"{count['device']} ops on the device ({products} matrix-unit products)"
                    + (f", {count['host']} on the host" if count["host"] else ""))
    return out


def compile_model(model: str | Path | onnx.ModelProto | bytes,
                  device: str | Path | DeviceConfig | None = None, numerics: str | None = None,
                  rounding: Rounding | str = Rounding.NEAREST_EVEN, seed: int = 0,
                  strict: bool = False,
                  input_shapes: dict[str, tuple[int, ...]] | None = None,
                  layer_formats: dict[str, str] | None = None) -> Program:
    """Compile an ONNX model (path, bytes or ``ModelProto``) for a device.

    ``device`` is a preset name, a config file or a :class:`DeviceConfig` (default
    ``brainwave-s10``); ``numerics`` overrides the device's number format;
    ``input_shapes`` fixes symbolic input dimensions (``{"x": (1, 3, 224, 224)}``).
    Ops the device cannot run are placed on the host, unless ``strict`` refuses them
    by name. ``layer_formats`` gives matrix-unit layers (by ONNX node name) a format of
    their own (``{"conv1": "msfp16"}``): their weights, and the activations they multiply.

    Example:
        >>> from npusim.runtime.zoo import build_resnet50
        >>> prog = compile_model(build_resnet50(seed=0), numerics="msfp16")  # doctest: +SKIP
        >>> prog.save("resnet50.npub")                                        # doctest: +SKIP
    """
    compiled = compile_full(model, device, numerics, rounding, seed, strict, input_shapes,
                            layer_formats)
    compiled.graph.clear()  # its weights go now, not when the cycle collector gets to them
    return compiled.program
