# SPDX-License-Identifier: Apache-2.0
"""TF Serving's REST API over real sockets: both predict forms equal to the gRPC client's
answer bit for bit, model status and metadata, every error class with its HTTP status
and JSON body, TLS and keys, the limits, the shared queue and metrics, the graceful stop,
and the README's curl walkthrough run as written (hostile bodies: ``test_rest_fuzz.py``)."""

from __future__ import annotations

import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest
from rest_helpers import PREDICT, Answer, b64, bits, call, connection
from serving_helpers import (
    CLASSES,
    KEYS,
    HookedModel,
    client_for,
    png_claiming,
    requests_total,
    scrape,
    start_server,
)

from npusim.runtime.serving.client import PredictionError

pytest.importorskip("cryptography", reason="the test certificate needs cryptography")
pytestmark = pytest.mark.tf

README = Path(__file__).resolve().parents[2] / "README.md"
# --- predict ---
def test_both_forms_answer_the_grpc_clients_floats_bit_for_bit(rest, pkg):
    with client_for(rest, pkg) as client:
        grpc_answers = [client.score_image(image) for image in pkg.images]
    for image, expected in zip(pkg.images, grpc_answers):
        bodies = [({"instances": [b64(image)]}, "predictions"),
                  ({"instances": [{"images": b64(image)}]}, "predictions"),
                  ({"inputs": [b64(image)]}, "outputs"),
                  ({"inputs": {"images": [b64(image)]}, "signature_name": "serving_default"},
                   "outputs")]
        for body, key in bodies:
            for path in (PREDICT, "/v1/models/tiny/versions/1:predict"):
                answer = call(rest, pkg, "POST", path, body)
                assert answer.status == 200, answer.data
                assert list(answer.json) == [key]
                assert np.array_equal(bits(answer.json[key]), bits(expected)), body.keys()
    # a batch of all four in one request, row by row
    answer = call(rest, pkg, "POST", PREDICT, {"instances": [b64(i) for i in pkg.images]})
    assert answer.status == 200
    assert np.array_equal(bits(answer.json["predictions"]), bits(np.concatenate(grpc_answers)))
    assert np.asarray(answer.json["predictions"]).shape == (4, CLASSES)


def test_json_floats_read_back_to_the_same_float32():
    from npusim.runtime.serving.jsontensor import Format, outputs_json

    rng = np.random.default_rng(7)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    values = bits.view(np.float32)
    values = values[np.isfinite(values)]
    edges = np.array([0.0, -0.0, 1.0, 0.1, 1e-45, 1.17549435e-38, 3.4028235e38, -3.4028235e38,
                      16777217.0, 2.0**-149], np.float32)
    values = np.concatenate([edges, values]).reshape(1, -1)
    for form in Format:
        text = outputs_json({"p": values}, form).decode()
        back = np.array(json.loads(text)[form.value], dtype=np.float32)
        assert np.array_equal(back.view(np.uint32), values.view(np.uint32))
    nonfinite = outputs_json({"p": np.float32([[np.nan, np.inf, -np.inf]])}, Format.ROW)
    assert nonfinite == b'{"predictions": [[NaN, Infinity, -Infinity]]}\n'  # TF Serving's tokens


# --- status and metadata ---
def test_model_status_answers_without_a_key(rest, pkg):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    # TF Serving matches the fixed words of a path in any case
    for path in ("/v1/models/tiny", "/v1/models/tiny/versions/1", "/V1/Models/tiny/VERSIONS/1"):
        answer = call(rest, pkg, "GET", path, key=None)
        assert answer.status == 200 and answer.json == expected, (path, answer.json)
    assert call(rest, pkg, "GET", "/v1/models/tiny/versions/7", key=None).status == 404
    assert "resnet" in call(rest, pkg, "GET", "/v1/models/resnet", key=None).error
    assert call(rest, pkg, "GET", "/v1/models", key=None).error == "Missing model name in request."


