# SPDX-License-Identifier: Apache-2.0
"""A TensorFlow Serving gRPC client for ``npusim serve`` (or any TF Serving server).

Its calls match the Azure accelerated-models SDK client: the image travels as
raw bytes in ``inputs['images']`` (DT_STRING, shape [1]), the answer is
``outputs['output_alias']``, and the API key as ``authorization: Bearer <key>``.

It does not import TensorFlow: the messages come from :mod:`npusim.runtime.serving.protos`
(the installed TF Serving protos, read without running TensorFlow's package), so a call
from a fresh process takes about a second instead of TensorFlow's start-up.

Example:
    >>> from npusim.runtime.serving.client import PredictionClient  # doctest: +SKIP
    >>> with PredictionClient("127.0.0.1", 8500, use_ssl=True,          # doctest: +SKIP
    ...                       access_token=key, root_certificates="ca.pem") as client:
    ...     probs = client.score_file("cat.jpg")        # [1, classes]
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import grpc
import numpy as np

from npusim.runtime.serving.protos import DTYPE_NAMES, make_ndarray, make_tensor_proto, messages

__all__ = ["PredictionClient", "PredictionError", "format_top", "parse_address"]

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
"""Codes worth another attempt. UNAVAILABLE: the server is not reachable (down,
restarting, draining). CANCELLED: this client never cancels its own calls, so a
CANCELLED comes from the server side; a gRPC server that shuts down answers
CANCELLED to calls it had received but not yet handed to a handler
(grpc/grpc#41785), and Predict has no side effects, so sending it again is safe.
DEADLINE_EXCEEDED is *not* retried: ``timeout`` is the caller's budget for an
attempt, and a server too slow to answer in time only gets slower if every
client sends its request again. INVALID_ARGUMENT (a malformed request, an image over
the server's pixel limit), NOT_FOUND (a model or version the server does not serve),
UNAUTHENTICATED and RESOURCE_EXHAUSTED (a request over a size limit, or a server whose
queue is full: retrying at once would only add to the load; the caller decides when to
come back) are final."""


class PredictionError(RuntimeError):
    """A call that failed with gRPC status ``code``; ``str()`` is one line."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = " ".join((details or "").split())
        super().__init__(f"{code.name}: {self.details}" if self.details else code.name)


class PredictionClient:
    """Scores images on a TF Serving ``PredictionService``.

    ``root_certificates`` is PEM bytes or a file path (None: the system's roots).
    ``access_token`` needs ``use_ssl``: gRPC sends call credentials only over a
    secure channel, and a key sent in plaintext would be given away.
    ``model_name`` None sends an empty name, which ``npusim serve`` takes as its
    one model (TF Serving itself needs the name).

    Retries: a call that fails with a :data:`RETRYABLE` code (UNAVAILABLE, or
    CANCELLED by a server shutting down) is tried again up to ``retries``
    times, after ``backoff * 2**n`` seconds (capped at ``max_backoff``) with equal
    jitter (half fixed, half random) so that clients cut off together by a server
    restart do not come back together. ``timeout`` bounds each attempt. The loop
    is explicit rather than gRPC's service-config retry policy because that policy
    caps ``maxAttempts`` at 5 (gRFC A6: larger values are treated as 5), counts
    the per-call deadline across all attempts, and would bury the backoff in a
    JSON service config; here the numbers are plain arguments. The channel's
    reconnect backoff is tied to ``backoff`` as well: gRPC's default (1 s, then
    1.6x) would otherwise make the first attempts after a restart fail fast.
    """

    output_name = "output_alias"
    max_backoff = 5.0

    def __init__(self, address: str, port: int | str, use_ssl: bool = False,
                 access_token: str | None = None,
                 root_certificates: bytes | str | Path | None = None,
                 model_name: str | None = None, timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.1) -> None:
        if access_token is not None and not use_ssl:
            raise ValueError("an access token needs use_ssl=True: a key sent in plaintext "
                             "is given away")
        if retries < 0 or backoff < 0 or timeout <= 0:
            raise ValueError("retries and backoff must be >= 0 and timeout > 0")
        host = f"[{address}]" if ":" in address and not address.startswith("[") else address
        self.target = f"{host}:{port}"
        self.model_name = model_name or ""
        self.timeout, self.retries, self.backoff = timeout, retries, backoff
        self._random = random.Random()
        backoff_ms = max(10, int(backoff * 1000))
        options = [("grpc.initial_reconnect_backoff_ms", backoff_ms),
                   ("grpc.max_reconnect_backoff_ms", int(self.max_backoff * 1000)),
                   ("grpc.max_receive_message_length", -1)]
        if use_ssl:
            if isinstance(root_certificates, (str, Path)):
                root_certificates = Path(root_certificates).read_bytes()
            creds = grpc.ssl_channel_credentials(root_certificates)
            if access_token is not None:
                creds = grpc.composite_channel_credentials(
                    creds, grpc.access_token_call_credentials(access_token))
            self._channel = grpc.secure_channel(self.target, creds, options)
        else:
            self._channel = grpc.insecure_channel(self.target, options)
        self._messages = messages()
        self._stub = _Stub(self._channel, self._messages)

    # --- scoring ---
    def score_file(self, path: str | Path) -> np.ndarray:
        """Score one image file (JPEG or PNG); returns the probabilities, [1, classes]."""
        return self.score_image(Path(path).read_bytes())

    def score_image(self, data: bytes) -> np.ndarray:
        """Score one encoded image; returns the probabilities, [1, classes]."""
        return self.score_numpy_array(np.array([data], dtype=object))

    def score_numpy_array(self, array: np.ndarray, input_name: str = "images") -> np.ndarray:
        """Send ``array`` as input ``input_name``; returns ``output_alias`` (or the only output)."""
        outputs = self.predict({input_name: array})
        if self.output_name in outputs:
            return outputs[self.output_name]
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        raise PredictionError(grpc.StatusCode.UNKNOWN,
                              f"the answer has no '{self.output_name}' among its outputs "
                              f"{', '.join(outputs)}")

    def predict(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ``Predict`` call with any inputs; returns every output by name."""
        m = self._messages
        request = m.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = "serving_default"
        for name, value in inputs.items():
            request.inputs[name].CopyFrom(make_tensor_proto(value, m.TensorProto))
        response = self._call(self._stub.Predict, request)
        outputs = {}
        for name, tensor in response.outputs.items():
            try:
                outputs[name] = make_ndarray(tensor)
            except (TypeError, ValueError) as exc:
                raise PredictionError(grpc.StatusCode.UNKNOWN, f"output '{name}' of the "
                                      f"answer cannot be read: {exc}") from None
        return outputs

    def metadata(self) -> dict:
        """The served model's name, version and signature (inputs and outputs)."""
        m = self._messages
        request = m.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = self.model_name
        response = self._call(self._stub.GetModelMetadata, request)
        sig_map = m.SignatureDefMap()
        response.metadata["signature_def"].Unpack(sig_map)

        def tensors(infos):
            return {name: {"dtype": DTYPE_NAMES.get(info.dtype, str(info.dtype)),
                           "shape": None if info.tensor_shape.unknown_rank else
                           [None if d.size < 0 else d.size for d in info.tensor_shape.dim]}
                    for name, info in infos.items()}

        return {"name": response.model_spec.name, "version": response.model_spec.version.value,
                "signatures": {name: {"method": sig.method_name, "inputs": tensors(sig.inputs),
                                      "outputs": tensors(sig.outputs)}
                               for name, sig in sig_map.signature_def.items()}}

    # --- plumbing ---
    def _call(self, method, request):
        for attempt in range(self.retries + 1):
            try:
                return method(request, timeout=self.timeout)
            except grpc.RpcError as exc:
                code = exc.code() if callable(getattr(exc, "code", None)) else None
                code = code or grpc.StatusCode.UNKNOWN
                if code not in RETRYABLE or attempt == self.retries:
                    raise PredictionError(code, exc.details() or "") from None
            time.sleep(self._delay(attempt))
        raise AssertionError("unreachable")

    def _delay(self, attempt: int) -> float:
        full = min(self.backoff * 2**attempt, self.max_backoff)
        return full / 2 + self._random.uniform(0, full / 2)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> PredictionClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _serialize(message) -> bytes:
    return message.SerializeToString()


class _Stub:
    """The two ``PredictionService`` methods this client calls, as gRPC callables (what the
    generated ``PredictionServiceStub`` holds, without TensorFlow's generated modules).
    Requests are serialized by their own class, so TensorFlow's messages may be passed too."""

    def __init__(self, channel: grpc.Channel, m) -> None:
        base = "/tensorflow.serving.PredictionService/"
        self.Predict = channel.unary_unary(base + "Predict", request_serializer=_serialize,
                                           response_deserializer=m.PredictResponse.FromString)
        self.GetModelMetadata = channel.unary_unary(
            base + "GetModelMetadata", request_serializer=_serialize,
            response_deserializer=m.GetModelMetadataResponse.FromString)


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8500`` for IPv6) as (host, port); ValueError names the problem."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {text!r} is not HOST:PORT")
    return host, int(port)


def format_top(probs: np.ndarray, labels: list[str] | None = None, top: int = 5) -> list[str]:
    """The ``top`` classes of each row of ``probs``: rank, label (or class index), probability."""
    rows = np.atleast_2d(np.asarray(probs, dtype=np.float64))
    rows = rows.reshape(rows.shape[0], -1)
    lines = []
    for row in rows:
        order = np.argsort(-row, kind="stable")[:top]
        names = [labels[i] if labels and i < len(labels) else str(i) for i in order]
        width = max(len(n) for n in names)
        lines += [f"  {rank}. {name:<{width}}  {row[i]:.6f}"
                  for rank, (i, name) in enumerate(zip(order, names), 1)]
    return lines
