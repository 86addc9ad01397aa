# SPDX-License-Identifier: Apache-2.0
"""A TensorFlow Serving-compatible gRPC server for a pipeline package.

It speaks the stock ``tensorflow.serving.PredictionService`` protocol, so any TF
Serving client (the Azure accelerated-models SDK, ``npusim.runtime.serving.client``, grpcurl
with the TF Serving protos) can call it: ``Predict`` takes ``inputs['images']``,
a DT_STRING tensor of raw JPEG/PNG bytes, and answers every final output of the
pipeline by name (``outputs['output_alias']`` for a featurizer pipeline);
``GetModelMetadata`` answers the ``signature_def`` as TF Serving does. With
``rest_port`` it serves TF Serving's REST API as well (:mod:`npusim.runtime.serving.rest`),
through the same checks, queue, keys and metrics.

Security: with a TLS certificate and key the server listens with TLS, and then
every call except the gRPC health service needs ``authorization: Bearer <key>``
with one of at most two configured keys (two, so that a key can be rotated
without downtime). Keys without TLS are refused at start: a key sent in
plaintext is given away. The server listens on 127.0.0.1 unless told otherwise:
exposing it on a network is a deliberate choice (``host="0.0.0.0"``).

Limits: a request over ``max_request_bytes`` or with a batch over ``max_batch`` is
refused with RESOURCE_EXHAUSTED, as is a Predict call when ``max_queued`` calls are
already held (running or waiting for one of ``workers``); an image whose header
declares more than ``max_image_pixels`` is refused with INVALID_ARGUMENT before it is
decoded (:mod:`npusim.runtime.serving.service` checks every request field). A model name or
version the server does not serve is NOT_FOUND, as in TF Serving.

Life cycle: the health service answers NOT_SERVING until one warm-up inference has
run through the pipeline, then SERVING. On stop (SIGINT or SIGTERM for :func:`serve`)
it answers NOT_SERVING again, takes in the calls the transport had already received,
closes the port and gives the calls it holds the rest of ``grace`` to finish.

Metrics (Prometheus text format, plain HTTP, no key: bind it where only the
scraper can reach it) are served on ``metrics_port`` from a registry of this
server only:

- ``npusim_requests_total{entrypoint,method,code}``: calls by API (``GRPC`` or ``REST``),
  method (the gRPC name; the REST model status is ``GetModelStatus``) and status code
  (the gRPC code a REST answer maps from); calls refused before they reach the
  server, such as a gRPC message over ``max_request_bytes``, a failed TLS handshake or
  a request to a REST path that does not exist, are not counted;
- ``npusim_request_latency_seconds{entrypoint,method}``: latency histogram;
- ``npusim_requests_in_flight``;
- ``npusim_device_utilization``: busy seconds over wall seconds since the start,
  per device (the mean over the pool);
- ``npusim_device_simulated_seconds_total``, ``npusim_device_busy_seconds_total``,
  ``npusim_device_runs_total``: from ``DevicePool.stats()`` (the warm-up run included).

Example:
    >>> from npusim.runtime.serving.server import PredictionServer, ServerConfig  # doctest: +SKIP
    >>> server = PredictionServer(ServerConfig("resnet50.zip", port=0))  # doctest: +SKIP
    >>> server.start(); print(server.port)                               # doctest: +SKIP
    >>> server.stop(grace=5.0)                                           # doctest: +SKIP

or ``npusim serve resnet50.zip --port 8500``.
"""

from __future__ import annotations

import logging
import select
import signal
import socket
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from npusim.runtime.serving.config import ServerConfig, ServingConfigError
from npusim.runtime.serving.gate import Gate, Metrics
from npusim.runtime.serving.rest import RestServer
from npusim.runtime.serving.service import (
    SIGNATURE_NAME,
    PredictionServicer,
    RequestError,
    one_line,
    tf_apis,
    warmup_feeds,
)

__all__ = ["SIGNATURE_NAME", "PredictionServer", "RequestError", "ServerConfig",
           "ServingConfigError", "serve"]

log = logging.getLogger("npusim.serving")

SERVICE_NAME = "tensorflow.serving.PredictionService"
_SPARE_THREADS = 4  # beyond max_queued: health checks and metadata never wait for Predict
_QUIET = 0.25  # seconds without a new call after which the transport has handed over all
_MAX_DRAIN = 2.0  # ... or at most this long (or half the grace) under a steady stream of calls


