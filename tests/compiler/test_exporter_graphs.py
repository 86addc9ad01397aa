# SPDX-License-Identifier: Apache-2.0
"""The exporter corpus (``tests/exporter_graphs.py``) through the compiler.

For every graph: fp32 against onnxruntime, every program bit for bit against the
golden evaluation of its compiled graph, and the placement report against what the
graph owes (which op types may go to the host, how many host calls, which shape
arithmetic folds away).
"""

from __future__ import annotations

import functools
import re

import exporter_graphs_attention
import exporter_graphs_host
import exporter_graphs_recurrent
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from exporter_graphs import BUILDERS, ExporterGraph, op_key

from npusim.compiler import Compiled, CompileError, compile_full
from npusim.compiler.interpret import Numerics, evaluate
from npusim.runtime import Session
from npusim.simulator.numerics import FORMAT_NAMES, get_format
from npusim.simulator.program import Program

DEVICE = "brainwave-s10"
BUILDERS = {**BUILDERS, **exporter_graphs_host.BUILDERS, **exporter_graphs_attention.BUILDERS,
            **exporter_graphs_recurrent.BUILDERS}
NAMES = list(BUILDERS)
WHERE = {"device", "host", "constant", "removed"}
MAC_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


@functools.cache
def case(name: str) -> ExporterGraph:
    return BUILDERS[name]()


@functools.cache
def compiled(name: str, numerics: str) -> Compiled:
    g = case(name)
    shapes = {"input_shapes": g.input_shapes} if g.input_shapes is not None else {}
    return compile_full(g.model, device=DEVICE, numerics=numerics, **shapes)


@functools.cache
def reference(name: str) -> tuple[np.ndarray, ...]:
    g = case(name)
    sess = ort.InferenceSession(g.model.SerializeToString(), providers=["CPUExecutionProvider"])
    return tuple(sess.run(None, g.feeds))


def output_names(g: ExporterGraph) -> list[str]:
    return [o.name for o in g.model.graph.output]


def assert_close_to_onnxruntime(name: str, outs: list[np.ndarray],
                                want: tuple[np.ndarray, ...], names: list[str]) -> None:
    """Float outputs within 1e-4 of the largest reference magnitude; integer outputs exact."""
    assert len(outs) == len(want), f"{name}: {len(outs)} outputs, onnxruntime gives {len(want)}"
    for oname, out, ref in zip(names, outs, want):
        where = f"{name}/{oname}"
        assert out.dtype == ref.dtype, f"{where}: dtype {out.dtype}, onnxruntime {ref.dtype}"
        assert out.shape == ref.shape, f"{where}: shape {out.shape}, onnxruntime {ref.shape}"
        if ref.dtype.kind != "f":
            np.testing.assert_array_equal(out, ref, err_msg=where)
        elif ref.size:
            err = float(np.max(np.abs(out.astype(np.float64) - ref)))
            scale = max(float(np.max(np.abs(ref))), 1e-6)
            assert err / scale <= 1e-4, f"{where}: max abs error {err:.3g} of max {scale:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_corpus_model_is_valid_and_runs_on_onnxruntime(name):
    g = case(name)
    onnx.checker.check_model(g.model, full_check=True)
    labels = [n.name for n in g.model.graph.node]
    assert all(labels) and len(set(labels)) == len(labels), "every node has its own name"
    inputs = {i.name for i in g.model.graph.input} - {t.name for t in g.model.graph.initializer}
    assert set(g.feeds) == inputs
    for op in g.must_host:
        assert op in g.host_ops and any(op_key(n) == op for n in g.model.graph.node)
    assert set(g.folded) <= set(labels)
    outs = reference(name)
    assert len(outs) == len(g.model.graph.output) and all(np.all(np.isfinite(o)) for o in outs)


@pytest.mark.parametrize("name", NAMES)
def test_fp32_program_matches_onnxruntime(name):
    g = case(name)
    program = Program.from_bytes(compiled(name, "fp32").program.to_bytes())
    outs = Session(program).run(None, g.feeds)
    assert_close_to_onnxruntime(name, outs, reference(name), output_names(g))


# the MX minifloat formats share one simulator path: one of them in the fast suite
_FMTS = [pytest.param(f, marks=[pytest.mark.slow] if get_format(f).is_minifloat
                      and f != "mxfp8_e4m3" else []) for f in FORMAT_NAMES]


@pytest.mark.parametrize("fmt", _FMTS)
@pytest.mark.parametrize("name", NAMES)
def test_program_matches_golden_bit_for_bit(name, fmt):
    g = case(name)
    comp = compiled(name, fmt)
    outs = Session(comp.program).run(None, g.feeds)
    opts = comp.options
    gold = evaluate(comp.graph, g.feeds, Numerics(opts.format, opts.rounding, opts.seed))
    names = output_names(g)
    assert len(outs) == len(names)
    for oname, out in zip(names, outs):
        np.testing.assert_array_equal(out, gold[oname], strict=True,
                                      err_msg=f"{name}/{fmt}/{oname}: simulator != golden")


