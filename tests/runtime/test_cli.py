# SPDX-License-Identifier: Apache-2.0
"""The ``npusim`` command as a user runs it, good input and bad."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from cli_helpers import assert_user_error, npusim
from onnx import helper
from onnx_helpers import conv_block, make_model

from npusim.runtime.cli import main


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    onnx.save(conv_block(), d / "block.onnx")
    x = np.random.default_rng(0).standard_normal((1, 8, 8, 8)).astype(np.float32)
    np.save(d / "x.npy", x)
    assert main(["compile", str(d / "block.onnx"), "-o", str(d / "block.npub"),
                 "--device", "tiny"]) == 0
    return d


def test_compile_run_inspect(workdir, capsys):
    out = workdir / "out"
    stats = workdir / "stats.json"
    assert main(["run", str(workdir / "block.npub"), "--input", f"x={workdir / 'x.npy'}",
                 "--output-dir", str(out), "--stats", str(stats)]) == 0
    y = np.load(out / "y.npy")
    assert y.shape == (1, 10) and abs(float(y.sum()) - 1) < 1e-5
    s = json.loads(stats.read_text())
    assert {"cycles", "latency_us", "clock_mhz", "layers"} <= set(s)
    assert s["cycles"] == sum(layer["cycles"] for layer in s["layers"]) > 0
    assert s["latency_us"] == pytest.approx(s["cycles"] / s["clock_mhz"])
    convs = [layer for layer in s["layers"] if layer["op"].startswith("Conv")]
    assert convs and convs[0]["macs"] == 8 * 8 * 8 * 8 * 9
    assert all({"name", "op", "cycles", "macs"} <= set(layer) for layer in s["layers"])
    assert main(["inspect", str(workdir / "block.npub"), "--disasm"]) == 0
    text = capsys.readouterr().out
    assert "MV_MUL" in text and "fingerprint" in text and "activations" in text


def test_stop_after_dumps_the_graph(workdir, capsys):
    assert main(["compile", str(workdir / "block.onnx"), "--stop-after", "fold_batchnorm"]) == 0
    text = capsys.readouterr().out
    assert "= Conv(" in text and "BatchNormalization" not in text


def test_unknown_pass_lists_the_passes(workdir):
    assert_user_error(npusim("compile", str(workdir / "block.onnx"), "--stop-after", "nope"),
                      "no pass 'nope'", "fold_constants", "quantize_weights")


def test_the_cli_starts_without_the_heavy_packages():
    """`npusim --help` and `npusim device list` import neither numba's kernels' users nor
    onnx, TensorFlow, gRPC or the compiler: they start in well under a second."""
    code = ("import sys; from npusim.runtime.cli import main\n"
            "try:\n    main(['device', 'list'])\nexcept SystemExit:\n    pass\n"
            "heavy = {'tensorflow', 'onnx', 'onnxruntime', 'grpc', 'networkx',"
            " 'npusim.compiler.driver', 'npusim.simulator.device'}\n"
            "print(sorted(heavy & set(sys.modules)))")
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout + done.stderr


def test_same_model_compiles_to_identical_bytes(workdir, tmp_path):
    a, b = tmp_path / "a.npub", tmp_path / "b.npub"
    for p in (a, b):
        assert main(["compile", str(workdir / "block.onnx"), "-o", str(p), "--device",
                     "tiny"]) == 0
    assert a.read_bytes() == b.read_bytes()


def test_malformed_onnx(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf \xff\xff")
    res = npusim("compile", str(bad), "-o", str(tmp_path / "o.npub"))
    assert_user_error(res, "onnx")
    assert not (tmp_path / "o.npub").exists()


def test_missing_model(tmp_path):
    assert_user_error(npusim("compile", str(tmp_path / "none.onnx"), "-o",
                             str(tmp_path / "o.npub")), "not found")


@pytest.mark.parametrize("spec", ["nosuch", "npu:nosuch", "deepbench:nosuch"])
def test_bench_names_what_a_model_may_be(tmp_path, spec):
    assert_user_error(npusim("bench", spec), "model not found", spec, "zoo name",
                      "npu:NAME", "deepbench:NAME", "ONNX file")


def test_unsupported_op_goes_to_host_or_is_refused_with_strict(tmp_path):
    m = make_model([helper.make_node("Cos", ["x"], ["c"], name="my_cos"),
                    helper.make_node("Relu", ["c"], ["y"], name="my_relu")], {"x": [4]},
                   {"y": [4]})
    onnx.save(m, tmp_path / "cos.onnx")
    res = npusim("compile", str(tmp_path / "cos.onnx"), "-o", str(tmp_path / "o.npub"),
                 "--strict")
    assert_user_error(res, "Cos", "my_cos", "strict")
    assert list(tmp_path.iterdir()) == [tmp_path / "cos.onnx"]
    res = npusim("compile", str(tmp_path / "cos.onnx"), "-o", str(tmp_path / "o.npub"),
                 "--report", str(tmp_path / "report.json"))
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    assert [(r["node"], r["where"]) for r in report] == [("my_cos", "host"),
                                                          ("my_relu", "device")]
    assert "my_cos" in res.stdout and "host" in res.stdout  # the table on the terminal
    x = np.linspace(-3, 3, 4).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    res = npusim("run", str(tmp_path / "o.npub"), "--input", str(tmp_path / "x.npy"),
                 "--output-dir", str(tmp_path), "--stats", str(tmp_path / "s.json"))
    assert res.returncode == 0, res.stderr
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), np.maximum(np.cos(x), 0), rtol=1e-6)
    layers = json.loads((tmp_path / "s.json").read_text())["layers"]
    host = [layer for layer in layers if layer["unit"] == "host" and "Cos" in layer["op"]]
    assert host and host[0]["cycles"] > 0  # the host round trip is priced


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_corrupt_program(workdir, tmp_path, damage):
    data = (workdir / "block.npub").read_bytes()
    bad = {"truncate": data[: len(data) // 2], "flip": data[:300] + bytes([data[300] ^ 1])
           + data[301:], "garbage": b"hello world" * 10, "empty": b""}[damage]
    (tmp_path / "bad.npub").write_bytes(bad)
    res = npusim("run", str(tmp_path / "bad.npub"), "--input", str(workdir / "x.npy"),
                 "--output-dir", str(tmp_path / "out"))
    assert_user_error(res, "program")
    assert not (tmp_path / "out").exists()


def test_wrong_target(workdir, tmp_path):
    res = npusim("run", str(workdir / "block.npub"), "--device", "brainwave-s10", "--input",
                 str(workdir / "x.npy"), "--output-dir", str(tmp_path / "out"))
    assert_user_error(res, "built for", "tiny", "brainwave-s10")
    assert not (tmp_path / "out").exists()


def test_missing_and_misshapen_inputs(workdir, tmp_path):
    np.save(tmp_path / "wrong.npy", np.zeros((1, 3, 8, 8), np.float32))
    out = tmp_path / "out"
    prog = str(workdir / "block.npub")
    assert_user_error(npusim("run", prog, "--output-dir", str(out)), "missing input", "x")
    assert_user_error(npusim("run", prog, "--input", f"x={tmp_path / 'wrong.npy'}",
                             "--output-dir", str(out)), "shape", "[1, 3, 8, 8]")
    assert_user_error(npusim("run", prog, "--input", f"z={workdir / 'x.npy'}",
                             "--output-dir", str(out)), "unknown input", "z")
    assert_user_error(npusim("run", prog, "--input", f"x={tmp_path / 'nope.npy'}",
                             "--output-dir", str(out)), "not found")
    (tmp_path / "text.npy").write_text("not numpy")
    assert_user_error(npusim("run", prog, "--input", f"x={tmp_path / 'text.npy'}",
                             "--output-dir", str(out)), "npy")
    assert not out.exists()


def test_bad_device_and_format(workdir, tmp_path):
    assert_user_error(npusim("compile", str(workdir / "block.onnx"), "-o",
                             str(tmp_path / "o.npub"), "--device", "nosuchpart"),
                      "unknown device", "nosuchpart")
    res = npusim("compile", str(workdir / "block.onnx"), "-o", str(tmp_path / "o.npub"),
                 "--numerics", "fp7")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert not (tmp_path / "o.npub").exists()
