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
    gif_claiming,
    png_claiming,
    requests_total,
    scrape,
    start_server,
)

from npusim.runtime.cli import main
from npusim.runtime.serving.client import PredictionError
from npusim.runtime.serving.server import PredictionServer, ServerConfig, ServingConfigError

pytest.importorskip("cryptography", reason="the test certificate needs cryptography")
pytestmark = pytest.mark.tf

BAD = grpc.StatusCode


def _code(fn) -> PredictionError:
    with pytest.raises(PredictionError) as info:
        fn()
    assert "\n" not in str(info.value)
    return info.value


def test_authenticated_answer_is_the_direct_run_bit_for_bit(server, pkg):
    from npusim.runtime.session import Session

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
    from npusim.runtime.serving.client import PredictionClient

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


def test_unknown_model_name_and_version_are_not_found(server, pkg):
    # NOT_FOUND as in TF Serving (stock clients treat it as final: no retry)
    with client_for(server, pkg, model_name="resnet152", retries=5, backoff=5.0) as client:
        t0 = time.monotonic()
        err = _code(lambda: client.score_image(pkg.images[0]))
        assert err.code == BAD.NOT_FOUND and "resnet152" in err.details
        err = _code(client.metadata)
        assert err.code == BAD.NOT_FOUND and "resnet152" in err.details
        assert time.monotonic() - t0 < 2.0  # not retried
    with client_for(server, pkg) as client:
        for rpc, request in ((client._stub.Predict, _predict_request(pkg.images[0])),
                             (client._stub.GetModelMetadata, _metadata_request())):
            request.model_spec.name = "tiny"
            request.model_spec.version.value = 7
            with pytest.raises(grpc.RpcError) as info:
                rpc(request, timeout=10)
            assert info.value.code() == BAD.NOT_FOUND and "version 7" in info.value.details()


def _predict_request(*images: bytes):
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.array(images, dtype=object)))
    return request


def test_image_over_the_pixel_limit_is_refused_undecoded(server, pkg):
    bomb = png_claiming(10000, 10000)  # 69 bytes declaring 10^8 pixels
    runs = scrape(server)[("npusim_device_runs_total", ())]
    with client_for(server, pkg, retries=5, backoff=5.0) as client:
        for data in (bomb, gif_claiming(9000, 5000)):
            err = _code(lambda d=data: client.score_image(d))
            assert err.code == BAD.INVALID_ARGUMENT, err
            assert "pixels" in err.details and "40000000" in err.details, err
        assert "10000x10000" in _code(lambda: client.score_image(bomb)).details
        # a batch is refused as a whole when one of its images is over the limit
        err = _code(lambda: client.score_numpy_array(np.array([pkg.images[0], bomb],
                                                              dtype=object)))
        assert err.code == BAD.INVALID_ARGUMENT and "item 1" in err.details
    # the pipeline never ran: nothing was decoded
    assert scrape(server)[("npusim_device_runs_total", ())] == runs