@pytest.mark.parametrize("fmt", ["fp32", "msfp8"])
@pytest.mark.parametrize("name", NAMES)
def test_placement(name, fmt):
    g = case(name)
    prog = compiled(name, fmt).program
    rows = prog.metadata["placement"]
    ops = {n.name: op_key(n) for n in g.model.graph.node}
    assert sorted(r["node"] for r in rows) == sorted(ops), "one row per ONNX node"
    for r in rows:
        assert r["where"] in WHERE, r
        assert isinstance(r["why"], str) and r["why"].strip(), f"no reason given: {r}"
    where = {r["node"]: r["where"] for r in rows}
    why = {r["node"]: r["why"] for r in rows}
    stray = [f"{n} ({ops[n]}): {why[n]}" for n, w in where.items()
             if w == "host" and ops[n] not in g.host_ops]
    assert not stray, f"{name}: on the host, owed to the device: {stray}"
    kept = [f"{n} ({ops[n]}): {where[n]}" for n in ops
            if ops[n] in g.must_host and where[n] != "host"]
    assert not kept, f"{name}: only the host can run {kept}"
    unfolded = [f"{n} ({ops[n]}): {where[n]}, {why[n]}" for n in sorted(g.folded)
                if where[n] not in ("constant", "removed")]
    assert not unfolded, f"{name}: shape arithmetic or no-ops left in the program: {unfolded}"

    summary = prog.metadata["summary"]
    host = sum(w == "host" for w in where.values())
    assert summary["host_calls"] == g.host_calls, f"{name}: {summary}"
    assert summary["nodes"] == len(rows)
    assert summary["host_nodes"] == host
    assert summary["device_nodes"] == sum(w == "device" for w in where.values())
    assert 0 <= summary["device_macs"] <= summary["macs"]
    if any(ops[n] in MAC_OPS and w == "device" for n, w in where.items()):
        assert summary["device_macs"] > 0
    assert summary["host_link_bytes"] >= summary["host_call_bytes"]
    if host:
        assert summary["host_call_bytes"] > 0 or summary["host_calls"] == 0
    else:
        assert summary["host_call_bytes"] == 0 and summary["device_macs"] == summary["macs"]


def test_symbolic_batch_without_input_shapes_is_refused_by_name():
    g = case("symbolic_batch")
    with pytest.raises(CompileError) as info:
        compile_full(g.model, device=DEVICE, numerics="fp32")
    msg = str(info.value)
    assert msg and "\n" not in msg.strip(), f"not one line: {msg!r}"
    assert re.search(r"\bx\b", msg) and re.search(r"\bN\b", msg), msg


@pytest.mark.parametrize("shapes, culprit", [({"images": (1, 3, 16, 16)}, "images"),
                                             ({"x": (1, 3, 8, 8)}, "x")])
def test_input_shapes_that_do_not_fit_are_refused_by_name(shapes, culprit):
    """An unknown input, or a size that contradicts a fixed dim, is the user's error."""
    with pytest.raises(CompileError, match=rf"\b{culprit}\b"):
        compile_full(case("symbolic_batch").model, device=DEVICE, numerics="fp32",
                     input_shapes=shapes)


def test_skl2onnx_logistic_regression():
    """A real skl2onnx export: LinearClassifier and its post-processing, all on the host."""
    linear = pytest.importorskip("sklearn.linear_model", reason="scikit-learn is not installed")
    skl2onnx = pytest.importorskip("skl2onnx", reason="skl2onnx is not installed")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((96, 4)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 0.5)
    clf = linear.LogisticRegression(max_iter=500).fit(x, y)
    model = skl2onnx.to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}},
                             target_opset={"": 17, "ai.onnx.ml": 3})
    name = model.graph.input[0].name
    feeds = {name: x[:1]}
    want = tuple(ort.InferenceSession(model.SerializeToString(),
                                      providers=["CPUExecutionProvider"]).run(None, feeds))
    comp = compile_full(model, device=DEVICE, numerics="fp32", input_shapes={name: (1, 4)})
    outs = Session(comp.program).run(None, feeds)
    assert_close_to_onnxruntime("skl2onnx", outs, want, [o.name for o in model.graph.output])
    rows = comp.program.metadata["placement"]
    assert len(rows) == len(model.graph.node) and all(r["why"].strip() for r in rows)
    assert comp.program.metadata["summary"]["host_calls"] == 1