def test_metadata_is_the_grpc_signature_def_in_tf_servings_json(rest, pkg):
    answer = call(rest, pkg, "GET", "/v1/models/tiny/metadata")
    assert answer.status == 200
    tensor = {"name": "", "dtype": "", "tensor_shape": {"dim": [], "unknown_rank": False}}

    def info(name, dtype, dims):
        return dict(tensor, name=name, dtype=dtype, tensor_shape={
            "dim": [{"size": str(d), "name": ""} for d in dims], "unknown_rank": False})

    assert answer.json == {
        "model_spec": {"name": "tiny", "version": "1", "signature_name": "serving_default"},
        "metadata": {"signature_def": {"signature_def": {"serving_default": {
            "inputs": {"images": info("images", "DT_STRING", [-1])},
            "outputs": {"output_alias": info("output_alias", "DT_FLOAT", [-1, CLASSES])},
            "method_name": "tensorflow/serving/predict", "defaults": {}}}}}}
    assert call(rest, pkg, "GET", "/v1/models/tiny/versions/1/metadata").json == answer.json
    assert call(rest, pkg, "GET", "/v1/models/tiny/metadata", key=None).status == 401


# --- errors ---
_IMAGE = b64(b"\xff\xd8 never decoded: refused before")
_BODY = {"instances": [_IMAGE]}
_DEEP = '{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}"
_PREDICT_ERRORS = [  # (what, body, HTTP status, words of the message)
    ("malformed JSON", "instances = [1, 2]", 400, "JSON Parse error"),
    ("empty body", "", 400, "document is empty"),
    ("not an object", "[1, 2]", 400, "Is not object"),
    ("not UTF-8", b'{"instances": ["\xff\xfe"]}', 400, "not UTF-8"),
    ("deep nesting", _DEEP, 400, "nests too deeply"),
    ("huge integer", '{"instances": [' + "9" * 5000 + "]}", 400, "digits"),
    ("huge float", '{"instances": [1e999999]}', 400, "Number is not of expected type: string"),
    ("number for a string", {"instances": [3]}, 400, "not of expected type: string"),
    ("NaN literal", '{"instances": [NaN]}', 400, "NaN Type: Number"),
    ("bad base64", {"instances": [{"b64": "!!not base64"}]}, 400, "base64"),
    ("truncated base64", {"instances": [{"b64": "QUJDR"}]}, 400, "base64"),
    ("object that is not b64", {"instances": [[{"b65": "x"}]]}, 400, "base64"),
    ("mismatched lengths", {"instances": [[_IMAGE], [_IMAGE, _IMAGE]]}, 400,
     "Expecting tensor size: 1 but got: 2"),
    ("ragged columns", {"inputs": [[_IMAGE], [_IMAGE, _IMAGE]]}, 400,
     "unexpected size: 2 at level: 1"),
    ("wrong rank", {"instances": [[_IMAGE]]}, 400, "shape [1, 1]"),
    ("wrong input name (row)", {"instances": [{"pixels": _IMAGE}]}, 400,
     "unknown input 'pixels'"),
    ("wrong input name (columnar)", {"inputs": {"images": [_IMAGE], "pixels": [_IMAGE]}}, 400,
     "unknown input 'pixels'"),
    ("missing named input", {"inputs": {}}, 400, "Missing named input: images"),
    ("both forms", {"instances": [_IMAGE], "inputs": [_IMAGE]}, 400, "only one"),
    ("neither form", {"instance": [_IMAGE]}, 400, "Missing 'inputs' or 'instances' key"),
    ("empty instances", {"instances": []}, 400, "No values"),
    ("instances not a list", {"instances": _IMAGE}, 400, "list/array"),
    ("objects and values mixed", {"instances": [{"images": _IMAGE}, _IMAGE]}, 400,
     "Expecting object"),
    ("signature not a string", {"signature_name": 1, **_BODY}, 400,
     "'signature_name' key must be a string"),
    ("unknown signature", {"signature_name": "x", **_BODY}, 400, "unknown signature 'x'"),
    ("duplicate key", '{"instances": [], "instances": [1]}', 400, "appears twice"),
    ("not an image", {"instances": [b64(b"not a picture")]}, 400, "not an image"),
    ("text for bytes", {"instances": ["a cat"]}, 400, "not an image"),
    ("pixel bomb", {"instances": [b64(png_claiming(10000, 10000))]}, 400, "10000x10000"),
    ("unpaired surrogate", '{"instances": ["\\ud800"]}', 400, "surrogate"),
    ("batch over max_batch", {"instances": [_IMAGE] * 5}, 429, "batch of 5"),
]
ERRORS = [(what, "POST", PREDICT, body, {}, status, words)
          for what, body, status, words in _PREDICT_ERRORS] + [
    # (what, method, path, body, headers, HTTP status, words of the message)
    ("unknown model", "POST", "/v1/models/resnet:predict", _BODY, {}, 404, "'resnet' not found"),
    ("unknown version", "POST", "/v1/models/tiny/versions/7:predict", _BODY, {}, 404,
     "no version 7"),
    ("version over int64", "POST", "/v1/models/tiny/versions/" + "9" * 30 + ":predict", _BODY,
     {}, 400, "Failed to convert version"),
    ("version label", "POST", "/v1/models/tiny/labels/stable:predict", _BODY, {}, 400,
     "labels are not supported"),
    ("model name not UTF-8", "POST", "/v1/models/%ff:predict", _BODY, {}, 400, "UTF-8"),
    ("no key", "POST", PREDICT, _BODY, {"Authorization": ""}, 401, "API key"),
    ("wrong key", "POST", PREDICT, _BODY, {"Authorization": "Bearer " + "k" * 30}, 401,
     "API key"),
    ("key without Bearer", "POST", PREDICT, _BODY, {"Authorization": KEYS[0]}, 401, "API key"),
    ("classify", "POST", "/v1/models/tiny:classify", {"examples": []}, {}, 501, "classify"),
    ("GET on predict", "GET", PREDICT, None, {}, 405, "use POST"),
    ("POST on status", "POST", "/v1/models/tiny", _BODY, {}, 405, "use GET"),
    ("PUT", "PUT", "/v1/models/tiny/metadata", _BODY, {}, 405, "use GET"),
    ("unknown path", "GET", "/v2/models/tiny", None, {}, 404, "no endpoint '/v2/models/tiny'"),
    ("path past the verb", "POST", PREDICT + "/x", _BODY, {}, 404, "no endpoint"),
    ("unknown method", "BREW", PREDICT, None, {}, 501, "Unsupported method"),
    ("chunked body", "POST", PREDICT, None, {"Transfer-Encoding": "chunked"}, 411, "chunked"),
    ("no Content-Length", "POST", PREDICT, None, {"Content-Length": None}, 411,
     "needs a Content-Length"),
    ("bad Content-Length", "POST", PREDICT, None, {"Content-Length": "1_0"}, 400,
     "Content-Length"),
]


