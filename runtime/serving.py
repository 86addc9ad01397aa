# SPDX-License-Identifier: Apache-2.0
"""A TensorFlow Serving-compatible gRPC server for a pipeline package.

It speaks the stock ``tensorflow.serving.PredictionService`` protocol, so any TF
Serving client (the Azure accelerated-models SDK, ``runtime.client``, grpcurl
with the TF Serving protos) can call it: ``Predict`` takes ``inputs['images']``,
a DT_STRING tensor of raw JPEG/PNG bytes, and answers every final output of the
pipeline by name (``outputs['output_alias']`` for a featurizer pipeline);
``GetModelMetadata`` answers the ``signature_def`` as TF Serving does.

Security: with a TLS certificate and key the server listens with TLS, and then
every call except the gRPC health service needs ``authorization: Bearer <key>``
with one of at most two configured keys (two, so that a key can be rotated
without downtime). Keys without TLS are refused at start: a key sent in
plaintext is given away. The server listens on 127.0.0.1 unless told otherwise:
exposing it on a network is a deliberate choice (``host="0.0.0.0"``).

Metrics (Prometheus text format, plain HTTP, no key: bind it where only the
scraper can reach it) are served on ``metrics_port`` from a registry of this
server only:

- ``npusim_requests_total{method,code}``: calls by gRPC method and status code
  (calls that gRPC refuses before they reach the server, such as a message over
  ``max_request_bytes`` or a failed TLS handshake, are not counted);
- ``npusim_request_latency_seconds{method}``: latency histogram;
- ``npusim_requests_in_flight``;
- ``npusim_device_utilization``: busy seconds over wall seconds since the start,
  per device (the mean over the pool);
- ``npusim_device_simulated_seconds_total``, ``npusim_device_busy_seconds_total``,
  ``npusim_device_runs_total``: from ``DevicePool.stats()``.

Example:
    >>> from runtime.serving import PredictionServer, ServerConfig     # doctest: +SKIP
    >>> server = PredictionServer(ServerConfig("resnet50.zip", port=0))  # doctest: +SKIP
    >>> server.start(); print(server.port)                               # doctest: +SKIP
    >>> server.stop(grace=5.0)                                           # doctest: +SKIP

or ``npusim serve resnet50.zip --port 8500``.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import signal
import ssl
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["PredictionServer", "RequestError", "ServerConfig", "ServingConfigError",
           "read_api_key_file", "serve"]

log = logging.getLogger("npusim.serving")

SERVICE_NAME = "tensorflow.serving.PredictionService"
SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
MAX_KEYS = 2
_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServingConfigError(ValueError):
    """A server configuration that cannot be started (the message names the problem)."""


class RequestError(Exception):
    """A request refused with a gRPC status code and a one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = " ".join(message.split())


