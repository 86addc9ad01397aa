# SPDX-License-Identifier: Apache-2.0
"""What every call of ``npusim serve`` passes through: the API key check, the
Prometheus metrics, status codes and the crash guard (see :mod:`npusim.runtime.serving.server`).

The gate also notes when the last call arrived, which is how a stopping server
knows that gRPC has handed it every call its transport had already received. The REST
API (:mod:`npusim.runtime.serving.rest`) checks its keys with :func:`bearer_matches`,
counts its calls in the same :class:`Metrics` (``entrypoint="REST"``) and notes its
arrivals here too.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from npusim.runtime.serving.service import RequestError

__all__ = ["Gate", "Metrics", "bearer_matches"]

log = logging.getLogger("npusim.serving")

_HEALTH_PREFIX = "/grpc.health.v1.Health/"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    """The Prometheus metrics of one server, in a registry of its own."""

    def __init__(self, pool, devices: int) -> None:
        self.registry = CollectorRegistry()
        # entrypoint GRPC or REST, as TF Serving labels its own request metrics
        self.requests = Counter("npusim_requests", "calls by entrypoint (GRPC or REST), "
                                "method and status code", ["entrypoint", "method", "code"],
                                registry=self.registry)
        self.latency = Histogram("npusim_request_latency_seconds", "call latency",
                                 ["entrypoint", "method"], buckets=_LATENCY_BUCKETS,
                                 registry=self.registry)
        self.in_flight = Gauge("npusim_requests_in_flight",
                               "calls being handled (running or waiting for a worker)",
                               registry=self.registry)
        self.registry.register(_PoolCollector(pool, devices))

    def record(self, method: str, code: grpc.StatusCode, seconds: float,
               entrypoint: str = "GRPC") -> None:
        self.requests.labels(entrypoint, method, code.name).inc()
        self.latency.labels(entrypoint, method).observe(seconds)


def bearer_matches(keys: tuple[bytes, ...], header: str | bytes) -> bool:
    """An ``authorization`` value ``Bearer <key>`` names one of ``keys``; compared in
    constant time against every key, so that the time says nothing of which or how close."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    scheme, _, token = header.strip().partition(" ")
    presented = token.strip().encode("utf-8", "replace") if scheme.lower() == "bearer" else b""
    ok = False
    for key in keys:  # every key, no early exit
        ok |= hmac.compare_digest(key, presented)
    return ok and bool(presented)


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


class _Undecodable:
    """A request message protobuf could not parse (answered INVALID_ARGUMENT, not INTERNAL)."""

    def __init__(self, exc: Exception) -> None:
        self.reason = type(exc).__name__


class Gate(grpc.ServerInterceptor):
    """Every unary call passes here: API key check, metrics, status codes, crash guard."""

    def __init__(self, keys: tuple[bytes, ...], metrics: Metrics) -> None:
        self.keys, self.metrics = keys, metrics
        self._lock = threading.Lock()
        self._last_arrival = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since gRPC (or the REST server) last handed the server a call."""
        with self._lock:
            return time.monotonic() - self._last_arrival

    def arrived(self) -> None:
        """Note that a call has just been handed over."""
        with self._lock:
            self._last_arrival = time.monotonic()

    def authorized(self, metadata) -> bool:
        value = next((v for k, v in metadata if k == "authorization"), "")
        return bearer_matches(self.keys, value)

    def intercept_service(self, continuation, details):
        # runs on gRPC's polling thread as the call leaves the transport's queue
        self.arrived()
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler  # unknown method (UNIMPLEMENTED) or the health Watch stream
        method = details.method.rsplit("/", 1)[-1]
        public = details.method.startswith(_HEALTH_PREFIX)
        inner = handler.unary_unary
        parse = handler.request_deserializer

        def deserialize(data: bytes):
            try:
                return parse(data) if parse is not None else data
            except Exception as exc:  # noqa: BLE001 - gRPC would answer INTERNAL
                return _Undecodable(exc)

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
                if isinstance(request, _Undecodable):
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"the {method} request is not a valid protobuf message "
                                       f"({request.reason})")
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
            behavior, request_deserializer=deserialize,
            response_serializer=handler.response_serializer)
