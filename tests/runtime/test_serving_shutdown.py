# SPDX-License-Identifier: Apache-2.0
"""The server's life cycle: warm-up before SERVING, a bounded queue, a stop that lets the
calls already received finish, and ``npusim serve`` ending promptly on a signal sent to
any of its threads."""

from __future__ import annotations

import collections
import ctypes
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from serving_helpers import (
    HookedModel,
    client_for,
    health_status,
    make_server,
    requests_total,
    scrape,
    start_server,
)

from npusim.runtime.serving.client import PredictionError
from npusim.runtime.serving.server import ServerConfig, ServingConfigError, serve

pytestmark = pytest.mark.tf


def _stub_and_request(server, image: bytes):
    """A raw Predict stub on a plaintext channel (no client retries) and a request."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    request = predict_pb2.PredictRequest()
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(np.array([image], dtype=object)))
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel), request


def _outcomes(calls) -> collections.Counter:
    codes = collections.Counter()
    for call in calls:
        try:
            call.result()
            codes["OK"] += 1
        except grpc.RpcError as exc:
            codes[exc.code().name] += 1
    return codes


def _until(condition, timeout: float = 30.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def test_health_is_serving_only_after_the_warm_up(pkg):
    release = threading.Event()
    model = HookedModel(pkg.model, lambda feeds: release.wait(30) if model.runs == 1 else None)
    srv = make_server(pkg, tls=False, metrics_port=None, model=model)
    starter = threading.Thread(target=srv.start)
    try:
        starter.start()
        _until(lambda: model.runs == 1 and srv.port)
        # the port answers, but the warm-up inference is still running
        for service in ("", "tensorflow.serving.PredictionService"):
            assert health_status(srv, pkg, service) == "NOT_SERVING"
        release.set()
        starter.join(30)
        assert health_status(srv, pkg) == "SERVING"
        assert model.runs == 1  # the warm-up went through the model
    finally:
        release.set()
        starter.join(30)
        srv.stop(1.0)


def test_a_failing_warm_up_refuses_to_start(pkg):
    def broken(feeds):
        raise RuntimeError("device on fire")

    with pytest.raises(ServingConfigError, match="warm-up inference failed: device on fire"):
        start_server(pkg, tls=False, metrics_port=None, model=HookedModel(pkg.model, broken))


def test_a_full_queue_refuses_at_once(pkg):
    release = threading.Event()
    on_server = threading.current_thread

    def block(feeds):
        if on_server().name.startswith("npusim-serve"):
            release.wait(30)

    srv = start_server(pkg, tls=False, max_queued=2, workers=1, devices=1,
                       model=HookedModel(pkg.model, block))
    channel, stub, request = _stub_and_request(srv, pkg.images[0])
    try:
        held = [stub.Predict.future(request, timeout=60) for _ in range(2)]
        _until(lambda: scrape(srv)[("npusim_requests_in_flight", ())] == 2)
        t0 = time.monotonic()
        with client_for(srv, pkg, key=None, retries=3, backoff=5.0) as client:
            with pytest.raises(PredictionError) as info:
                client.score_image(pkg.images[1])
        assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "max_queued" in info.value.details
        assert time.monotonic() - t0 < 2.0  # refused at once, and not retried
        assert health_status(srv, pkg) == "SERVING"  # health checks still get a thread
        release.set()
        assert _outcomes(held) == {"OK": 2}
        assert requests_total(scrape(srv), "Predict", "RESOURCE_EXHAUSTED") == 1
    finally:
        release.set()
        channel.close()
        srv.stop(1.0)


def test_stop_lets_the_calls_already_received_finish(pkg):
    # handlers that hold the GIL starve gRPC's polling thread, so a burst leaves calls in
    # the transport's queue; gRPC's shutdown alone answered some of them CANCELLED
    def busy(feeds):
        end = time.perf_counter() + 0.1
        while time.perf_counter() < end:
            pass

    srv = start_server(pkg, tls=False, metrics_port=None, max_queued=200,
                       model=HookedModel(pkg.model, busy))
    channel, stub, request = _stub_and_request(srv, pkg.images[0])
    try:
        calls = [stub.Predict.future(request, timeout=60) for _ in range(80)]
        t0 = time.monotonic()
        srv.stop(30.0)
        assert time.monotonic() - t0 < 30.0
        assert _outcomes(calls) == {"OK": 80}
    finally:
        channel.close()
        srv.stop(0)


def test_stop_cancels_what_overruns_the_grace_and_a_second_signal_cuts_it(pkg):
    entered, release = threading.Event(), threading.Event()

    def hang(feeds):
        if threading.current_thread().name.startswith("npusim-serve"):
            entered.set()
            release.wait(60)

    try:
        for grace, abort_after, bound in ((1.0, None, 2.5), (30.0, 0.3, 2.0)):
            entered.clear()
            srv = start_server(pkg, tls=False, metrics_port=None,
                               model=HookedModel(pkg.model, hang))
            channel, stub, request = _stub_and_request(srv, pkg.images[0])
            call = stub.Predict.future(request, timeout=60)
            assert entered.wait(30)
            abort = threading.Event()
            if abort_after is not None:
                threading.Timer(abort_after, abort.set).start()
            t0 = time.monotonic()
            srv.stop(grace, abort=abort)
            assert time.monotonic() - t0 < bound, (grace, abort_after)
            assert set(_outcomes([call])) <= {"UNAVAILABLE", "CANCELLED"}
            channel.close()
    finally:
        release.set()


def _signal_from_another_thread(sig: int, after: float = 0.0) -> threading.Thread:
    """A thread that sends ``sig`` to itself (not to the main thread) after ``after`` s."""
    def send() -> None:
        time.sleep(after)
        signal.pthread_kill(threading.get_ident(), sig)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="serve() handles signals on the main thread")
def test_serve_stops_on_a_signal_to_another_thread_even_during_start_up(pkg):
    config = ServerConfig(pkg.path, port=0, grace=1.0)
    servers = []
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def ready(server):
        servers.append(server)
        _signal_from_another_thread(signal.SIGTERM, after=0.2)

    t0 = time.monotonic()
    serve(config, on_ready=ready, model=pkg.model)
    assert time.monotonic() - t0 < 5.0 and servers[0].wait(0)  # stopped

    # a signal during the (long) start-up ends it without waiting for it to finish
    def stuck_warm_up(feeds):
        _signal_from_another_thread(signal.SIGINT).join()
        time.sleep(30)

    t0 = time.monotonic()
    serve(config, on_ready=servers.append, model=HookedModel(pkg.model, stuck_warm_up))
    assert time.monotonic() - t0 < 5.0 and len(servers) == 1  # never ready
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers  # given back


_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())

# the CLI with a model whose calls take 0.5 s (30 s for one image) on the server's threads
_SLOW_SERVE = """
import os, sys, threading, time
import npusim.runtime.serving.pipeline as pipeline
hang = open(os.environ["HANG_IMAGE"], "rb").read()
run = pipeline.ModelDefinition.run
def slow(self, feeds, pool=None):
    if threading.current_thread().name.startswith("npusim-serve"):
        time.sleep(30 if feeds["images"][0] == hang else 0.5)
    return run(self, feeds, pool)
