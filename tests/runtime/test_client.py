# SPDX-License-Identifier: Apache-2.0
"""The client under load, across a server restart, its retry policy, and ``npusim predict``."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest
from cli_helpers import assert_user_error, npusim
from serving_helpers import (
    CLASSES,
    KEYS,
    client_for,
    requests_total,
    scrape,
    start_server,
)

from npusim.runtime.cli import main
from npusim.runtime.serving.client import (
    PredictionClient,
    PredictionError,
    format_top,
    parse_address,
)
from npusim.runtime.serving.server import PredictionServer

pytest.importorskip("cryptography", reason="the test certificate needs cryptography")
pytestmark = pytest.mark.tf


def _load(server, pkg, clients: int, requests: int, on_progress=None, **client_kw):
    """``clients`` threads x ``requests`` each, every answer checked; returns the failures."""
    done = [0]
    lock = threading.Lock()

    def one_client(c: int) -> list[str]:
        failures = []
        with client_for(server, pkg, **client_kw) as client:
            for r in range(requests):
                k = (c + r) % len(pkg.images)
                try:
                    got = client.score_image(pkg.images[k])
                except PredictionError as exc:
                    failures.append(f"client {c} request {r}: {exc}")
                    continue
                if not np.array_equal(got, pkg.expected[k]):
                    failures.append(f"client {c} request {r}: wrong answer")
                with lock:
                    done[0] += 1
                    if on_progress:
                        on_progress(done[0])
        return failures

    with ThreadPoolExecutor(clients) as ex:
        return [f for fs in ex.map(one_client, range(clients)) for f in fs]


@pytest.mark.slow
def test_eight_clients_fifty_requests_each(server, pkg):
    before = requests_total(scrape(server), "Predict", "OK")
    assert _load(server, pkg, clients=8, requests=50) == []
    m = scrape(server)
    assert requests_total(m, "Predict", "OK") - before == 400
    assert m[("npusim_requests_in_flight", ())] == 0


@pytest.mark.slow
def test_clients_ride_through_a_server_restart(pkg):
    first = start_server(pkg)
    port, config = first.port, first.config
    halfway = threading.Event()
    second: list[PredictionServer] = []

    def restart() -> None:
        halfway.wait(60)
        first.stop(grace=5.0)
        time.sleep(0.3)  # clients see connection refused for a moment
        from dataclasses import replace

        second.append(PredictionServer(replace(config, port=port), model=pkg.model).start())

    restarter = threading.Thread(target=restart)
    restarter.start()
    try:
        failures = _load(first, pkg, clients=4, requests=30, retries=8,
                         on_progress=lambda n: n >= 40 and halfway.set())
    finally:
        restarter.join(60)
    try:
        assert second, "the second server did not start"
        assert failures == []
        served_after = requests_total(scrape(second[0]), "Predict", "OK")
        assert 0 < served_after < 120  # both servers answered a part of the 120
    finally:
        for srv in second:
            srv.stop(1.0)


def test_unavailable_is_retried_with_backoff_then_reported(pkg):
    srv = start_server(pkg, tls=False, metrics_port=None)
    port = srv.port
    srv.stop(0)  # nothing listens there now
    t0 = time.monotonic()
    with PredictionClient("127.0.0.1", port, retries=3, backoff=0.1, timeout=5) as client:
        with pytest.raises(PredictionError) as info:
            client.score_image(pkg.images[0])
    elapsed = time.monotonic() - t0
    assert info.value.code == grpc.StatusCode.UNAVAILABLE
    assert 0.35 <= elapsed < 5  # at least half of 0.1 + 0.2 + 0.4 s of backoff


@pytest.mark.parametrize("key, image, code", [
    (KEYS[0], b"junk", grpc.StatusCode.INVALID_ARGUMENT),
    ("wrong-key-00000000000000000", None, grpc.StatusCode.UNAUTHENTICATED),
])
def test_client_errors_are_not_retried(server, pkg, key, image, code):
    before = requests_total(scrape(server), "Predict", code.name)
    # one retry would first wait at least backoff / 2 = 2.5 s (equal jitter)
    with client_for(server, pkg, key=key, retries=5, backoff=5.0) as client:
        t0 = time.monotonic()
        with pytest.raises(PredictionError) as info:
            client.score_image(image or pkg.images[0])
    assert info.value.code == code and time.monotonic() - t0 < 2.0
    assert requests_total(scrape(server), "Predict", code.name) - before == 1


def test_oversized_request_is_not_retried(server, pkg):
    with client_for(server, pkg, retries=5, backoff=5.0) as client:  # a retry waits >= 2.5 s
        t0 = time.monotonic()
        with pytest.raises(PredictionError) as info:
            client.score_image(bytes(2 * 2**20))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert time.monotonic() - t0 < 2.0


def test_a_key_needs_tls():
    with pytest.raises(ValueError, match="plaintext"):
        PredictionClient("127.0.0.1", 8500, access_token=KEYS[0])


def test_parse_address_and_format_top():
    assert parse_address("localhost:8500") == ("localhost", 8500)
    assert parse_address("[::1]:9000") == ("::1", 9000)
    for bad in ("localhost", ":8500", "host:port", "host:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)
    probs = np.array([[0.1, 0.6, 0.3]], np.float32)
    assert format_top(probs, ["cat", "dog"], top=3) == [
        "  1. dog  0.600000", "  2. 2    0.300000", "  3. cat  0.100000"]


@pytest.mark.slow
def test_predict_cli_against_a_running_server(server, pkg, tmp_path):
    paths = []
    for i, image in enumerate(pkg.images[:2]):
        paths.append(tmp_path / f"img{i}.{'jpg' if i % 2 == 0 else 'png'}")
        paths[-1].write_bytes(image)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"class-{i}" for i in range(CLASSES)) + "\n")
    res = npusim("predict", *map(str, paths), "--address", f"127.0.0.1:{server.port}",
                 "--tls", "--root-cert", str(pkg.cert), "--labels", str(labels), "--top", "3",
                 "--api-key", KEYS[1], timeout=120)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 2 * 4
    for i, path in enumerate(paths):
        block = lines[4 * i:4 * i + 4]
        assert block[0] == str(path)
        expected = pkg.expected[i][0]
        best = int(np.argmax(expected))
        assert block[1].split()[:2] == ["1.", f"class-{best}"]
        assert float(block[1].split()[-1]) == pytest.approx(float(expected[best]), abs=1e-6)


def test_predict_cli_errors(server, pkg, tmp_path, capsys, monkeypatch):
    image = tmp_path / "img.jpg"
    image.write_bytes(pkg.images[0])
    address = ["--address", f"127.0.0.1:{server.port}", "--root-cert", str(pkg.cert)]

    def one_line(code: int, *words: str) -> None:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("npusim: error: "), err
        for w in words:
            assert w in err[0], err[0]

    monkeypatch.setenv("NPUSIM_API_KEY", "wrong-key-00000000000000000")
    assert main(["predict", str(image), *address]) == 2
    one_line(2, "UNAUTHENTICATED")
    monkeypatch.setenv("NPUSIM_API_KEY", KEYS[0])  # the key from the environment
    assert main(["predict", str(image), *address, "--top", "1"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == str(image)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert main(["predict", str(bad), *address]) == 2
    one_line(2, "INVALID_ARGUMENT")
    srv = start_server(pkg, tls=False, metrics_port=None)
    closed = srv.port
    srv.stop(0)
    monkeypatch.delenv("NPUSIM_API_KEY")
    assert main(["predict", str(image), "--address", f"127.0.0.1:{closed}",
                 "--retries", "0"]) == 1
    one_line(1, "UNAVAILABLE")
    assert main(["predict", str(image), "--address", "nowhere"]) == 2
    one_line(2, "HOST:PORT")
    assert main(["predict", str(tmp_path / "missing.jpg"), *address]) == 2
    one_line(2, "missing.jpg")


def test_predict_cli_key_without_tls_is_refused(tmp_path):
    res = npusim("predict", str(tmp_path / "x.jpg"), "--address", "127.0.0.1:1",
                 "--api-key", KEYS[0])
    assert_user_error(res, "plaintext")
