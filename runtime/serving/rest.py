# SPDX-License-Identifier: Apache-2.0
"""TensorFlow Serving's REST API beside the gRPC one (``npusim serve --rest-port``).

The endpoints and their JSON are TF Serving's (``http_rest_api_handler.cc``,
``http_rest_api_util.cc``, ``json_tensor.cc``):

- ``POST /v1/models/NAME[/versions/V|/labels/L]:predict``: the row (``"instances"``) or
  columnar (``"inputs"``) form (:mod:`npusim.runtime.serving.jsontensor`);
- ``GET /v1/models/NAME[/versions/V|/labels/L]``: ``{"model_version_status": [...]}``,
  the state LOADING until the warm-up inference has run, AVAILABLE, then UNLOADING
  once the server is stopping;
- ``GET /v1/models/NAME[/versions/V|/labels/L]/metadata``: the ``GetModelMetadata``
  answer of the gRPC side as TF Serving writes it in JSON.

Errors are ``{"error": "<one line>"}`` with the HTTP status TF Serving gives each gRPC
code (``ToHTTPStatusCode`` in ``http_server.cc``): INVALID_ARGUMENT 400, UNAUTHENTICATED
401, NOT_FOUND 404, RESOURCE_EXHAUSTED 429, UNIMPLEMENTED 501, UNAVAILABLE 503, INTERNAL
500, and so on. Where TF Serving answers 400 "Malformed request" for a path it does not
know, this server says 404 (no such endpoint) or 405 (a known path, the wrong method).
Refused at the HTTP level, before a body is read: 411 for a body without a
Content-Length (chunked), 413 for one over ``max_request_bytes``.

One API, one server: a predict body becomes the same ``PredictRequest`` a gRPC client
would send (as TF Serving's own REST handler does), which goes through the same
:class:`~npusim.runtime.serving.service.PredictionServicer`: the same checks of every
field, the same ``max_queued`` places and ``workers`` turns, the same pipeline. The
same TLS certificate, the same keys (``Authorization: Bearer <key>``; the model status
answers without one, as the gRPC health service does), the same Prometheus metrics
(``entrypoint="REST"``).

What a hostile client can cost is bounded. Connections: at most twice the gRPC side's
threads, each with a time limit on every read and on its TLS handshake. Bodies: the
length is checked before a byte is read, and the body must come within
``_BODY_SECONDS``. JSON: parsed one body at a time (``json`` holds the GIL while it
parses, so more at once would not be faster, and a parsed document can take some 25
bytes of memory per byte of body: ``[[],[],...]``), its depth bounded by Python's
recursion limit, every walk over it iterative.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import re
import socket
import socketserver
import ssl
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from npusim.runtime.serving import jsontensor
from npusim.runtime.serving.gate import bearer_matches
from npusim.runtime.serving.service import RequestError, one_line, tf_apis

if TYPE_CHECKING:
    from npusim.runtime.serving.gate import Gate, Metrics
    from npusim.runtime.serving.service import PredictionServicer

__all__ = ["HTTP_STATUS", "RestServer"]

log = logging.getLogger("npusim.serving")

_C = grpc.StatusCode
HTTP_STATUS = {
    _C.OK: 200, _C.CANCELLED: 499, _C.UNKNOWN: 500, _C.INVALID_ARGUMENT: 400,
    _C.DEADLINE_EXCEEDED: 504, _C.NOT_FOUND: 404, _C.ALREADY_EXISTS: 409,
    _C.PERMISSION_DENIED: 403, _C.RESOURCE_EXHAUSTED: 429, _C.FAILED_PRECONDITION: 400,
    _C.ABORTED: 409, _C.OUT_OF_RANGE: 400, _C.UNIMPLEMENTED: 501, _C.INTERNAL: 500,
    _C.UNAVAILABLE: 503, _C.DATA_LOSS: 500, _C.UNAUTHENTICATED: 401,
}
"""TF Serving's HTTP status for each gRPC code (``ToHTTPStatusCode``, ``http_server.cc``)."""

# TF Serving's paths (kPredictionApiGegex, kModelStatusApiRegex in http_rest_api_util.cc)
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)",
    re.IGNORECASE)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?",
    re.IGNORECASE)
_METHODS = {"predict": "Predict", "classify": "Classify", "regress": "Regress",
            "metadata": "GetModelMetadata", "status": "GetModelStatus"}
