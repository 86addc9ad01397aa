# SPDX-License-Identifier: Apache-2.0
"""``npusim.runtime.analysis.evaluate`` and ``npusim eval``: datasets, metrics against hand-computed
expectations, identical results serially / on processes / on Ray, one-line user errors."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from cli_helpers import assert_user_error, npusim
from onnx import helper
from onnx_helpers import make_model, rand

from npusim.compiler import compile_model
from npusim.runtime.analysis.evaluate import EvalError, evaluate, format_eval
from npusim.runtime.analysis.reference import onnxruntime_session
from npusim.runtime.cli import main
from npusim.runtime.session import Session
from npusim.simulator.config import load_device
from npusim.simulator.numerics import FORMAT_NAMES

HAS_RAY = importlib.util.find_spec("ray") is not None
HAS_TF = importlib.util.find_spec("tensorflow") is not None
N, CHUNK, CLASSES = 70, 16, 10


def small_cnn(seed: int = 0, channels: int = 1, classes: int = CLASSES,
              batch: int | str = 1) -> onnx.ModelProto:
    """x[batch, channels, 8, 8] -> Conv 3x3 (4) -> Relu -> Flatten -> Gemm -> y[batch, classes]."""
    rng = np.random.default_rng(seed)
    w = {"w": rand(rng, 4, channels, 3, 3, scale=0.5 if channels == 1 else 0.01),
         "b": rand(rng, 4, scale=0.1), "fw": rand(rng, 256, classes, scale=0.2),
         "fb": rand(rng, classes, scale=0.1)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name="fc")]
    return make_model(nodes, {"x": [batch, channels, 8, 8]}, {"y": [batch, classes]}, w)


def program_logits(model, fmt: str, xs: np.ndarray) -> np.ndarray:
    """The first output of the program for each sample, run directly on a Session."""
    sess = Session(compile_model(model, load_device("tiny").replace(numerics=fmt)))
    return np.stack([sess.run(None, {"x": x[None]})[0].reshape(-1) for x in xs])


def top5(logits: np.ndarray) -> np.ndarray:
    return np.argsort(-logits, axis=1, kind="stable")[:, :5]


def run(model, data, **kw):
    opts = {"numerics": "msfp16", "device": "tiny", "serial": True, "progress": False,
            "chunk": CHUNK}
    return evaluate(model, data, **(opts | kw))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> SimpleNamespace:
    """70 seeded samples labelled by onnxruntime's fp32 argmax, as .npz and as .npy."""
    d = tmp_path_factory.mktemp("eval")
    model = small_cnn()
    onnx.save(model, d / "cnn.onnx")
    x = np.random.default_rng(1).standard_normal((N, 1, 8, 8)).astype(np.float32)
    ort = onnxruntime_session(model)
    logits = np.stack([ort.run(None, {"x": xi[None]})[0][0] for xi in x])
    y = logits.argmax(axis=1)
    np.savez(d / "data.npz", x=x, y=y)
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", y)
    return SimpleNamespace(dir=d, model=d / "cnn.onnx", proto=model, x=x, y=y, logits=logits)


@pytest.fixture(scope="module")
def serial(data):
    return run(data.model, data.dir / "data.npz")


# --- metrics ---

def test_rows_predictions_and_metrics_are_the_programs(data, serial):
    assert [r.format for r in serial.rows] == ["fp32", "msfp16"]
    assert serial.samples == N and serial.outputs == CLASSES and serial.mode == "serial"
    direct = {fmt: program_logits(data.proto, fmt, data.x) for fmt in ("fp32", "msfp16")}
    for row in serial.rows:
        pred = serial.predictions[row.format]
        assert pred.shape == (N, 5) and pred.dtype == np.int32
        np.testing.assert_array_equal(pred, top5(direct[row.format]))
        assert row.top1 == np.mean(pred[:, 0] == data.y)
        assert row.top5 == np.mean([data.y[i] in pred[i] for i in range(N)])
        assert row.agree_fp32 == np.mean(pred[:, 0] == serial.predictions["fp32"][:, 0])
        assert row.max_abs_diff == np.abs(direct[row.format] - direct["fp32"]).max()
        assert row.images_per_s > 0
    assert serial.rows[1].max_abs_diff > 0  # msfp16 moved the logits: the check is not vacuous


