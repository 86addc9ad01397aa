# SPDX-License-Identifier: Apache-2.0
"""Model packages: the round trip is bit-exact, and anything altered is refused by name."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import zipfile

import numpy as np
import onnx
import pytest
from cli_helpers import assert_user_error, npusim
from onnx import helper
from onnx_helpers import make_model, small_featurizer

from npusim.runtime.cli import main
from npusim.runtime.serving.package import load_package, save_package
from npusim.runtime.serving.pipeline import ModelDefinition, PipelineError, import_tensorflow

pytestmark = [pytest.mark.tf,
              pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                 reason="TensorFlow is not installed")]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    from npusim.runtime.serving.tfstages import featurizer_pipeline

    tf = import_tensorflow()
    d = tmp_path_factory.mktemp("package")
    onnx.save(small_featurizer(), d / "small.onnx")
    model = featurizer_pipeline(d / "small.onnx", "brainwave-s10", seed=3, classes=10)
    rng = np.random.default_rng(2)
    images = np.array([tf.io.encode_png(rng.integers(0, 256, (48, 40 + 20 * i, 3))
                                        .astype(np.uint8)).numpy() for i in range(2)],
                      dtype=object)
    saved = save_package(model, d / "small.zip")
    return {"dir": d, "model": model, "zip": saved, "feeds": {"images": images},
            "expected": model.run({"images": images})["output_alias"]}


def read_zip(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {n: z.read(n) for n in z.namelist()}


def write_zip(path, files: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)


def test_round_trip_is_bit_identical(work, tmp_path):
    files = read_zip(work["zip"])
    m = json.loads(files["manifest.json"])
    assert (m["format"], m["format_version"], m["name"], m["version"]) == \
        ("npusim-package", 1, "small", 1)
    assert m["tensorflow"] == import_tensorflow().__version__ and m["npusim"]
    assert [(s["kind"], s["name"]) for s in m["stages"]] == [
        ("tensorflow", "preprocess"), ("accelerator", "featurizer"), ("tensorflow", "classifier")]
    prog = work["model"].stages[1].program
    assert m["stages"][1]["target"] == prog.target.fingerprint().hex()
    assert files[m["stages"][1]["path"]] == prog.to_bytes()
    assert m["stages"][2]["outputs"] == [{"name": "output_alias", "dtype": "float32",
                                          "shape": [None, 10]}]
    assert set(m["files"]) == set(files) - {"manifest.json"}
    assert all(hashlib.sha256(files[n]).hexdigest() == h for n, h in m["files"].items())

    loaded = load_package(work["zip"])
    assert (loaded.name, loaded.version) == ("small", 1)
    assert loaded.signature() == work["model"].signature()
    for a, b in zip(loaded.stages, work["model"].stages):
        assert (a.kind, a.name, a.inputs, a.outputs) == (b.kind, b.name, b.inputs, b.outputs)
    np.testing.assert_array_equal(loaded.run(work["feeds"])["output_alias"], work["expected"])
    again = load_package(save_package(loaded, tmp_path / "again.zip"))  # a restored model saves too
    np.testing.assert_array_equal(again.run(work["feeds"])["output_alias"], work["expected"])


def test_stage_variables_are_saved(tmp_path):
    from npusim.runtime.serving.pipeline import TensorflowStage

    tf = import_tensorflow()
    scale = tf.Variable([2.0, -3.0])

    @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32, name="x")])
    def scaled(x):
        return {"y": x * scale, "n": tf.shape(x)[0]}

    model = ModelDefinition("vars", 4, [TensorflowStage.from_function(scaled, "s", ["y", "n"])])
    x = np.array([[1.0, 2.0], [0.5, 0.25]], np.float32)
    loaded = load_package(save_package(model, tmp_path / "v.zip"))
    assert loaded.version == 4 and [s.name for s in loaded.outputs] == ["y", "n"]
    out = loaded.run({"x": x})
    np.testing.assert_array_equal(out["y"], [[2, -6], [1, -0.75]])
    assert out["n"] == 2 and out["n"].dtype == np.int32
    m = json.loads(read_zip(tmp_path / "v.zip")["manifest.json"])
    assert any("variables.data" in n for n in m["files"])


def _edit_manifest(edit):
    def mutate(files):
        m = json.loads(files["manifest.json"])
        edit(m)
        files["manifest.json"] = json.dumps(m).encode()
    return mutate


def _flip(name_part: str, offset: int = 200):
    def mutate(files):
        name = next(n for n in files if name_part in n)
        data = bytearray(files[name])
        data[offset % len(data)] ^= 0x40
        files[name] = bytes(data)
    return mutate


def _replace_program(files):
    """Garbage in place of the program, with a checksum to match: the program check finds it."""
    name = next(n for n in files if n.endswith(".npub"))
    files[name] = b"NPUB garbage"
    m = json.loads(files["manifest.json"])
    m["files"][name] = hashlib.sha256(files[name]).hexdigest()
    files["manifest.json"] = json.dumps(m).encode()


def _first(pred):
    def pick(m):
        return next(s for s in m["stages"] if pred(s))
    return pick


TAMPERING = {
    "program byte": (_flip(".npub"), "1-featurizer.npub does not match its checksum: tampered"),
    "saved model byte": (_flip("2-classifier/saved_model.pb"), "tampered or corrupt"),
    "weights byte": (_flip("2-classifier/variables/variables.data", 7), "tampered or corrupt"),
    "checksum edited": (_edit_manifest(lambda m: m["files"].update(
        {next(iter(m["files"])): "0" * 64})), "does not match its checksum"),
    "outputs edited": (_edit_manifest(lambda m: m["stages"][2]["outputs"][0].update(
        shape=[None, 11])), "stage 'classifier': its inputs/outputs differ from the manifest"),
    "file removed": (lambda f: f.pop("stages/2-classifier/variables/variables.index"),
                     "variables.index listed in the manifest is missing"),
    "file added": (lambda f: f.update({"stages/extra.bin": b"x"}),
                   "stages/extra.bin is not listed in the manifest"),
    "manifest removed": (lambda f: f.pop("manifest.json"), "no manifest.json"),
    "manifest not json": (lambda f: f.update({"manifest.json": b"{"}), "not valid JSON"),
    "unknown format": (_edit_manifest(lambda m: m.update(format="other")),
                       "unknown format 'other'"),
    "newer format": (_edit_manifest(lambda m: m.update(format_version=2)),
                     "package format version 2 is not supported"),
    "malformed manifest": (_edit_manifest(lambda m: m.pop("stages")), "malformed manifest"),
    "other TensorFlow": (_edit_manifest(lambda m: m.update(tensorflow="1.15.5")),
                         "TensorFlow 1.15.5.*incompatible major version"),
    "program fails to load": (_replace_program, "stage 'featurizer': the program fails to load"),
    "other target": (_edit_manifest(lambda m: _first(lambda s: "target" in s)(m).update(
        target="00" * 32)), "is not the one the manifest records"),
    "unsafe path": (lambda f: f.update({"../evil": b"x"}), "unsafe file path"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_altered_package_is_refused(work, tmp_path, case):
    mutate, message = TAMPERING[case]
    files = read_zip(work["zip"])
    mutate(files)
    bad = tmp_path / "bad.zip"
    write_zip(bad, files)
    with pytest.raises(PipelineError, match=message) as err:
        load_package(bad)
    assert "\n" not in str(err.value) and str(bad) in str(err.value)


def test_not_a_package(tmp_path):
    (tmp_path / "x.zip").write_bytes(b"hello, not a zip")
    with pytest.raises(PipelineError, match="not a zip file"):
        load_package(tmp_path / "x.zip")
    with pytest.raises(PipelineError, match="package not found"):
        load_package(tmp_path / "missing.zip")


def test_failed_save_leaves_nothing(work, tmp_path):
    class Odd:
        kind, name, inputs, outputs = "other", "odd", [], []

    model = ModelDefinition("m", 1, [work["model"].stages[1]])
    model._stages.append(Odd())  # a stage kind the package format does not know
    target = tmp_path / "m.zip"
    target.write_bytes(b"previous")
    with pytest.raises(PipelineError, match="cannot save a stage of kind 'other'"):
        save_package(model, target)
    assert target.read_bytes() == b"previous" and sorted(tmp_path.iterdir()) == [target]


def test_package_command(work, tmp_path, capsys):
    out = tmp_path / "sub" / "small.zip"
    assert main(["package", "-o", str(out), "--model", str(work["dir"] / "small.onnx"),
                 "--classes", "10", "--seed", "3", "--name", "tiny-featurizer"]) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "tiny-featurizer" in line and str(out) in line
    assert "preprocess (tensorflow) -> featurizer (accelerator) -> classifier (tensorflow)" in line
    model = load_package(out)
    assert model.name == "tiny-featurizer"
    np.testing.assert_array_equal(model.run(work["feeds"])["output_alias"], work["expected"])


def test_package_command_user_errors(work, tmp_path):
    out = tmp_path / "out.zip"
    small = str(work["dir"] / "small.onnx")
    cases = [(["--model", "nosuch"], "unknown model 'nosuch'"),
             (["--model", small, "--device", "nosuch"], "unknown device"),
             (["--model", small, "--classes", "0"], "classes must be a positive integer")]
    for args, message in cases:
        assert_user_error(npusim("package", "-o", str(out), *args), message)
        assert list(tmp_path.iterdir()) == []
    notimage = tmp_path / "notimage.onnx"
    onnx.save(make_model([helper.make_node("Relu", ["x"], ["y"])], {"x": [1, 10]},
                         {"y": [1, 10]}), notimage)
    assert main(["package", "-o", str(out), "--model", str(notimage)]) == 2
    assert not out.exists()