def _hostile_requests(pkg):
    """(what, request, expected code, a word of the message) for hand-forged PredictRequests."""
    from tensorflow.core.framework import types_pb2

    image = pkg.images[0]
    cases = []

    def case(what, code, word, edit):
        request = _predict_request(image)
        edit(request, request.inputs["images"])
        cases.append((what, request, code, word))

    def dims(*sizes):
        def edit(r, t):
            del t.tensor_shape.dim[:]
            for size in sizes:
                t.tensor_shape.dim.add(size=size)
        return edit

    inv = BAD.INVALID_ARGUMENT
    case("negative dimension", inv, "shape", dims(-1))
    case("huge dimension", BAD.RESOURCE_EXHAUSTED, "batch", dims(2**62))
    case("huge rank", inv, "shape", dims(*[1] * 300))
    case("unknown rank", inv, "rank", lambda r, t: setattr(t.tensor_shape, "unknown_rank", True))
    case("more strings than the shape", inv, "strings", lambda r, t: t.string_val.append(image))
    case("fewer strings than the shape", inv, "strings", dims(3))
    case("no dtype", inv, "dtype", lambda r, t: setattr(t, "dtype", 0))
    case("unknown dtype", inv, "dtype", lambda r, t: setattr(t, "dtype", 999))
    case("resource dtype", inv, "dtype", lambda r, t: setattr(t, "dtype", types_pb2.DT_RESOURCE))
    case("reference dtype", inv, "dtype", lambda r, t: setattr(t, "dtype", types_pb2.DT_STRING_REF))
    case("strings in tensor_content", inv, "tensor_content",
         lambda r, t: setattr(t, "tensor_content", b"\0" * 8))
    case("floats in a string tensor", inv, "float_val", lambda r, t: t.float_val.append(1.0))
    case("empty image", inv, "not an image", lambda r, t: t.string_val.__setitem__(0, b""))
    case("truncated PNG header", inv, "truncated",
         lambda r, t: t.string_val.__setitem__(0, pkg.images[1][:20]))
    case("second unknown input", inv, "unknown input",
         lambda r, t: r.inputs["x" * 10000].CopyFrom(t))
    case("unknown output", inv, "output_filter", lambda r, t: r.output_filter.append("probs"))
    case("output named twice", inv, "twice", lambda r, t: r.output_filter.extend(
        ["output_alias", "output_alias"]))
    case("unknown signature", inv, "signature",
         lambda r, t: setattr(r.model_spec, "signature_name", "classify"))
    case("version label", inv, "label",
         lambda r, t: setattr(r.model_spec, "version_label", "stable"))
    case("no inputs", inv, "no inputs", lambda r, t: r.inputs.clear())
    return cases


def test_hostile_request_fields_are_refused_by_name(server, pkg):
    with client_for(server, pkg) as client:
        for what, request, code, word in _hostile_requests(pkg):
            with pytest.raises(grpc.RpcError) as info:
                client._stub.Predict(request, timeout=10)
            details = info.value.details()
            assert info.value.code() == code, (what, details)
            assert word in details and "\n" not in details and len(details) < 1100, (what, details)
        # bytes that are no PredictRequest at all: INVALID_ARGUMENT, not gRPC's INTERNAL
        raw = client._channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        for junk in (b"\xff" * 20, b"\x0a\x05\x0a\x03\xff\xfe\xfd"):
            with pytest.raises(grpc.RpcError) as info:
                raw(junk, timeout=10)
            assert info.value.code() == BAD.INVALID_ARGUMENT, info.value.details()
        # and the server still answers
        assert np.array_equal(client.score_image(pkg.images[0]), pkg.expected[0])


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
    from npusim.runtime.session import Session

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
    assert m[("npusim_request_latency_seconds_count",
              (("entrypoint", "GRPC"), ("method", "Predict")))] == 6
    assert m[("npusim_requests_in_flight", ())] == 0
    assert m[("npusim_device_runs_total", ())] == 3 + 1  # and the warm-up run
    session = Session(pkg.model.stages[1].program)
    x = np.zeros((1, 3, 224, 224), np.float32)
    session.run(None, {"images": x})
    assert m[("npusim_device_simulated_seconds_total", ())] == pytest.approx(
        4 * session.last_stats.latency_us * 1e-6)
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
        [sys.executable, "-m", "npusim.runtime.cli", "serve", str(pkg.path), "--port", "0",
         "--tls-cert", str(pkg.cert), "--tls-key", str(pkg.key), "--api-key", KEYS[0],
         "--devices", "2", "--grace", "2", "--rest-port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny version 1 on 127.0.0.1:"), (line, proc.stderr)
        assert "TLS on" in line and "1 API key(s)" in line and "2 device(s)" in line
        port = int(line.split("127.0.0.1:")[1].split()[0])
        rest_port = int(line.split("REST on 127.0.0.1:")[1].split(")")[0].split(",")[0])
        import http.client
        import json
        import ssl

        conn = http.client.HTTPSConnection("127.0.0.1", rest_port, timeout=30,
                                           context=ssl.create_default_context(
                                               cafile=str(pkg.cert)))
        conn.request("GET", "/v1/models/tiny")
        status = json.loads(conn.getresponse().read())["model_version_status"]
        assert status[0]["state"] == "AVAILABLE"
        conn.close()
        from npusim.runtime.serving.client import PredictionClient

        with PredictionClient("127.0.0.1", port, use_ssl=True, access_token=KEYS[0],
                              root_certificates=pkg.cert) as client:
            assert np.array_equal(client.score_image(pkg.images[2]), pkg.expected[2])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