def test_labels_from_the_fp32_reference_give_full_fp32_top1(data, serial):
    gaps = np.diff(np.sort(data.logits, axis=1)[:, -2:], axis=1)
    assert gaps.min() > 1e-3  # no near ties: fp32 (error ~1e-7) must keep every argmax
    fp32, msfp16 = serial.rows
    assert fp32.top1 == 1.0 and fp32.agree_fp32 == 1.0 and fp32.max_abs_diff == 0
    assert msfp16.top1 == msfp16.agree_fp32  # the labels are fp32's answers
    _, msfp8 = run(data.model, data.dir / "data.npz", numerics="msfp8").rows
    assert msfp8.top1 == msfp8.agree_fp32 < 0.95  # and a coarse format misses some


def test_shuffled_labels_lower_top1(data, serial, tmp_path):
    shuffled = np.random.default_rng(2).permutation(data.y)
    np.save(tmp_path / "shuffled.npy", shuffled)
    res = run(data.model, data.dir / "x.npy", labels=tmp_path / "shuffled.npy")
    pred = serial.predictions["fp32"][:, 0]
    assert res.rows[0].top1 == np.mean(pred == shuffled) < 0.5
    assert res.rows[0].agree_fp32 == 1.0  # agreement does not depend on labels


def test_top5_on_hand_made_labels(data):
    """Even samples labelled with onnxruntime's third-best class, odd ones with its worst:
    top-1 0 % and top-5 exactly 50 %."""
    order = np.argsort(-data.logits, axis=1)
    labels = np.where(np.arange(N) % 2 == 0, order[:, 2], order[:, -1])
    res = run(data.model, data.dir / "x.npy", labels=labels, numerics="fp32")
    assert [r.format for r in res.rows] == ["fp32"]
    assert res.rows[0].top1 == 0.0 and res.rows[0].top5 == 0.5