@pytest.mark.parametrize("case", ERRORS, ids=[c[0] for c in ERRORS])
def test_every_error_has_its_status_and_a_one_line_json_error(rest, pkg, case):
    what, method, path, body, headers, status, words = case
    if headers.get("Content-Length", "") is None:  # a request with no length at all
        answer = _raw(rest, pkg, f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                 f"Bearer {KEYS[0]}\r\n\r\n".encode())
    else:
        answer = call(rest, pkg, method, path, body, headers=headers)
    assert answer.status == status, (what, answer.data)
    assert answer.headers["Content-Type"] == "application/json"
    assert words in answer.error, (what, answer.error)
    if status == 405:
        assert answer.headers["Allow"] == ("POST" if "POST" in words else "GET")
    if status == 401:
        assert answer.headers["WWW-Authenticate"] == "Bearer"


def _raw(server, pkg, head: bytes, timeout: float = 10) -> Answer:
    """Send ``head`` (a request's bytes, perhaps without its body) and read the answer."""
    context = ssl.create_default_context(cafile=str(pkg.cert))
    with socket.create_connection(("127.0.0.1", server.rest_port), timeout=timeout) as plain:
        with context.wrap_socket(plain, server_hostname="localhost") as sock:
            sock.sendall(head)
            response = http.client.HTTPResponse(sock)
            response.begin()
            return Answer(response, response.read())