@dataclass(frozen=True)
class ServerConfig:
    """What ``npusim serve`` serves, where, and under which limits."""

    package: str | Path
    """The pipeline package (zip) to serve."""
    host: str = "127.0.0.1"
    """Address to listen on; loopback by default, ``0.0.0.0`` to listen on every interface."""
    port: int = 8500
    """gRPC port (TF Serving's default); 0 picks a free one (see ``PredictionServer.port``)."""
    devices: int = 1
    """Simulated accelerators in the pool; concurrent requests share them."""
    tls_cert: str | Path | None = None
    """PEM certificate chain; with ``tls_key`` the server speaks TLS only."""
    tls_key: str | Path | None = None
    """PEM private key of ``tls_cert``."""
    api_keys: tuple[str, ...] = ()
    """Accepted ``Bearer`` keys (at most two, for rotation); needs TLS."""
    max_request_bytes: int = 16 * 2**20
    """Largest request message accepted (bigger ones: RESOURCE_EXHAUSTED)."""
    max_batch: int = 16
    """Largest batch (first dimension of an input) accepted (bigger: RESOURCE_EXHAUSTED)."""
    metrics_port: int | None = None
    """Prometheus HTTP port on ``host`` (None: no metrics endpoint; 0: a free one)."""
    workers: int = 8
    """Threads handling requests; they queue for the devices of the pool."""
    grace: float = 10.0
    """Seconds in-flight requests get to finish when ``serve`` is told to stop."""

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None or self.tls_key is not None

    def validate(self, *, package: bool = True) -> None:
        """Raise :class:`ServingConfigError` naming the first problem of this configuration.

        ``package=False`` skips the check that the package file exists (for a server
        given its model already loaded).
        """
        if self.tls and (self.tls_cert is None or self.tls_key is None):
            raise ServingConfigError("TLS needs both a certificate and its private key")
        if self.tls:
            for what, path in (("certificate", self.tls_cert), ("private key", self.tls_key)):
                if not Path(path).is_file():
                    raise ServingConfigError(f"TLS {what} file not found: {path}")
            try:
                ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.tls_cert,
                                                                         self.tls_key)
            except (ssl.SSLError, OSError) as exc:
                raise ServingConfigError(f"TLS certificate {self.tls_cert} and key "
                                         f"{self.tls_key} are not a valid PEM pair: "
                                         f"{exc.reason if isinstance(exc, ssl.SSLError) else exc}"
                                         ) from None
        if self.api_keys and not self.tls:
            raise ServingConfigError("API keys need TLS (--tls-cert and --tls-key): a key sent "
                                     "in plaintext is given away")
        if len(self.api_keys) > MAX_KEYS:
            raise ServingConfigError(f"{len(self.api_keys)} API keys given; at most {MAX_KEYS} "
                                     "can be active at once (the current one and the next)")
        for i, key in enumerate(self.api_keys):
            if not key or any(c.isspace() for c in key) or not key.isprintable():
                raise ServingConfigError(f"API key #{i + 1} is empty or holds whitespace or "
                                         "control characters")
            if len(key) < 16:
                raise ServingConfigError(f"API key #{i + 1} is shorter than 16 characters")
        if len(set(self.api_keys)) != len(self.api_keys):
            raise ServingConfigError("the same API key is given twice")
        if not 0 <= self.port <= 65535:
            raise ServingConfigError(f"port {self.port} is not in 0..65535")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            raise ServingConfigError(f"metrics port {self.metrics_port} is not in 0..65535")
        if self.metrics_port is not None and self.metrics_port and self.metrics_port == self.port:
            raise ServingConfigError("the metrics port must differ from the gRPC port")
        for name in ("devices", "max_request_bytes", "max_batch", "workers"):
            if getattr(self, name) < 1:
                raise ServingConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.grace < 0:
            raise ServingConfigError(f"grace must be >= 0 seconds, not {self.grace}")
        if package and not Path(self.package).is_file():
            raise ServingConfigError(f"package not found: {self.package}")


def read_api_key_file(path: str | Path) -> tuple[str, ...]:
    """The keys of a key file: one per line; blank lines and ``#`` comments are skipped."""
    lines = Path(path).read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip()
                 .startswith("#"))