_IO_TIMEOUT = 30.0  # seconds a connection may leave any one read or write waiting
_BODY_SECONDS = 60.0  # ... and for its whole body
_PARSE_WAIT = 30.0  # seconds a body may wait for its turn to be parsed
# a connection closed with a body unread is drained for a moment first: closed at once,
# the kernel would reset it and the client could lose the answer it has not read yet
_LINGER_SECONDS, _LINGER_BYTES = 2.0, 2**24
_SPARE_CONNECTIONS = 8


class _Refusal(RequestError):
    """A refusal at the HTTP level, with its own HTTP status (and headers)."""

    def __init__(self, http: int, code: grpc.StatusCode, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(code, message)
        self.http, self.headers = http, list(headers)


class _Route:
    """An endpoint a request names: its kind, metrics method name, model name, version
    and label as the path gives them."""

    def __init__(self, kind: str, name: str, version: str | None, label: str | None) -> None:
        self.kind, self.method = kind, _METHODS[kind]
        self.name, self.version, self.label = name, version, label


def _route(command: str, path: str) -> _Route:
    """The endpoint ``command path`` names, or the refusal (404, 405) naming the problem."""
    predict, status = _PREDICT_PATH.fullmatch(path), _STATUS_PATH.fullmatch(path)
    match, kind = None, ""
    if predict and command == "POST":
        match, kind = predict, predict.group(4).lower()
    elif status and command == "GET":
        match, kind = status, (status.group(4) or "status").lower()
    if match is None:
        if predict or status:
            allowed = "POST" if predict else "GET"
            raise _Refusal(405, _C.UNIMPLEMENTED, f"{command} is not allowed on {_show(path)}; "
                           f"use {allowed}", (("Allow", allowed),))
        raise _Refusal(404, _C.NOT_FOUND, f"no endpoint {_show(path)}: this server answers "
                       "POST /v1/models/NAME[/versions/V]:predict and GET "
                       "/v1/models/NAME[/versions/V][/metadata]")
    name = match.group(1) or ""
    try:
        name = urllib.parse.unquote_to_bytes(name).decode("utf-8")
        label = match.group(3)
        label = urllib.parse.unquote_to_bytes(label).decode("utf-8") if label else None
    except UnicodeDecodeError:
        raise _Refusal(400, _C.INVALID_ARGUMENT, f"Failed to decode model name or label: "
                       f"{_show(path)} is not UTF-8 once unquoted") from None
    return _Route(kind, name, match.group(2), label)


def _show(text: str) -> str:
    return repr(text if len(text) <= 100 else text[:100] + "...")


class _Call:
    """What :meth:`PredictionServicer.run` asks of a call: whether it is still wanted."""

    def __init__(self, cancelled: threading.Event) -> None:
        self._cancelled = cancelled

    def is_active(self) -> bool:
        return not self._cancelled.is_set()


class RestServer:
    """The REST endpoints of one :class:`~npusim.runtime.serving.server.PredictionServer`,
    on a ``ThreadingHTTPServer`` (the standard library's: no dependency, and its thread per
    connection is what a call that waits for a worker needs, as gRPC's thread per call)."""

    def __init__(self, config, servicer: PredictionServicer, gate: Gate,
                 metrics: Metrics) -> None:
        self.config, self.servicer = config, servicer
        self.gate, self.metrics = gate, metrics
        self.keys = tuple(k.encode() for k in config.api_keys)
        self.state = "LOADING"
        """The model's state as the status endpoint gives it (the server sets it)."""
        self.port: int | None = None
        self.cancelled = threading.Event()
        self._tls: ssl.SSLContext | None = None
        self._httpd: _HTTPServer | None = None
        self._parse = threading.Lock()
        self._lock = threading.Condition()
        self._open = 0  # connections accepted and not yet closed
        self._connections: dict[_Handler, bool] = {}  # set up -> busy with a request
        self._busy = 0
        self._closed = False
        self._names = itertools.count(1)
        self.max_connections = 2 * (config.max_queued + _SPARE_CONNECTIONS)

    # --- life cycle ---
    def start(self) -> int:
        """Bind the port and start answering; returns the port."""
        cfg = self.config
        if cfg.tls:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.minimum_version = ssl.TLSVersion.TLSv1_2
            self._tls.load_cert_chain(Path(cfg.tls_cert), Path(cfg.tls_key))
        try:
            self._httpd = _HTTPServer((cfg.host, cfg.rest_port), self)
        except OSError as exc:
            from npusim.runtime.serving.config import ServingConfigError

            raise ServingConfigError(f"cannot serve the REST API on {cfg.host}:{cfg.rest_port}: "
                                     f"{exc.strerror or exc}") from None
        self.port = self._httpd.server_address[1]
        threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                         name="npusim-rest-accept", daemon=True).start()
        return self.port

    def close(self) -> None:
        """Take no new connection; idle kept-alive connections end now, busy ones after
        their answer (``Connection: close``)."""
        if self._httpd is None or self._closed:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        with self._lock:
            self._closed = True
            idle = [h for h, busy in self._connections.items() if not busy]
        for handler in idle:
            handler.hang_up()

    def finish(self, deadline: float | None, abort: threading.Event | None = None) -> None:
        """Wait for the requests being answered until ``deadline`` (``time.monotonic``; None:
        none), then cancel those still waiting for a worker, and give up a second later on
        those still running (their threads end with the process)."""
        self.close()

        def waiting_until(end: float | None) -> bool:
            with self._lock:
                while self._busy:
                    now = time.monotonic()
                    if (end is not None and now >= end) or (abort is not None and abort.is_set()):
                        return True
                    self._lock.wait(0.05 if end is None else min(0.05, end - now))
            return False

        if deadline is None or waiting_until(deadline):
            self.cancelled.set()
            if waiting_until(time.monotonic() + 1.0):
                log.warning("stopped waiting for REST calls still running after the grace "
                            "period")

    # --- connections, for the handlers ---
    def _take_connection(self) -> bool:
        with self._lock:
            if self._open >= self.max_connections:
                return False
            self._open += 1
            return True

    def _drop_connection(self) -> None:
        with self._lock:
            self._open -= 1

    def _track(self, handler: _Handler, busy: bool | None) -> None:
        with self._lock:
            if busy is None:
                if self._connections.pop(handler, False):
                    self._busy -= 1
            else:
                was = self._connections.get(handler, False)
                self._connections[handler] = busy
                self._busy += int(busy) - int(was)
            self._lock.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the endpoints ---
    def handle(self, handler: _Handler, route: _Route) -> tuple[int, bytes, list]:
        """Answer one routed request: (HTTP status, JSON body, extra headers)."""
        start = time.perf_counter()
        self.metrics.in_flight.inc()
        code, headers = _C.OK, []
        try:
            if route.kind != "status" and self.keys and not bearer_matches(
                    self.keys, handler.headers.get("Authorization", "")):
                headers.append(("WWW-Authenticate", "Bearer"))
                raise RequestError(_C.UNAUTHENTICATED, "missing or invalid API key; send "
                                   "'Authorization: Bearer <key>'")
            if route.kind in ("classify", "regress"):
                raise RequestError(_C.UNIMPLEMENTED, f"this server does not {route.kind}; it "
                                   "answers predict, model status and metadata")
            if route.kind == "predict":
                body = handler.read_body(self.config.max_request_bytes)
                with self.servicer.admitted():
                    payload = self._predict(route, body)
            elif route.kind == "metadata":
                payload = self._metadata(route)
            else:
                payload = self._status(route)
            return 200, payload, headers
        except RequestError as exc:
            code, message = exc.code, exc.message
            if code == _C.CANCELLED and self.cancelled.is_set():
                code, message = _C.UNAVAILABLE, "the server is shutting down"
            if isinstance(exc, _Refusal):
                return exc.http, _error(message), headers + exc.headers
            return HTTP_STATUS.get(code, 500), _error(message), headers
        except ConnectionError:
            code = _C.CANCELLED
            raise
        except Exception as exc:  # noqa: BLE001 - one bad request never takes the server
            log.exception("REST %s failed", route.method)
            code = _C.INTERNAL
            return 500, _error(f"internal error ({type(exc).__name__}); see the server log"), []
        finally:
            self.metrics.in_flight.dec()
            self.metrics.record(route.method, code, time.perf_counter() - start, "REST")

    def _spec(self, spec, route: _Route) -> None:
        spec.name = route.name
        if route.version is not None:
            try:
                spec.version.value = int(route.version)
            except ValueError:  # more digits than an int64 holds
                raise RequestError(_C.INVALID_ARGUMENT, f"Failed to convert version: "
                                   f"{_show(route.version)} to numeric.") from None
        if route.label is not None:
            spec.version_label = route.label

    def _predict(self, route: _Route, body: bytes) -> bytes:
        decoder = self.servicer.decoder
        request = tf_apis().predict_pb2.PredictRequest()
        self._spec(request.model_spec, route)
        if not self._parse.acquire(timeout=_PARSE_WAIT):
            raise RequestError(_C.RESOURCE_EXHAUSTED, "the server is busy reading other JSON "
                               "bodies; try again later")
        try:  # the parsed document is gone once the request holds its values
            doc = jsontensor.parse_body(body)
            request.model_spec.signature_name = jsontensor.signature_name(doc)
            decoder.check_spec(request.model_spec)
            decoder.check_signature(request.model_spec.signature_name)
            dtypes = {name: spec.dtype for name, spec in decoder.inputs.items()}
            form = jsontensor.fill_inputs(doc, request, dtypes, decoder.unknown_input)
            del doc
        finally:
            self._parse.release()
        outputs = self.servicer.run(request, _Call(self.cancelled))
        return jsontensor.outputs_json(outputs, form)

    def _metadata(self, route: _Route) -> bytes:
        from google.protobuf.json_format import MessageToDict

        a = tf_apis()
        request = a.get_model_metadata_pb2.GetModelMetadataRequest(
            metadata_field=["signature_def"])
        self._spec(request.model_spec, route)
        response = self.servicer.GetModelMetadata(request, None)
        sig_map = a.get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)
        # as TF Serving's ToJsonString: proto field names, fields at their defaults included
        opts = dict(preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        return _json({"model_spec": MessageToDict(response.model_spec, **opts),
                      "metadata": {"signature_def": MessageToDict(sig_map, **opts)}})

    def _status(self, route: _Route) -> bytes:
        if not route.name:
            raise RequestError(_C.INVALID_ARGUMENT, "Missing model name in request.")
        spec = tf_apis().model_pb2.ModelSpec()
        self._spec(spec, route)
        self.servicer.decoder.check_spec(spec)
        return _json({"model_version_status": [{
            "version": str(self.servicer.decoder.version), "state": self.state,
            "status": {"error_code": "OK", "error_message": ""}}]})


def _json(obj) -> bytes:
    return (json.dumps(obj, indent=1) + "\n").encode()


def _error(message: str) -> bytes:
    return (json.dumps({"error": message}) + "\n").encode()


_PLAIN_BODY = _error("this port speaks HTTPS (TLS): use https://")
_PLAIN_TO_TLS = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                 % (len(_PLAIN_BODY), _PLAIN_BODY))