# --- limits, queue, metrics ---
@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100-continue"])
def test_an_oversized_body_is_refused_before_it_is_read(rest, pkg, expect):
    size = 64 * 2**20  # never sent: the server answers from the headers
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEYS[0]}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {size}\r\n"
            + ("Expect: 100-continue\r\n" if expect else "") + "\r\n").encode()
    t0 = time.monotonic()
    answer = _raw(rest, pkg, head)
    assert time.monotonic() - t0 < 2.0
    assert answer.status == 413 and answer.headers["Connection"] == "close"
    assert f"{size} bytes is larger than this server's limit of {2**20}" in answer.error


def test_a_body_that_fits_is_read_after_100_continue(rest, pkg):
    body = json.dumps({"instances": [b64(pkg.images[0])]}).encode()
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEYS[0]}\r\n"
            f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\n\r\n").encode()
    context = ssl.create_default_context(cafile=str(pkg.cert))
    with socket.create_connection(("127.0.0.1", rest.rest_port), timeout=10) as plain:
        with context.wrap_socket(plain, server_hostname="localhost") as sock:
            sock.sendall(head)
            interim = b""
            while not interim.endswith(b"\r\n\r\n"):
                interim += sock.recv(1)
            assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
            sock.sendall(body)
            response = http.client.HTTPResponse(sock)
            response.begin()
            answer = Answer(response, response.read())
    assert answer.status == 200
    assert np.array_equal(bits(answer.json["predictions"]), bits(pkg.expected[0]))


def test_a_full_queue_answers_429_at_once_for_both_apis(pkg):
    release = threading.Event()

    def block(feeds):
        if threading.current_thread().name.startswith(("npusim-rest-", "npusim-serve")):
            release.wait(30)

    srv = start_server(pkg, rest_port=0, max_queued=2, workers=1, devices=1,
                       model=HookedModel(pkg.model, block))
    body = {"instances": [b64(pkg.images[0])]}
    try:
        with ThreadPoolExecutor(2) as pool:
            held = [pool.submit(call, srv, pkg, "POST", PREDICT, body) for _ in range(2)]
            _until(lambda: scrape(srv)[("npusim_requests_in_flight", ())] == 2)
            t0 = time.monotonic()
            answer = call(srv, pkg, "POST", PREDICT, body)
            assert answer.status == 429 and "max_queued" in answer.error
            # the gRPC side shares the queue: it is full for gRPC as well
            with client_for(srv, pkg, retries=0) as client:
                with pytest.raises(PredictionError) as info:
                    client.score_image(pkg.images[1])
            assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert time.monotonic() - t0 < 2.0
            assert call(srv, pkg, "GET", "/v1/models/tiny", key=None).status == 200
            release.set()
            assert [h.result().status for h in held] == [200, 200]
        m = scrape(srv)
        assert requests_total(m, "Predict", "RESOURCE_EXHAUSTED", "REST") == 1
        assert requests_total(m, "Predict", "RESOURCE_EXHAUSTED", "GRPC") == 1
        assert requests_total(m, "Predict", "OK", "REST") == 2
    finally:
        release.set()
        srv.stop(1.0)