@functools.cache
def _tf():
    """TensorFlow and the TF Serving protos, imported on first use (a few seconds)."""
    import tensorflow as tf
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        model_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    return SimpleNamespace(tf=tf, predict_pb2=predict_pb2, model_pb2=model_pb2,
                           get_model_metadata_pb2=get_model_metadata_pb2,
                           meta_graph_pb2=meta_graph_pb2,
                           prediction_service_pb2_grpc=prediction_service_pb2_grpc)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class _PredictionServicer:
    """``tensorflow.serving.PredictionService`` over one ModelDefinition and a DevicePool."""

    def __init__(self, model, pool, config: ServerConfig) -> None:
        from runtime.pipeline import PipelineInputError

        self.model, self.pool, self.config = model, pool, config
        self._input_error = PipelineInputError
        self._version = int(model.version)
        self._output_names = [t.name for t in model.outputs]

    # --- the PredictionService methods ---
    def Predict(self, request, context):
        a = _tf()
        self._check_spec(request.model_spec)
        if request.model_spec.signature_name not in ("", SIGNATURE_NAME):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"unknown signature '{request.model_spec.signature_name}'; "
                               f"this model has '{SIGNATURE_NAME}'")
        if not request.inputs:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the request has no inputs")
        feeds = {name: self._to_array(name, proto) for name, proto in request.inputs.items()}
        wanted = list(request.output_filter) or self._output_names
        unknown = [n for n in wanted if n not in self._output_names]
        if unknown:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"unknown output '{unknown[0]}' in output_filter; the model "
                               f"gives {', '.join(self._output_names)}")
        try:
            outputs = self.model.run(feeds, pool=self.pool)
        except self._input_error as exc:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, _one_line(exc)) from None
        response = a.predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec)
        for name in wanted:
            response.outputs[name].CopyFrom(a.tf.make_tensor_proto(outputs[name]))
        return response

    def GetModelMetadata(self, request, context):
        a = _tf()
        self._check_spec(request.model_spec)
        fields = list(request.metadata_field)
        if not fields:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "GetModelMetadataRequest must name at least one metadata_field "
                               "('signature_def')")
        bad = [f for f in fields if f != "signature_def"]
        if bad:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"metadata field '{bad[0]}' is not supported; only "
                               "'signature_def' is")
        sig_map = a.get_model_metadata_pb2.SignatureDefMap()
        sig_map.signature_def[SIGNATURE_NAME].CopyFrom(self._signature_def())
        response = a.get_model_metadata_pb2.GetModelMetadataResponse()
        self._fill_spec(response.model_spec)
        response.metadata["signature_def"].Pack(sig_map)
        return response

    def _unimplemented(self, request, context):
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED,
                           "this server answers Predict and GetModelMetadata only")

    Classify = Regress = MultiInference = _unimplemented

    # --- helpers ---
    def _check_spec(self, spec) -> None:
        if spec.name and spec.name != self.model.name:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"unknown model '{spec.name}'; this server serves "
                               f"'{self.model.name}'")
        if spec.HasField("version") and spec.version.value != self._version:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"model '{self.model.name}' has no version {spec.version.value}; "
                               f"it serves version {self._version}")
        if spec.version_label:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"version labels are not supported (got '{spec.version_label}')")

    def _fill_spec(self, spec) -> None:
        spec.name = self.model.name
        spec.version.value = self._version
        spec.signature_name = SIGNATURE_NAME

    def _to_array(self, name: str, proto):
        """A request tensor as numpy, refusing what would decode to more than the limits."""
        a = _tf()
        if proto.tensor_shape.unknown_rank:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{name}' has an unknown rank")
        dims = [d.size for d in proto.tensor_shape.dim]
        if any(d < 0 for d in dims):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{name}' has a negative dimension {dims}")
        if dims and dims[0] > self.config.max_batch:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"input '{name}' has a batch of {dims[0]}; this server takes at "
                               f"most {self.config.max_batch}")
        try:
            dtype = a.tf.dtypes.as_dtype(proto.dtype)
        except TypeError:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{name}' has an invalid dtype ({proto.dtype})") from None
        # A TensorProto may hold one value and a huge shape: check the decoded size first
        count = math.prod(dims)
        size = count * (8 if dtype == a.tf.string else dtype.size)
        if size > self.config.max_request_bytes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"input '{name}' of shape {dims} would decode to {size} bytes; "
                               f"the limit is {self.config.max_request_bytes}")
        if dtype == a.tf.string and len(proto.string_val) != count:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{name}' has shape {dims} but {len(proto.string_val)} "
                               "strings")
        try:
            return a.tf.make_ndarray(proto)
        except Exception as exc:  # noqa: BLE001 - any malformed tensor is the client's error
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input '{name}' is not a valid {dtype.name} tensor of shape "
                               f"{dims}: {_one_line(exc)}") from None

    def _signature_def(self):
        a = _tf()
        sig = a.meta_graph_pb2.SignatureDef(method_name=PREDICT_METHOD)
        for specs, target in ((self.model.inputs, sig.inputs), (self.model.outputs, sig.outputs)):
            for spec in specs:
                info = target[spec.name]
                info.name = spec.name
                info.dtype = a.tf.dtypes.as_dtype(spec.dtype).as_datatype_enum
                if spec.shape is None:
                    info.tensor_shape.unknown_rank = True
                for d in spec.shape or ():
                    info.tensor_shape.dim.add(size=-1 if d is None else int(d))
        return sig