def test_under_five_outputs_has_no_top5(tmp_path):
    model = small_cnn(classes=3)
    x = np.random.default_rng(0).standard_normal((5, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(5, np.int64))
    res = run(model, tmp_path / "d.npz")
    assert all(r.top5 is None and r.top1 is not None for r in res.rows)
    assert res.predictions["fp32"].shape == (5, 3)


def test_without_labels_only_agreement(data):
    res = run(data.model, data.dir / "x.npy")
    assert all(r.top1 is None and r.top5 is None for r in res.rows)
    assert res.rows[1].agree_fp32 is not None and res.labels is None
    assert any("no labels" in n for n in res.notes)


def test_every_format(data, serial):
    res = run(data.model, data.dir / "data.npz", numerics="all", limit=20)
    assert [r.format for r in res.rows] == list(FORMAT_NAMES)
    assert all(r.samples == 20 for r in res.rows)
    np.testing.assert_array_equal(res.predictions["msfp16"], serial.predictions["msfp16"][:20])
    text = format_eval(res)
    assert [line.split()[0] for line in text.splitlines()[1:-1]] == list(FORMAT_NAMES)


# --- datasets ---

@pytest.mark.parametrize("layout", ["npy+labels", "leading 1", "compressed", "fortran",
                                    "inputs/labels keys"])
def test_dataset_layouts_give_the_same_predictions(data, serial, tmp_path, layout):
    path = tmp_path / "d.npz"
    kw = {}
    if layout == "npy+labels":
        path, kw = data.dir / "x.npy", {"labels": data.dir / "y.npy"}
    elif layout == "leading 1":
        np.savez(path, x=data.x[:, None], y=data.y)  # [N, 1, 1, 8, 8]: with the batch 1
    elif layout == "compressed":
        np.savez_compressed(path, x=data.x, y=data.y)
    elif layout == "fortran":
        np.savez(path, x=np.asfortranarray(data.x), y=data.y)
    else:
        np.savez(path, inputs=data.x.astype(np.float64), labels=data.y.astype(np.int32))
    res = run(data.model, path, **kw)
    for fmt in ("fp32", "msfp16"):
        np.testing.assert_array_equal(res.predictions[fmt], serial.predictions[fmt])
    assert [r.top1 for r in res.rows] == [r.top1 for r in serial.rows]


def test_limit_takes_the_first_samples(data, serial):
    res = run(data.model, data.dir / "data.npz", limit=21)
    assert res.samples == 21 and len(res.labels) == 21
    np.testing.assert_array_equal(res.predictions["fp32"], serial.predictions["fp32"][:21])


def test_batches_of_any_size_give_the_same_results(data, serial, monkeypatch):
    import npusim.runtime.analysis.evalworker

    monkeypatch.setattr(npusim.runtime.analysis.evalworker, "ARENA_BUDGET", 1)  # an image per run
    _same(run(data.model, data.dir / "data.npz", chunk=7), serial)


def test_symbolic_batch_is_fixed_to_one(data, serial, tmp_path):
    onnx.save(small_cnn(batch="N"), tmp_path / "n.onnx")
    res = run(tmp_path / "n.onnx", data.dir / "data.npz")
    np.testing.assert_array_equal(res.predictions["msfp16"], serial.predictions["msfp16"])


def test_npub_program_alone_and_with_a_reference(data, serial, tmp_path):
    compile_model(data.proto, load_device("tiny").replace(numerics="msfp16")).save(
        tmp_path / "p.npub")
    alone = run(tmp_path / "p.npub", data.dir / "data.npz", numerics=None, device=None)
    assert [r.format for r in alone.rows] == ["msfp16"]
    assert alone.rows[0].agree_fp32 is None and alone.rows[0].max_abs_diff is None
    np.testing.assert_array_equal(alone.predictions["msfp16"], serial.predictions["msfp16"])
    ref = run(tmp_path / "p.npub", data.dir / "data.npz", numerics=None, device=None,
              reference=data.model)
    assert [r.format for r in ref.rows] == ["fp32 (reference)", "msfp16"]
    assert ref.rows[1].agree_fp32 == serial.rows[1].agree_fp32
    assert ref.rows[1].max_abs_diff == serial.rows[1].max_abs_diff


# --- serial, processes and Ray agree ---

def _same(a, b) -> None:
    assert a.predictions.keys() == b.predictions.keys()
    for fmt in a.predictions:
        np.testing.assert_array_equal(a.predictions[fmt], b.predictions[fmt])
    strip = [(r.format, r.samples, r.top1, r.top5, r.agree_fp32, r.max_abs_diff)
             for r in a.rows]
    assert strip == [(r.format, r.samples, r.top1, r.top5, r.agree_fp32, r.max_abs_diff)
                     for r in b.rows]


def test_local_processes_give_the_serial_results(data, serial):
    res = run(data.model, data.dir / "data.npz", serial=False, workers=2)
    assert (res.mode, res.workers) == ("processes", 2)
    _same(res, serial)


@pytest.mark.slow  # a Ray start-up: 9 s
@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")
def test_ray_gives_the_serial_results(data, serial):
    res = run(data.model, data.dir / "data.npz", serial=False, address="local", workers=2)
    assert res.mode == "ray"
    _same(res, serial)
    import ray

    assert not ray.is_initialized()  # started here, so shut down here


# --- images ---

@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Class folders ant (2 images), bee (none), cat (3 PNGs), plus files to skip."""
    from npusim.runtime.serving.pipeline import import_tensorflow

    tf = import_tensorflow()
    root = tmp_path_factory.mktemp("tree")
    rng = np.random.default_rng(3)
    for name, count in (("ant", 2), ("bee", 0), ("cat", 3)):
        (root / name).mkdir()
        for i in range(count):
            pixels = rng.integers(0, 256, (9 + i, 12, 3), dtype=np.uint8)
            (root / name / f"{i}.png").write_bytes(tf.io.encode_png(pixels).numpy())
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    return root


@pytest.mark.tf
@pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed")
def test_class_folders_give_the_labels_and_the_preprocessed_predictions(tree, tmp_path):
    from npusim.runtime.serving.package import save_package
    from npusim.runtime.serving.pipeline import AcceleratorStage, ModelDefinition
    from npusim.runtime.serving.tfstages import preprocess_stage

    model = small_cnn(channels=3, classes=3)
    res = run(model, tree, numerics="fp32", chunk=2)
    assert res.labels.tolist() == [0, 0, 2, 2, 2] and res.samples == 5
    files = [tree / "ant" / "0.png", tree / "ant" / "1.png"] + \
        [tree / "cat" / f"{i}.png" for i in range(3)]
    pre = preprocess_stage(8, 9).run({"images": np.array([f.read_bytes() for f in files],
                                                         dtype=object)})["images"]
    expected = np.argsort(-program_logits(model, "fp32", pre), axis=1, kind="stable")
    np.testing.assert_array_equal(res.predictions["fp32"], expected)
    assert res.rows[0].top1 == np.mean(expected[:, 0] == res.labels)
    assert res.rows[0].top5 is None and not res.notes

    # the same preprocessing out of a package; and on two processes, TensorFlow loaded here
    prog = compile_model(model, load_device("tiny").replace(numerics="fp32"))
    save_package(ModelDefinition("p", 1, [preprocess_stage(8, 9), AcceleratorStage(prog)]),
                 tmp_path / "p.zip")
    _same(run(model, tree, numerics="fp32", package=tmp_path / "p.zip"), res)
    _same(run(model, tree, numerics="fp32", chunk=2, serial=False, workers=2), res)

    # a flat folder of images, labels from a file
    np.save(tmp_path / "cat.npy", np.array([2, 2, 1]))
    flat = run(model, tree / "cat", numerics="fp32", labels=tmp_path / "cat.npy")
    np.testing.assert_array_equal(flat.predictions["fp32"], expected[2:])
    assert flat.rows[0].top1 == np.mean(expected[2:, 0] == [2, 2, 1])


@pytest.mark.tf
@pytest.mark.skipif(not HAS_TF, reason="TensorFlow is not installed")
def test_bad_images_and_programs_they_cannot_feed(tree, data, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(EvalError, match="broken.png"):
        run(small_cnn(channels=3, classes=3), tmp_path / "a")
    with pytest.raises(EvalError, match=r"\[1, 3, H, H\].*--package"):
        run(data.model, tree)  # a grey [1, 1, 8, 8] program: the default can't feed it


# --- the command ---

def test_cli_prints_the_table_and_writes_json(data, serial, tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    assert main(["eval", str(data.model), str(data.dir / "data.npz"), "--numerics",
                 "fp32,msfp16", "--device", "tiny", "--serial", "--no-progress",
                 "--json", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["format", "samples", "top-1", "top-5", "agree", "fp32",
                                "max", "|diff|", "img/s"]
    assert [line.split()[:3] for line in lines[1:3]] == [
        [r.format, str(N), f"{r.top1:.2%}"] for r in serial.rows]
    assert "70 samples x 2 programs serially" in lines[3]
    doc = json.loads(out.read_text())
    assert [(f["format"], f["top1"], f["max_abs_diff"]) for f in doc["formats"]] == [
        (r.format, r.top1, r.max_abs_diff) for r in serial.rows]
    assert doc["samples"] == N and doc["labels"] is True
    assert [p.name for p in out.parent.iterdir()] == ["eval.json"]  # no temporary left


def _bad_npz(d: Path, name: str, **arrays) -> str:
    np.savez(d / name, **arrays)
    return str(d / name)


def _truncated_npy(d: Path) -> str:
    data = (d / "x.npy").read_bytes()
    (d / "cut.npy").write_bytes(data[:len(data) - 100])
    return str(d / "cut.npy")


ERRORS = [
    (lambda d, m: [m, str(d / "missing.npz")], ["dataset not found"]),
    (lambda d, m: [str(d / "missing.onnx"), str(d / "data.npz")], ["model not found"]),
    (lambda d, m: [m, _bad_npz(d, "nox.npz", a=np.zeros((2, 2)))], ["no 'x'", "a"]),
    (lambda d, m: [m, _bad_npz(d, "both.npz", x=np.zeros((2, 1, 8, 8)),
                               inputs=np.zeros((2, 1, 8, 8)))], ["both"]),
    (lambda d, m: [m, _bad_npz(d, "shape.npz", x=np.zeros((2, 1, 9, 9)))],
     ["[1, 9, 9]", "[1, 1, 8, 8]"]),
    (lambda d, m: [m, _bad_npz(d, "count.npz", x=np.zeros((3, 1, 8, 8)),
                               y=np.zeros(2, np.int64))], ["2 labels for 3 samples"]),
    (lambda d, m: [m, _bad_npz(d, "range.npz", x=np.zeros((3, 1, 8, 8)),
                               y=np.array([0, 10, 1]))], ["label 10", "10 outputs"]),
    (lambda d, m: [m, _bad_npz(d, "float.npz", x=np.zeros((3, 1, 8, 8)),
                               y=np.zeros(3))], ["integer"]),
    (lambda d, m: [m, _bad_npz(d, "text.npz", x=np.array([["a"]]))], ["dtype"]),
    (lambda d, m: [m, _truncated_npy(d)], ["cut.npy", "truncated"]),
    (lambda d, m: [m, str(d / "x.npy"), "--labels", str(d / "data.npz")], ["not a .npy"]),
    (lambda d, m: [m, str(d / "data.npz"), "--labels", str(d / "y.npy")], ["labels already"]),
    (lambda d, m: [m, str(d / "cnn.onnx")], ["expected an .npz"]),
    (lambda d, m: [m, str(d / "data.npz"), "--numerics", "msfp7"], ["'msfp7'", "fp32"]),
    (lambda d, m: [m, str(d / "data.npz"), "--limit", "0"], ["limit", "0"]),
    (lambda d, m: [m, str(d / "data.npz"), "--serial", "--address", "auto"], ["exclude"]),
    (lambda d, m: [m, str(d / "data.npz"), "--package", "p.zip"], ["--package"]),
    (lambda d, m: [m, str(d / "data.npz"), "--reference", m], ["--reference"]),
    (lambda d, m: [m, str(d / "data.npz"), "--device", "no-such-device"], ["no-such-device"]),
    (lambda d, m: [m, str(d / "data.npz"), "--json", str(d)], ["is a directory"]),
]


@pytest.mark.parametrize("make, words", ERRORS, ids=[w[0] for _, w in ERRORS])
def test_cli_user_errors_are_one_line(data, capsys, make, words):
    args = make(data.dir, str(data.model))
    assert main(["eval", *args, "--device", "tiny", "--serial", "--no-progress"]
                if "--device" not in args and "--serial" not in args
                else ["eval", *args, "--no-progress"]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("npusim: error: "), captured.err
    for w in words:
        assert w in lines[0], lines[0]
    assert captured.out == ""


def test_cli_program_errors(data, tmp_path, capsys):
    compile_model(data.proto, "tiny", "msfp16").save(tmp_path / "p.npub")
    for extra, word in ((["--numerics", "all"], "compiled for msfp16"),
                        (["--device", "tiny"], "--device applies to ONNX")):
        assert main(["eval", str(tmp_path / "p.npub"), str(data.dir / "data.npz"),
                     "--no-progress", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], err


@pytest.mark.skipif(not HAS_RAY, reason="ray is not installed")
def test_cli_unreachable_ray_address(data):
    assert_user_error(npusim("eval", str(data.model), str(data.dir / "data.npz"), "--device",
                             "tiny", "--address", "127.0.0.1:1"),
                      "cannot reach a Ray cluster at 127.0.0.1:1")


def test_importing_evaluate_starts_nothing():
    code = ("import sys, npusim.runtime.analysis.evaluate, npusim.runtime.cli.evaluate; "
            "heavy = [m for m in ('ray', 'tqdm', 'tensorflow', 'onnx', 'npusim.compiler.driver',"
            " 'npusim.simulator.device') if m in "
            "sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120,
                   cwd=Path(__file__).resolve().parents[2])