def _until(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_metrics_count_rest_calls_beside_grpc_ones(rest, pkg):
    before = scrape(rest)
    for image in pkg.images[:2]:
        assert call(rest, pkg, "POST", PREDICT, {"instances": [b64(image)]}).status == 200
    assert call(rest, pkg, "POST", PREDICT, {"instances": [3]}).status == 400
    assert call(rest, pkg, "POST", PREDICT, {"instances": [3]}, key=None).status == 401
    assert call(rest, pkg, "GET", "/v1/models/tiny/metadata").status == 200
    assert call(rest, pkg, "GET", "/v1/models/tiny", key=None).status == 200
    with client_for(rest, pkg) as client:
        client.score_image(pkg.images[0])
    after = scrape(rest)

    def grew(method, code, entrypoint="REST"):
        return (requests_total(after, method, code, entrypoint)
                - requests_total(before, method, code, entrypoint))

    assert grew("Predict", "OK") == 2 and grew("Predict", "OK", "GRPC") == 1
    assert grew("Predict", "INVALID_ARGUMENT") == 1 and grew("Predict", "UNAUTHENTICATED") == 1
    assert grew("GetModelMetadata", "OK") == 1 and grew("GetModelStatus", "OK") == 1
    latency = ("npusim_request_latency_seconds_count", (("entrypoint", "REST"),
                                                        ("method", "Predict")))
    assert after[latency] - before.get(latency, 0) == 4
    assert after[("npusim_requests_in_flight", ())] == 0


# --- TLS, keys, connections ---
def test_tls_and_both_rotated_keys(rest, pkg):
    for key in KEYS:
        answer = call(rest, pkg, "POST", PREDICT, {"instances": [b64(pkg.images[1])]}, key=key)
        assert answer.status == 200
    # plain HTTP to the TLS port: told so in one line, and nothing else in clear text
    with socket.create_connection(("127.0.0.1", rest.rest_port), timeout=10) as sock:
        sock.sendall(b"GET /v1/models/tiny HTTP/1.1\r\nHost: x\r\n\r\n")
        response = http.client.HTTPResponse(sock)
        response.begin()
        answer = Answer(response, response.read())
    assert answer.status == 400 and "https://" in answer.error
    # a certificate the client does not trust: the handshake fails
    with pytest.raises(ssl.SSLError):
        context = ssl.create_default_context()
        with socket.create_connection(("127.0.0.1", rest.rest_port), timeout=10) as plain:
            context.wrap_socket(plain, server_hostname="localhost")


def test_keep_alive_serves_requests_one_after_another(rest, pkg):
    conn = connection(rest, pkg)
    try:
        for image, expected in zip(pkg.images, pkg.expected):
            conn.request("POST", PREDICT, body=json.dumps({"instances": [b64(image)]}),
                         headers={"Authorization": f"Bearer {KEYS[0]}"})
            response = conn.getresponse()
            answer = Answer(response, response.read())
            assert answer.status == 200 and response.getheader("Connection") is None
            assert np.array_equal(bits(answer.json["predictions"]), bits(expected))
    finally:
        conn.close()


def test_plaintext_server_without_keys(pkg):
    srv = start_server(pkg, tls=False, rest_port=0, metrics_port=None)
    try:
        answer = call(srv, pkg, "POST", PREDICT, {"inputs": [b64(pkg.images[2])]}, key=None)
        assert answer.status == 200
        assert np.array_equal(bits(answer.json["outputs"]), bits(pkg.expected[2]))
    finally:
        srv.stop(1.0)


def test_stop_lets_rest_calls_in_flight_finish(pkg):
    started = threading.Semaphore(0)

    def slow(feeds):
        if threading.current_thread().name.startswith("npusim-rest-"):
            started.release()
            time.sleep(0.5)

    srv = start_server(pkg, rest_port=0, metrics_port=None, devices=1, workers=1,
                       model=HookedModel(pkg.model, slow))
    port, body = srv.rest_port, {"instances": [b64(pkg.images[3])]}
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(call, srv, pkg, "POST", PREDICT, body) for _ in range(3)]
        assert started.acquire(timeout=30)  # one runs, two wait for the worker
        t0 = time.monotonic()
        srv.stop(grace=10.0)
        answers = [c.result(timeout=30) for c in calls]
    assert [a.status for a in answers] == [200, 200, 200]
    assert all(np.array_equal(bits(a.json["predictions"]), bits(pkg.expected[3]))
               for a in answers)
    assert time.monotonic() - t0 < 10.0
    with pytest.raises(OSError):  # the port is closed
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


def test_stop_cancels_rest_calls_still_waiting_after_the_grace(pkg):
    release = threading.Event()

    def block(feeds):
        if threading.current_thread().name.startswith("npusim-rest-"):
            release.wait(30)

    srv = start_server(pkg, rest_port=0, metrics_port=None, devices=1, workers=1,
                       model=HookedModel(pkg.model, block))
    body = {"instances": [b64(pkg.images[0])]}
    try:
        with ThreadPoolExecutor(2) as pool:
            calls = [pool.submit(call, srv, pkg, "POST", PREDICT, body) for _ in range(2)]
            _until(lambda: srv.metrics.registry.get_sample_value("npusim_requests_in_flight")
                   == 2)  # one runs, one waits for the worker
            t0 = time.monotonic()
            stopper = threading.Thread(target=srv.stop, args=(0.5,))
            stopper.start()
            time.sleep(1.0)  # the grace is over: the waiting call has its answer, 503
            release.set()  # the running one ends, late, and still answers
            stopper.join(30)
            statuses = sorted(c.result(timeout=30).status for c in calls)
        assert statuses == [200, 503]
        assert time.monotonic() - t0 < 5.0
    finally:
        release.set()
        srv.stop(0)


