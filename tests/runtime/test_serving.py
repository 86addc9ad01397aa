# SPDX-License-Identifier: Apache-2.0
"""The TF Serving-compatible server over real loopback sockets: TLS, keys, errors, metrics."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from serving_helpers import (
    CLASSES,
    KEYS,
    client_for,
    requests_total,
    scrape,
    start_server,
)

from runtime.cli import main
from runtime.client import PredictionError
from runtime.serving import PredictionServer, ServerConfig, ServingConfigError

pytest.importorskip("cryptography", reason="the test certificate needs cryptography")
pytestmark = pytest.mark.tf

BAD = grpc.StatusCode


def _code(fn) -> PredictionError:
    with pytest.raises(PredictionError) as info:
        fn()
    assert "\n" not in str(info.value)
    return info.value


def test_authenticated_answer_is_the_direct_run_bit_for_bit(server, pkg):
    from runtime.session import Session

    pre, featurizer, head = pkg.model.stages
    session = Session(featurizer.program)
    with client_for(server, pkg) as client:
        for image, expected in zip(pkg.images, pkg.expected):
            got = client.score_image(image)
            assert got.dtype == np.float32 and got.shape == (1, CLASSES)
            assert np.array_equal(got, expected)
            # the same answer again, by hand: TF preprocessing, Session, TF head
            x = pre.run({"images": np.array([image], dtype=object)})["images"]
            (features,) = session.run(None, {"images": x})
            by_hand = head.run({"features": features})["output_alias"]
            assert np.array_equal(got, by_hand)


def test_both_rotated_keys_are_accepted(server, pkg):
    for key in KEYS:
        with client_for(server, pkg, key=key, retries=0) as client:
            assert np.array_equal(client.score_image(pkg.images[0]), pkg.expected[0])


def test_missing_or_wrong_key_is_unauthenticated(server, pkg):
    messages = set()
    for key in (None, "not-the-key-000000000000", KEYS[0][:-1], KEYS[0] + "x"):
        with client_for(server, pkg, key=key, retries=3) as client:
            err = _code(lambda c=client: c.score_image(pkg.images[0]))
            assert err.code == BAD.UNAUTHENTICATED
            messages.add(err.details)
    assert len(messages) == 1  # the answer does not depend on how close the key was
    assert not any(k in m for k in KEYS for m in messages)
    # the raw header without the Bearer scheme is refused as well
    with client_for(server, pkg, key=None) as client:
        with pytest.raises(grpc.RpcError) as info:
            client._stub.GetModelMetadata.with_call(
                _metadata_request(), metadata=[("authorization", KEYS[0])], timeout=10)
        assert info.value.code() == BAD.UNAUTHENTICATED


def test_plaintext_client_to_tls_port_fails_fast(server, pkg):
    from runtime.client import PredictionClient

    t0 = time.monotonic()
    with PredictionClient("127.0.0.1", server.port, retries=0, timeout=10) as client:
        err = _code(lambda: client.score_image(pkg.images[0]))
    assert err.code == BAD.UNAVAILABLE
    assert time.monotonic() - t0 < 5


def _bad_requests(pkg) -> list[tuple[str, object, grpc.StatusCode, str]]:
    """(what, call(client), expected code, a word the message must hold)."""
    big = np.random.default_rng(0).bytes(3 * 2**19)  # 1.5 MiB over the 1 MiB limit
    return [
        ("undecodable image", lambda c: c.score_image(b"this is not a picture"),
         BAD.INVALID_ARGUMENT, "images"),
        ("wrong input name", lambda c: c.score_numpy_array(
            np.array([pkg.images[0]], dtype=object), input_name="pixels"),
         BAD.INVALID_ARGUMENT, "pixels"),
        ("wrong dtype", lambda c: c.score_numpy_array(np.zeros((1, 224), np.float32)),
         BAD.INVALID_ARGUMENT, "float32"),
        ("wrong shape", lambda c: c.score_numpy_array(
            np.array([[pkg.images[0]]], dtype=object)), BAD.INVALID_ARGUMENT, "shape"),
        ("batch over max_batch", lambda c: c.score_numpy_array(
            np.array(pkg.images + pkg.images[:1], dtype=object)), BAD.RESOURCE_EXHAUSTED,
         "batch"),
        ("request over max_request_bytes", lambda c: c.score_image(big),
         BAD.RESOURCE_EXHAUSTED, "larger"),
    ]


@pytest.mark.parametrize("index", range(6), ids=[b[0] for b in _bad_requests(None)])
def test_bad_request_gets_the_right_code(server, pkg, index):
    what, call, code, word = _bad_requests(pkg)[index]
    with client_for(server, pkg) as client:
        err = _code(lambda: call(client))
    assert err.code == code, (what, err)
    assert word.lower() in err.details.lower(), (what, err)


def test_unknown_model_name_and_version(server, pkg):
    with client_for(server, pkg, model_name="resnet152") as client:
        err = _code(lambda: client.score_image(pkg.images[0]))
        assert err.code == BAD.INVALID_ARGUMENT and "resnet152" in err.details
        err = _code(client.metadata)
        assert err.code == BAD.INVALID_ARGUMENT


def test_good_requests_succeed_alongside_bad_ones(server, pkg):
    bad = _bad_requests(pkg)

    def work(i):
        with client_for(server, pkg) as client:
            if i % 2:
                what, call, code, _ = bad[i // 2 % len(bad)]
                with pytest.raises(PredictionError) as info:
                    call(client)
                return info.value.code == code
            k = i // 2 % len(pkg.images)
            return np.array_equal(client.score_image(pkg.images[k]), pkg.expected[k])

    with ThreadPoolExecutor(8) as ex:
        assert all(ex.map(work, range(24)))


def test_unexpected_exception_is_internal_and_contained(pkg):
    class Flaky:
        def __init__(self, model):
            self._model = model

        def __getattr__(self, name):
            return getattr(self._model, name)

        def run(self, feeds, pool=None):
            if feeds["images"][0] == pkg.images[1]:
                raise ZeroDivisionError("secret internal detail\nsecond line")
            return self._model.run(feeds, pool)

    cfg = ServerConfig(pkg.path, port=0, devices=1)
    srv = PredictionServer(cfg, model=Flaky(pkg.model)).start()
    try:
        with client_for(srv, pkg) as client:
            err = _code(lambda: client.score_image(pkg.images[1]))
            assert err.code == BAD.INTERNAL and "ZeroDivisionError" in err.details
            assert "secret" not in err.details
            assert np.array_equal(client.score_image(pkg.images[0]), pkg.expected[0])
    finally:
        srv.stop(1.0)


def test_health_is_reachable_without_a_key(server, pkg):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    creds = grpc.ssl_channel_credentials(pkg.cert.read_bytes())
    with grpc.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "tensorflow.serving.PredictionService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as info:
            stub.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10)
        assert info.value.code() == BAD.NOT_FOUND


def _metadata_request():
    from tensorflow_serving.apis import get_model_metadata_pb2

    return get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])


def test_model_metadata_is_the_signature_def(server, pkg):
    with client_for(server, pkg) as client:
        meta = client.metadata()
        assert meta["name"] == "tiny" and meta["version"] == 1
        sig = meta["signatures"]["serving_default"]
        assert sig["method"] == "tensorflow/serving/predict"
        assert sig["inputs"] == {"images": {"dtype": "string", "shape": [None]}}
        assert sig["outputs"] == {"output_alias": {"dtype": "float32", "shape": [None, CLASSES]}}
        with pytest.raises(grpc.RpcError) as info:
            client._stub.GetModelMetadata(type(_metadata_request())(metadata_field=["x"]),
                                          timeout=10)
        assert info.value.code() == BAD.INVALID_ARGUMENT


def test_metrics_count_what_happened(pkg):
    from runtime.session import Session

    srv = start_server(pkg)
    try:
        with client_for(srv, pkg) as client:
            for image in pkg.images[:3]:
                client.score_image(image)
            for _ in range(2):
                _code(lambda: client.score_image(b"junk"))
            client.metadata()
        with client_for(srv, pkg, key="wrong-key-0000000000000000", retries=0) as client:
            _code(lambda: client.score_image(pkg.images[0]))
        m = scrape(srv)
    finally:
        srv.stop(1.0)
    assert requests_total(m, "Predict", "OK") == 3
    assert requests_total(m, "Predict", "INVALID_ARGUMENT") == 2
    assert requests_total(m, "Predict", "UNAUTHENTICATED") == 1
    assert requests_total(m, "GetModelMetadata", "OK") == 1
    assert m[("npusim_request_latency_seconds_count", (("method", "Predict"),))] == 6
    assert m[("npusim_requests_in_flight", ())] == 0
    assert m[("npusim_device_runs_total", ())] == 3
    session = Session(pkg.model.stages[1].program)
    x = np.zeros((1, 3, 224, 224), np.float32)
    session.run(None, {"images": x})
    assert m[("npusim_device_simulated_seconds_total", ())] == pytest.approx(
        3 * session.last_stats.latency_us * 1e-6)
    assert 0 < m[("npusim_device_utilization", ())] < 1
    assert m[("npusim_devices", ())] == 2


def test_config_errors_name_the_problem(pkg, tmp_path):
    def refused(word, **kw):
        with pytest.raises(ServingConfigError, match=word):
            ServerConfig(pkg.path, **kw).validate()

    refused("need TLS", api_keys=KEYS[:1])
    refused("at most 2", tls_cert=pkg.cert, tls_key=pkg.key, api_keys=(*KEYS, "k" * 20))
    refused("not found", tls_cert=tmp_path / "nope.pem", tls_key=pkg.key)
    refused("both", tls_cert=pkg.cert)
    (tmp_path / "junk.pem").write_text("not a key")
    refused("not a valid PEM", tls_cert=pkg.cert, tls_key=tmp_path / "junk.pem")
    refused("shorter than 16", tls_cert=pkg.cert, tls_key=pkg.key, api_keys=("short",))
    with pytest.raises(ServingConfigError, match="package not found"):
        ServerConfig(tmp_path / "none.zip").validate()
    with pytest.raises(ServingConfigError, match="in use"):
        srv = start_server(pkg, tls=False, metrics_port=None)
        try:
            start_server(pkg, tls=False, metrics_port=None, port=srv.port)
        finally:
            srv.stop(0)


def test_serve_cli_refuses_bad_config(pkg, tmp_path, capsys):
    base = ["serve", str(pkg.path), "--port", "0"]
    cases = [
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pkg.key)],
         "not found"),
        (["--api-key", KEYS[0]], "need TLS"),
    ]
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(pkg.path) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith(".npub"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            dst.writestr(item, data)
    cases.append(([], None))
    for extra, word in cases:
        argv = base + extra if word else ["serve", str(tampered), "--port", "0"]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("npusim: error: "), err
        if word:
            assert word in err[0]


@pytest.mark.slow
def test_serve_cli_prints_ready_and_stops_on_sigterm(pkg):
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime.cli", "serve", str(pkg.path), "--port", "0",
         "--tls-cert", str(pkg.cert), "--tls-key", str(pkg.key), "--api-key", KEYS[0],
         "--devices", "2", "--grace", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny version 1 on 127.0.0.1:"), (line, proc.stderr)
        assert "TLS on" in line and "1 API key(s)" in line and "2 device(s)" in line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        from runtime.client import PredictionClient

        with PredictionClient("127.0.0.1", port, use_ssl=True, access_token=KEYS[0],
                              root_certificates=pkg.cert) as client:
            assert np.array_equal(client.score_image(pkg.images[2]), pkg.expected[2])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
