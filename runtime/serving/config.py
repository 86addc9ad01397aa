# SPDX-License-Identifier: Apache-2.0
"""What ``npusim serve`` serves, where, and under which limits: :class:`ServerConfig`.

Checked whole by :meth:`ServerConfig.validate` before anything slow starts (TensorFlow,
the package); the server, its request decoder and the CLI all read it from here.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from npusim.runtime.serving.imageheader import DEFAULT_MAX_PIXELS

MAX_KEYS = 2
"""API keys active at once: the current one and the next (rotation)."""


class ServingConfigError(ValueError):
    """A server configuration that cannot be started (the message names the problem)."""


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
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    """Largest image accepted, in pixels as its header declares them, checked before it is
    decoded (bigger: INVALID_ARGUMENT); about 15 bytes of memory each while it is decoded."""
    max_queued: int = 64
    """Predict calls held at once, running or waiting for a worker (more: RESOURCE_EXHAUSTED
    at once, so that a burst costs bounded memory and clients learn to back off)."""
    metrics_port: int | None = None
    """Prometheus HTTP port on ``host`` (None: no metrics endpoint; 0: a free one)."""
    rest_port: int | None = None
    """TF Serving's REST API (HTTP/1.1, HTTPS with the same certificate and keys as gRPC)
    on ``host`` (None: off; 0: a free one, see ``PredictionServer.rest_port``)."""
    workers: int = 8
    """Predict calls running the pipeline at once (they queue for the devices of the pool);
    the other held calls wait for a turn."""
    grace: float = 10.0
    """Seconds the calls already received get to finish when the server is told to stop."""
    trust_keys: tuple[str | Path | bytes, ...] = ()
    """Ed25519 public keys (PEM file paths or PEM bytes); when given, the package must be
    signed by one of them (see :mod:`npusim.runtime.serving.signing`)."""

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
        if self.rest_port is not None and not 0 <= self.rest_port <= 65535:
            raise ServingConfigError(f"REST port {self.rest_port} is not in 0..65535")
        if self.metrics_port is not None and self.metrics_port and self.metrics_port == self.port:
            raise ServingConfigError("the metrics port must differ from the gRPC port")
        if self.rest_port and self.rest_port in (self.port, self.metrics_port):
            raise ServingConfigError("the REST port must differ from the gRPC and metrics "
                                     "ports")
        for name in ("devices", "max_request_bytes", "max_batch", "workers", "max_queued",
                     "max_image_pixels"):
            if getattr(self, name) < 1:
                raise ServingConfigError(f"{name} must be at least 1, not {getattr(self, name)}")
        if self.grace < 0:
            raise ServingConfigError(f"grace must be >= 0 seconds, not {self.grace}")
        if package and not Path(self.package).is_file():
            raise ServingConfigError(f"package not found: {self.package}")
        if self.trust_keys:
            from npusim.runtime.serving.signing import SigningError, load_trust_keys

            try:
                load_trust_keys(self.trust_keys)
            except SigningError as exc:
                raise ServingConfigError(str(exc)) from None


def read_api_key_file(path: str | Path) -> tuple[str, ...]:
    """The keys of a key file: one per line; blank lines and ``#`` comments are skipped."""
    lines = Path(path).read_text().splitlines()
    return tuple(line.strip() for line in lines if line.strip() and not line.lstrip()
                 .startswith("#"))