# --- the README's curl walkthrough ---
def _readme_block(marker: str) -> str:
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", README.read_text(), flags=re.S)
              if marker in b]
    assert len(blocks) == 1, f"the README has no single sh block with {marker!r}"
    return blocks[0]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_the_readme_curl_example_runs_as_written(rest, pkg, tmp_path):
    (tmp_path / "cat.jpg").write_bytes(pkg.images[1])
    (tmp_path / "server.crt").write_bytes(pkg.cert.read_bytes())
    (tmp_path / "keys.txt").write_text(f"{KEYS[0]}\n{KEYS[1]}\n")
    script = _readme_block(":predict")
    # the walkthrough's server is resnet50 on 8501; this one is the test package's
    script = script.replace("8501", str(rest.rest_port)).replace("resnet50", "tiny")
    res = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    answers = [json.loads(chunk) for chunk in re.split(r"(?<=\})\s*\n(?=\{)", res.stdout)]
    status, predict = answers[0], answers[-1]
    assert status["model_version_status"][0]["state"] == "AVAILABLE"
    with client_for(rest, pkg) as client:
        expected = client.score_image(pkg.images[1])
    assert np.array_equal(bits(predict["predictions"]), bits(expected))


# --- life cycle and configuration ---
def test_status_is_loading_until_the_warm_up_has_run(pkg):
    from serving_helpers import make_server

    release = threading.Event()
    model = HookedModel(pkg.model, lambda feeds: release.wait(30) if model.runs == 1 else None)
    srv = make_server(pkg, tls=False, metrics_port=None, rest_port=0, model=model)
    starter = threading.Thread(target=srv.start)
    try:
        starter.start()
        _until(lambda: model.runs == 1 and srv.rest_port)
        state = call(srv, pkg, "GET", "/v1/models/tiny", key=None).json
        assert state["model_version_status"][0]["state"] == "LOADING"
        release.set()
        starter.join(30)
        state = call(srv, pkg, "GET", "/v1/models/tiny", key=None).json
        assert state["model_version_status"][0]["state"] == "AVAILABLE"
    finally:
        release.set()
        starter.join(30)
        srv.stop(1.0)


def test_rest_port_configuration_errors(pkg):
    from npusim.runtime.serving.server import ServerConfig, ServingConfigError

    for kw, words in ((dict(port=8500, rest_port=8500), "REST port must differ"),
                      (dict(metrics_port=9100, rest_port=9100), "REST port must differ"),
                      (dict(rest_port=70000), "REST port 70000")):
        with pytest.raises(ServingConfigError, match=words):
            ServerConfig(pkg.path, **kw).validate()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(ServingConfigError, match="cannot serve the REST API on 127.0.0.1"):
            start_server(pkg, tls=False, metrics_port=None, rest_port=taken.getsockname()[1])


def test_connections_past_the_cap_are_closed_at_once(pkg):
    srv = start_server(pkg, rest_port=0, metrics_port=None, max_queued=1)
    cap = srv._rest.max_connections
    idle = []
    try:
        for _ in range(cap):  # connected, silent: each holds a thread until its timeout
            idle.append(socket.create_connection(("127.0.0.1", srv.rest_port), timeout=10))
        _until(lambda: srv._rest._open == cap)
        with socket.create_connection(("127.0.0.1", srv.rest_port), timeout=10) as extra:
            assert extra.recv(1) == b""  # closed by the server, not left waiting
        for sock in idle:
            sock.close()
        _until(lambda: srv._rest._open == 0)
        assert call(srv, pkg, "GET", "/v1/models/tiny", key=None).status == 200
    finally:
        for sock in idle:
            sock.close()
        srv.stop(1.0)