pipeline.ModelDefinition.run = slow
from npusim.runtime.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _accepting_thread(pid: int, sig: int) -> int:
    """A thread of ``pid`` other than its main thread that does not block ``sig``."""
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{pid}/task")):
        status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        blocked = int(next(line.split()[1] for line in status.splitlines()
                           if line.startswith("SigBlk:")), 16)
        if tid != pid and not blocked & (1 << (sig - 1)):
            return tid
    raise AssertionError("every other thread blocks the signal")


@pytest.mark.slow
@pytest.mark.skipif(_TGKILL is None or not Path("/proc/self/task").is_dir(),
                    reason="needs Linux /proc and the tgkill syscall number of this machine")
def test_sigterm_to_any_thread_stops_the_cli_within_the_grace(pkg, tmp_path):
    """A burst in flight when SIGTERM lands on a gRPC/TensorFlow thread (not the main one):
    every call that fits in the grace is answered OK, the one that does not is cut at the
    grace, and the process is gone less than a second later."""
    grace = 3.0
    hang_image = tmp_path / "hang.jpg"
    hang_image.write_bytes(pkg.images[3])
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SERVE, "serve", str(pkg.path), "--port", "0",
         "--metrics-port", "0", "--devices", "2", "--workers", "4", "--grace", str(grace)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "HANG_IMAGE": str(hang_image)})
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving tiny version 1 on 127.0.0.1:"), (line, proc.stderr)
        port = int(line.split("127.0.0.1:")[1].split()[0])
        metrics = int(line.rsplit(":", 1)[1].rstrip(")\n"))

        srv = SimpleNamespace(port=port, metrics_port=metrics, config=SimpleNamespace(tls=False))
        assert health_status(srv, pkg) == "SERVING"
        channel, stub, request = _stub_and_request(srv, pkg.images[0])
        _, _, hang_request = _stub_and_request(srv, pkg.images[3])
        calls = [stub.Predict.future(request, timeout=60) for _ in range(6)]
        hung = stub.Predict.future(hang_request, timeout=60)
        _until(lambda: scrape(srv)[("npusim_requests_in_flight", ())] == 7)
        victim = _accepting_thread(proc.pid, signal.SIGTERM)
        libc = ctypes.CDLL(None, use_errno=True)
        t0 = time.monotonic()
        assert libc.syscall(_TGKILL, proc.pid, victim, signal.SIGTERM) == 0
        assert proc.wait(timeout=grace + 20) == 0
        exited = time.monotonic() - t0
        assert _outcomes(calls) == {"OK": 6}  # 6 x 0.5 s on 4 workers: well within grace
        assert set(_outcomes([hung])) <= {"UNAVAILABLE", "CANCELLED"}
        assert exited < grace + 1.0, exited
        err = proc.stderr.read()
        assert "SIGTERM: stopping" in err and "stopped" in err, err
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
