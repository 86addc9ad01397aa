# SPDX-License-Identifier: Apache-2.0
"""The client without TensorFlow: ``npusim predict`` in a fresh process loads none of it
and answers in about a second, its messages are TensorFlow's on the wire, and they live
beside TensorFlow in one process whichever is imported first."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from serving_helpers import KEYS, client_for

from npusim.runtime.serving import protos
from npusim.runtime.serving.client import format_top

pytest.importorskip("cryptography", reason="the test certificate needs cryptography")
pytestmark = pytest.mark.tf

ROOT = Path(__file__).resolve().parents[2]
_LOADED_TF = ("any(m == 'tensorflow' or m.startswith('tensorflow.') for m in sys.modules)")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                         env.get("PYTHONPATH", "")])
    return env


def test_npusim_predict_in_a_fresh_process_loads_no_tensorflow(server, pkg, tmp_path):
    image = tmp_path / "cat.jpg"
    image.write_bytes(pkg.images[0])
    code = textwrap.dedent(f"""
        import sys
        from npusim.runtime.cli import main
        status = main(sys.argv[1:])
        print("tensorflow loaded:", {_LOADED_TF})
        sys.exit(status)
    """)
    res = subprocess.run(
        [sys.executable, "-c", code, "predict", str(image), "--address",
         f"127.0.0.1:{server.port}", "--root-cert", str(pkg.cert), "--top", "3"],
        capture_output=True, text=True, timeout=120, env=_env(NPUSIM_API_KEY=KEYS[0]))
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [str(image), *format_top(pkg.expected[0], top=3),
                                       "tensorflow loaded: False"]


def test_npusim_predict_against_a_warm_server_takes_about_a_second(server, pkg, tmp_path):
    image = tmp_path / "cat.jpg"
    image.write_bytes(pkg.images[1])
    argv = [sys.executable, "-m", "npusim", "predict", str(image), "--address",
            f"127.0.0.1:{server.port}", "--root-cert", str(pkg.cert), "--top", "1"]
    t0 = time.perf_counter()
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                         env=_env(NPUSIM_API_KEY=KEYS[0]))
    wall = time.perf_counter() - t0
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[1] == format_top(pkg.expected[1], top=1)[0]
    print(f"npusim predict: {wall:.2f} s")
    assert wall < 5.0  # about 1 s on an idle 2-core machine; TensorFlow's import alone took 5+


def _arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [np.array([b"\xff\xd8 a JPEG", b""], dtype=object), np.array(["text", "\u00e9"]),
            np.array(b"scalar", dtype=object), rng.standard_normal((2, 3)).astype(np.float32),
            np.float32([1.5]), rng.standard_normal((4,)), rng.integers(-9, 9, (3, 2), np.int64),
            rng.integers(0, 255, (5,), np.uint8), np.array([True, False]),
            rng.standard_normal((2, 2)).astype(np.float16),
            (rng.standard_normal(3) + 1j).astype(np.complex64), np.zeros((0, 3), np.float32)]


def test_tensor_protos_are_tensorflows_on_the_wire():
    from npusim.runtime.serving.pipeline import import_tensorflow

    tf = import_tensorflow()
    m = protos.messages()
    assert m.light
    for array in _arrays():
        ours = protos.make_tensor_proto(array, m.TensorProto)
        theirs = tf.make_tensor_proto(array)
        assert ours.SerializeToString() == theirs.SerializeToString(), array
        for proto in (ours, type(theirs).FromString(ours.SerializeToString())):
            back = protos.make_ndarray(proto)
            expected = tf.make_ndarray(theirs)
            assert back.shape == expected.shape and back.dtype == expected.dtype, array
            assert np.array_equal(back, expected), array
    # values TensorFlow writes repeated over the shape (a fill) read back the same
    fill = tf.make_tensor_proto(7.0, shape=[2, 3])
    assert np.array_equal(protos.make_ndarray(fill), tf.make_ndarray(fill))
    for value in range(1, 24):
        if value in protos.DTYPE_NAMES:
            assert protos.dtype_name(value) == tf.dtypes.as_dtype(value).name


def test_tensorflow_first_then_the_light_client(server, pkg):
    # this process imported TensorFlow (the package fixture); the client works beside it
    assert "tensorflow" in sys.modules
    with client_for(server, pkg) as client:
        assert client._messages.light
        assert np.array_equal(client.score_image(pkg.images[2]), pkg.expected[2])
        sig = client.metadata()["signatures"]["serving_default"]
        assert sig["outputs"]["output_alias"]["dtype"] == "float32"


@pytest.mark.slow  # imports TensorFlow in a fresh process: 8 s
def test_the_light_client_first_then_tensorflow(pkg, tmp_path):
    """In a fresh process: the light messages, then TensorFlow and its TF Serving modules,
    then a server in that same process, called by the client."""
    code = textwrap.dedent(f"""
        import sys
        import numpy as np
        from npusim.runtime.serving import protos
        m = protos.messages()
        light = protos.make_tensor_proto(np.array([b"x"], dtype=object), m.TensorProto)
        assert m.light and not {_LOADED_TF}
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2
        request = predict_pb2.PredictRequest()
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.array([b"x"], dtype=object)))
        assert request.inputs["images"].SerializeToString() == light.SerializeToString()
        from pathlib import Path
        from serving_helpers import Package, client_for, start_server
        from npusim.runtime.serving.package import load_package
        root = Path({str(tmp_path)!r})
        image = (root / "cat.jpg").read_bytes()
        path = Path({str(pkg.path)!r})
        pkg = Package(path, load_package(path), [image], [], Path({str(pkg.cert)!r}),
                      Path({str(pkg.key)!r}))
        server = start_server(pkg, metrics_port=None)
        try:
            with client_for(server, pkg) as client:
                np.save(root / "probs.npy", client.score_image(image))
        finally:
            server.stop(1.0)
    """)
    (tmp_path / "cat.jpg").write_bytes(pkg.images[3])
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    assert np.array_equal(np.load(tmp_path / "probs.npy"), pkg.expected[3])


def test_without_readable_descriptors_the_messages_come_from_tensorflow(monkeypatch):
    def unreadable(proto_file: str) -> bytes:
        raise LookupError(f"{proto_file}: no descriptor")

    monkeypatch.setattr(protos, "_serialized", unreadable)
    m = protos.messages.__wrapped__()
    from tensorflow_serving.apis import predict_pb2

    assert not m.light and m.PredictRequest is predict_pb2.PredictRequest
    proto = protos.make_tensor_proto(np.float32([[1, 2]]), m.TensorProto)
    assert np.array_equal(protos.make_ndarray(proto), [[1, 2]])


def test_unreadable_tensors_are_refused_by_name():
    m = protos.messages()
    for make in (lambda t: setattr(t, "dtype", 14),  # bfloat16: numpy has none
                 lambda t: setattr(t, "dtype", 999)):
        proto = m.TensorProto()
        make(proto)
        with pytest.raises(TypeError, match="cannot be read"):
            protos.make_ndarray(proto)
    with pytest.raises(TypeError, match="bytes or str"):
        protos.make_tensor_proto(np.array([b"x", 3], dtype=object), m.TensorProto)