def _linger(sock: socket.socket) -> None:
    """Close our side of ``sock``, then read what the client still sends (at most two seconds
    or 16 MiB), so that the answer reaches it before the connection goes."""
    raw = socket.socket  # the plain socket's methods: the bytes are discarded unread
    with contextlib.suppress(OSError):
        raw.shutdown(sock, socket.SHUT_WR)
        end, drained = time.monotonic() + _LINGER_SECONDS, 0
        while drained < _LINGER_BYTES and (left := end - time.monotonic()) > 0:
            raw.settimeout(sock, left)
            data = raw.recv(sock, 1 << 16)
            if not data:
                break
            drained += len(data)


class _HTTPServer(ThreadingHTTPServer):
    """A thread per connection, at most ``rest.max_connections`` at once (more are closed
    at once), a quiet error log, and no reverse DNS look-up at bind."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], rest: RestServer) -> None:
        self.rest = rest
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks the host's name up (socket.getfqdn): seconds on a
        # machine with a slow resolver, for a name nothing here uses
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def process_request(self, request, client_address) -> None:
        if not self.rest._take_connection():
            log.warning("REST: %d connections open; closing a new one",
                        self.rest.max_connections)
            self.shutdown_request(request)
            return
        thread = threading.Thread(target=self.process_request_thread,
                                  args=(request, client_address), daemon=True,
                                  name=f"npusim-rest-{next(self.rest._names)}")
        thread.start()

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.rest._drop_connection()

    def handle_error(self, request, client_address) -> None:
        log.debug("REST connection from %s ended", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    """One connection: TLS, then requests one after another (HTTP/1.1 keep-alive)."""

    protocol_version = "HTTP/1.1"
    server_version = "npusim"
    sys_version = ""
    timeout = _IO_TIMEOUT
    # headers and body go out in two writes: with Nagle's algorithm on, the second waits for
    # the client's delayed ACK (40 ms a call on Linux)
    disable_nagle_algorithm = True
    server: _HTTPServer

    def version_string(self) -> str:
        return self.server_version

    def setup(self) -> None:
        self.request.settimeout(self.timeout)
        tls = self.server.rest._tls
        if tls is not None:  # the handshake here, on this connection's thread, timed
            if self.request.recv(1, socket.MSG_PEEK).isalpha():  # "GET ...", not a handshake
                self.request.sendall(_PLAIN_TO_TLS)
                _linger(self.request)
                raise ConnectionAbortedError("plain HTTP on the TLS port")
            self.request = tls.wrap_socket(self.request, server_side=True)
        self._expect_continue = False
        self._unread = False
        super().setup()
        self.server.rest._track(self, False)

    def finish(self) -> None:
        self.server.rest._track(self, None)
        try:
            super().finish()
            if self._unread:
                _linger(self.connection)
        finally:
            with contextlib.suppress(OSError):
                self.connection.close()

    def hang_up(self) -> None:
        """End an idle connection (its thread waits in a read)."""
        with contextlib.suppress(OSError):
            # the plain socket's shutdown: the TLS object stays to the reading thread
            socket.socket.shutdown(self.connection, socket.SHUT_RDWR)

    def parse_request(self) -> bool:
        # a request line has arrived: the connection is busy until its answer is written
        self.server.rest._track(self, True)
        self._expect_continue = False
        self._unread = False
        ok = super().parse_request()
        # a body that is not read (not every request reads its body) must not be taken for
        # the next request: the connection closes after the answer
        self._unread = not ok or "Transfer-Encoding" in self.headers or self.headers.get(
            "Content-Length", "0").strip() not in ("", "0")
        return ok

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        finally:
            if not self.close_connection:
                self.server.rest._track(self, False)

    def handle_expect_100(self) -> bool:
        # "100 Continue" only once the headers have passed (key, length): a refused body is
        # never sent
        self._expect_continue = True
        return True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base's name
        log.debug("REST %s: %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None):
        """http.server's own refusals (a malformed request line, headers too long, an
        unknown method) as JSON, as every other answer."""
        self.close_connection = True
        self._unread = True  # whatever followed the bad request is drained, not read
        self._reply(code, _error(message or HTTPStatus(code).phrase))

    # every method is routed; the route says which it allows
    def do_GET(self) -> None:  # noqa: N802 - http.server's names
        self._dispatch()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET

    def _dispatch(self) -> None:
        rest = self.server.rest
        rest.gate.arrived()
        try:
            route = _route(self.command, urllib.parse.urlsplit(self.path).path)
        except _Refusal as exc:
            self._reply(exc.http, _error(exc.message), exc.headers)
            return
        try:
            status, payload, headers = rest.handle(self, route)
        except ConnectionError:
            self.close_connection = True  # the client left: nobody to answer
            return
        self._reply(status, payload, headers)

    def read_body(self, limit: int) -> bytes:
        """The request body, refused before a byte of it is read if it is chunked or over
        ``limit`` bytes; it must arrive within ``_BODY_SECONDS``."""
        if "Transfer-Encoding" in self.headers:
            raise _Refusal(411, _C.INVALID_ARGUMENT, "a body without Content-Length (chunked) "
                           "is not accepted; send its length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise _Refusal(411, _C.INVALID_ARGUMENT, "a predict request needs a Content-Length")
        if len(set(lengths)) > 1 or not re.fullmatch(r"\d{1,18}", lengths[0].strip()):
            raise _Refusal(400, _C.INVALID_ARGUMENT, "invalid Content-Length")
        size = int(lengths[0])
        if size > limit:
            raise _Refusal(413, _C.RESOURCE_EXHAUSTED, f"the request body of {size} bytes is "
                           f"larger than this server's limit of {limit} (max_request_bytes)")
        if self._expect_continue:
            self.send_response_only(HTTPStatus.CONTINUE)
            self.end_headers()
        chunks, left = [], size
        end = time.monotonic() + _BODY_SECONDS
        try:
            while left and time.monotonic() < end:
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    raise ConnectionResetError("the client closed the connection")
                chunks.append(chunk)
                left -= len(chunk)
        except TimeoutError:
            pass
        if left:
            raise _Refusal(408, _C.DEADLINE_EXCEEDED, f"the request body ({size} bytes) did not "
                           f"arrive in time ({size - left} came)")
        self._unread = False
        return b"".join(chunks)

    def _reply(self, status: int, payload: bytes, headers: list = ()) -> None:
        if self._unread or self.server.rest.closed:
            self.close_connection = True  # a body left unread cannot be skipped
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for key, value in headers:
                self.send_header(key, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            self.wfile.flush()
        except (ConnectionError, TimeoutError, ssl.SSLError) as exc:
            self.close_connection = True
            log.debug("REST answer not delivered: %s", one_line(exc))