class PredictionServer:
    """One gRPC server for one package.

    ``model`` may be given already loaded (a ``ModelDefinition``), for example to
    restart a server on the same port without reloading the package.
    """

    def __init__(self, config: ServerConfig, model=None) -> None:
        config.validate(package=model is None)
        self.config = config
        self.model = model
        self.pool = None
        self.metrics: Metrics | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self.rest_port: int | None = None
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._gate: Gate | None = None
        self._servicer: PredictionServicer | None = None
        self._httpd = None
        self._rest: RestServer | None = None

    @property
    def address(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{host}:{self.port}"

    def start(self) -> PredictionServer:
        """Load the package (if not given), bind the ports and start answering."""
        from npusim.runtime.device import DevicePool
        from npusim.runtime.serving.package import load_package
        from npusim.runtime.serving.pipeline import PipelineError

        if self._server is not None:
            raise RuntimeError("the server is already started")
        cfg = self.config
        if self.model is None:
            log.info("loading %s", cfg.package)
            try:
                self.model = load_package(cfg.package, trust_keys=cfg.trust_keys)
            except PipelineError as exc:
                raise ServingConfigError(one_line(exc)) from None
        a = tf_apis()
        self.pool = DevicePool(cfg.devices, self.model.device_config())
        self.metrics = Metrics(self.pool, cfg.devices)
        self._gate = Gate(tuple(k.encode() for k in cfg.api_keys), self.metrics)
        # a thread for every Predict call the server may hold, and a few for health checks and
        # metadata: calls wait for a worker in PredictionServicer, not in the executor's queue
        threads = cfg.max_queued + _SPARE_THREADS
        server = grpc.server(
            futures.ThreadPoolExecutor(threads, thread_name_prefix="npusim-serve"),
            interceptors=[self._gate],
            options=[("grpc.max_receive_message_length", cfg.max_request_bytes),
                     ("grpc.max_send_message_length", -1),
                     # a second server on a busy port must fail, not share it silently
                     ("grpc.so_reuseport", 0)],
            # a flood of calls of any kind: gRPC refuses (RESOURCE_EXHAUSTED) beyond this
            maximum_concurrent_rpcs=2 * threads)
        self._servicer = PredictionServicer(self.model, self.pool, cfg)
        a.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(self._servicer,
                                                                              server)
        self._health = health.HealthServicer()
        self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)  # until warmed up
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        target = f"[{cfg.host}]:{cfg.port}" if ":" in cfg.host else f"{cfg.host}:{cfg.port}"
        try:
            if cfg.tls:
                creds = grpc.ssl_server_credentials(
                    [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())])
                port = server.add_secure_port(target, creds)
            else:
                port = server.add_insecure_port(target)
        except RuntimeError:
            port = 0
        if not port:
            raise ServingConfigError(f"cannot listen on {target}: the address is in use or "
                                     "not available here")
        server.start()
        self._server, self.port = server, port
        try:  # whatever goes wrong from here (a signal, too), nothing is left running
            if cfg.metrics_port is not None:
                try:
                    self._httpd, _ = start_http_server(cfg.metrics_port, cfg.host,
                                                       registry=self.metrics.registry)
                except OSError as exc:
                    raise ServingConfigError(
                        f"cannot serve metrics on {cfg.host}:{cfg.metrics_port}: "
                        f"{exc.strerror or exc}") from None
                self.metrics_port = self._httpd.server_address[1]
            if cfg.rest_port is not None:
                self._rest = RestServer(cfg, self._servicer, self._gate, self.metrics)
                self.rest_port = self._rest.start()
            self._warm_up()
        except BaseException:
            self.stop(None)
            raise
        self._set_health(health_pb2.HealthCheckResponse.SERVING)
        if self._rest is not None:
            self._rest.state = "AVAILABLE"
        log.debug("serving %s version %s on %s", self.model.name, self.model.version,
                  self.address)
        return self

    def _set_health(self, status) -> None:
        for service in ("", SERVICE_NAME):
            self._health.set(service, status)

    def _warm_up(self) -> None:
        """One inference through the pipeline before the server reports SERVING, so that the
        first request does not pay for TensorFlow's tracing and the device program load."""
        from npusim.runtime.serving.pipeline import PipelineInputError

        t0 = time.perf_counter()
        try:
            self.model.run(warmup_feeds(self.model), pool=self.pool)
        except PipelineInputError as exc:  # inputs a synthetic image does not fit: no harm
            log.warning("warm-up inference skipped: %s", one_line(exc))
            return
        except Exception as exc:  # noqa: BLE001 - a model that cannot run is not served
            raise ServingConfigError(f"the warm-up inference failed: {one_line(exc)}") from None
        log.info("warm-up inference: %.2f s", time.perf_counter() - t0)

    def stop(self, grace: float | None = None, abort: threading.Event | None = None) -> None:
        """Stop, giving the calls already received up to ``grace`` seconds to finish.

        Health reports NOT_SERVING at once. gRPC's shutdown would cancel the calls its
        transport has received but not yet handed over (a busy server has a backlog of
        them), so the server first keeps taking calls, starting no new run meanwhile,
        until none has arrived for a quarter of a second (at most two seconds, or half the
        grace, under a steady stream of calls); then it closes the port and the calls it
        holds, running or waiting for a worker, get the rest of the grace before gRPC
        cancels them. The REST port takes in its connections alike, then closes;
        its requests get the same grace.
        ``grace`` None or 0 cancels everything now; ``abort`` set (a second signal) cuts
        the grace short.
        """
        server = self._server
        if server is None:
            return
        t0 = time.monotonic()
        self._health.enter_graceful_shutdown()
        rest = self._rest
        if rest is not None:
            rest.state = "UNLOADING"
        remaining = None
        if grace:
            # no new run starts meanwhile: runs holding the GIL would starve gRPC's polling
            # thread, which hands the backlog over one call at a time
            drain = min(grace / 2, _MAX_DRAIN)
            self._servicer.pause(True)
            while (time.monotonic() - t0 < drain and self._gate.quiet_for() < _QUIET
                   and not (abort is not None and abort.is_set())):
                time.sleep(0.02)
            self._servicer.pause(False)
            log.debug("took in calls for %.2f s before closing", time.monotonic() - t0)
            remaining = max(t0 + grace - time.monotonic(), 0.0)
        if rest is not None:
            rest.close()
        done = server.stop(remaining)
        patience = time.monotonic() + (remaining or 0.0) + 1.0
        while not done.wait(0.05):
            if abort is not None and abort.is_set() and remaining:
                remaining = None
                server.stop(None)  # cancels every call now; returns once they are gone
            if time.monotonic() > patience:  # handlers still busy after their calls ended
                log.warning("stopped waiting for calls still running after the grace period")
                break
        if rest is not None:
            rest.finish(t0 + grace if grace else None, abort)
            self._rest = None
        self._server = None
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        self._rest: RestServer | None = None

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the server stops (True) or ``timeout`` passes (False)."""
        server = self._server
        if server is None:
            return True
        return not server.wait_for_termination(timeout)  # grpc answers "timed out?"

    def __enter__(self) -> PredictionServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(self.config.grace)


class _Interrupted(BaseException):
    """A stop signal that arrived while the server was starting."""


class _StopSignals:
    """SIGINT and SIGTERM as two events (the first signal, and any after it), whichever
    thread the kernel delivers them to.

    Python runs signal handlers on the main thread only, between bytecodes: a main thread
    parked in an untimed wait never gets to run one when the signal lands on one of the
    server's other threads (gRPC's, TensorFlow's). The C-level handler does run on the
    thread that received the signal and writes the signal number to the wakeup fd; the
    main thread sleeps in ``select`` on it, so it wakes at once and runs the handler. (Blocking
    the signals and ``sigwait`` on the main thread would not do: a signal sent to one
    other thread with ``tgkill`` stays pending on that thread forever.) The ``select`` has a
    timeout as a second line of defence.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> _StopSignals:
        self.first, self.again = threading.Event(), threading.Event()
        self.name = ""
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._previous_fd = signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    starting = False
    """While set, a signal interrupts the start-up (which can take many seconds)."""

    def _handle(self, signum: int, frame) -> None:
        (self.again if self.first.is_set() else self.first).set()
        self.name = self.name or signal.Signals(signum).name
        if self.starting:
            raise _Interrupted(self.name)

    def wait(self) -> None:
        """Return once a signal has arrived."""
        while not self.first.is_set():
            select.select([self._read], [], [], 0.5)
            try:
                self._read.recv(4096)
            except BlockingIOError:
                pass

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)
        signal.set_wakeup_fd(self._previous_fd)
        self._read.close()
        self._write.close()


def serve(config: ServerConfig, on_ready: Callable[[PredictionServer], None] | None = None,
          model=None) -> None:
    """Serve until SIGINT or SIGTERM, then stop gracefully within ``config.grace``.

    Runs on the main thread (it handles the signals); a signal sent to any thread of the
    process counts. A second signal during the shutdown cancels what still runs.
    ``model`` is an already loaded ``ModelDefinition`` (default: load ``config.package``).
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("serve() handles SIGINT and SIGTERM and must run on the main "
                           "thread; use PredictionServer elsewhere")
    with _StopSignals() as signals:
        server = PredictionServer(config, model)
        try:
            signals.starting = True
            server.start()
            signals.starting = False
        except _Interrupted:
            signals.starting = False
            server.stop(None)
            log.info("%s during the start-up: not serving", signals.name)
            return
        try:
            if on_ready is not None:
                on_ready(server)
            signals.wait()
            log.info("%s: stopping; the calls already received get up to %.1f s", signals.name,
                     config.grace)
        finally:
            server.stop(config.grace, abort=signals.again)
    log.info("stopped")