class _Metrics:
    """The Prometheus metrics of one server, in a registry of its own."""

    def __init__(self, pool, devices: int) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("npusim_requests", "gRPC calls by method and status code",
                                ["method", "code"], registry=self.registry)
        self.latency = Histogram("npusim_request_latency_seconds", "gRPC call latency",
                                 ["method"], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.in_flight = Gauge("npusim_requests_in_flight", "gRPC calls being handled",
                               registry=self.registry)
        self.registry.register(_PoolCollector(pool, devices))

    def record(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.requests.labels(method, code.name).inc()
        self.latency.labels(method).observe(seconds)


class _PoolCollector:
    """Reads ``DevicePool.stats()`` at each scrape."""

    def __init__(self, pool, devices: int) -> None:
        self.pool, self.devices = pool, devices
        self.started = time.monotonic()

    def collect(self):
        s = self.pool.stats()
        wall = max(time.monotonic() - self.started, 1e-9)
        yield GaugeMetricFamily("npusim_devices", "simulated devices in the pool",
                                value=self.devices)
        yield GaugeMetricFamily("npusim_device_utilization",
                                "busy seconds over wall seconds since the start, per device",
                                value=s.busy_seconds / (wall * self.devices))
        yield CounterMetricFamily("npusim_device_simulated_seconds",
                                  "simulated accelerator time of all runs",
                                  value=s.simulated_seconds)
        yield CounterMetricFamily("npusim_device_busy_seconds",
                                  "host seconds the devices spent running programs",
                                  value=s.busy_seconds)
        yield CounterMetricFamily("npusim_device_runs", "device program runs", value=s.runs)


class _Gate(grpc.ServerInterceptor):
    """Every unary call passes here: API key check, metrics, status codes, crash guard."""

    def __init__(self, keys: tuple[bytes, ...], metrics: _Metrics) -> None:
        self.keys, self.metrics = keys, metrics

    def authorized(self, metadata) -> bool:
        value = next((v for k, v in metadata if k == "authorization"), "")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        presented = token.strip().encode() if scheme.lower() == "bearer" else b""
        ok = False
        for key in self.keys:  # every key, no early exit: the time says nothing of which
            ok |= hmac.compare_digest(key, presented)
        return ok and bool(presented)

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown method (UNIMPLEMENTED) or the health Watch stream
        method = details.method.rsplit("/", 1)[-1]
        public = details.method.startswith(_HEALTH_PREFIX)
        inner = handler.unary_unary

        def behavior(request, context):
            start = time.perf_counter()
            self.metrics.in_flight.inc()
            code, message = grpc.StatusCode.OK, ""
            try:
                if self.keys and not public and not self.authorized(
                        context.invocation_metadata()):
                    raise RequestError(grpc.StatusCode.UNAUTHENTICATED,
                                       "missing or invalid API key; send 'authorization: "
                                       "Bearer <key>'")
                response = inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except RequestError as exc:
                code, message = exc.code, exc.message
            except Exception as exc:  # noqa: BLE001 - one bad request never takes the server
                log.exception("%s failed", details.method)
                code = grpc.StatusCode.INTERNAL
                message = f"internal error ({type(exc).__name__}); see the server log"
            finally:
                self.metrics.in_flight.dec()
                self.metrics.record(method, code, time.perf_counter() - start)
            context.abort(code, message)

        return grpc.unary_unary_rpc_method_handler(
            behavior, request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer)


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
        self.metrics: _Metrics | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.Server | None = None
        self._health: health.HealthServicer | None = None
        self._httpd = None

    @property
    def address(self) -> str:
        host = f"[{self.config.host}]" if ":" in self.config.host else self.config.host
        return f"{host}:{self.port}"

    def start(self) -> PredictionServer:
        """Load the package (if not given), bind the ports and start answering."""
        from runtime.device import DevicePool
        from runtime.pipeline import ModelDefinition, PipelineError

        if self._server is not None:
            raise RuntimeError("the server is already started")
        cfg = self.config
        if self.model is None:
            try:
                self.model = ModelDefinition.load(cfg.package)
            except PipelineError as exc:
                raise ServingConfigError(_one_line(exc)) from None
        a = _tf()
        self.pool = DevicePool(cfg.devices, self.model.device_config())
        self.metrics = _Metrics(self.pool, cfg.devices)
        server = grpc.server(
            futures.ThreadPoolExecutor(cfg.workers, thread_name_prefix="npusim-serve"),
            interceptors=[_Gate(tuple(k.encode() for k in cfg.api_keys), self.metrics)],
            options=[("grpc.max_receive_message_length", cfg.max_request_bytes),
                     ("grpc.max_send_message_length", -1),
                     # a second server on a busy port must fail, not share it silently
                     ("grpc.so_reuseport", 0)])
        a.prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            _PredictionServicer(self.model, self.pool, cfg), server)
        self._health = health.HealthServicer()
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
        if cfg.metrics_port is not None:
            try:
                self._httpd, _ = start_http_server(cfg.metrics_port, cfg.host,
                                                   registry=self.metrics.registry)
            except OSError as exc:
                server.stop(None)
                raise ServingConfigError(f"cannot serve metrics on {cfg.host}:"
                                         f"{cfg.metrics_port}: {exc.strerror or exc}") from None
            self.metrics_port = self._httpd.server_address[1]
        server.start()
        self._server, self.port = server, port
        for service in ("", SERVICE_NAME):
            self._health.set(service, health_pb2.HealthCheckResponse.SERVING)
        log.debug("serving %s version %s on %s", self.model.name, self.model.version,
                 self.address)
        return self

    def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, refuse new calls, let in-flight ones finish within ``grace``."""
        if self._server is None:
            return
        self._health.enter_graceful_shutdown()
        self._server.stop(grace).wait()
        self._server = None
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

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


def serve(config: ServerConfig,
          on_ready: Callable[[PredictionServer], None] | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully within ``config.grace``."""
    server = PredictionServer(config).start()
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if on_ready is not None:
            on_ready(server)
        stop.wait()
        log.info("stopping: finishing in-flight requests (up to %.1f s)", config.grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop(config.grace)
