# SPDX-License-Identifier: Apache-2.0
"""A REST client of the tests: one request per connection, its answer with a check that an
error is one line of JSON."""

from __future__ import annotations

import base64
import http.client
import json
import ssl

import numpy as np
from serving_helpers import KEYS

PREDICT = "/v1/models/tiny:predict"
"""The tiny test model's predict path."""


def b64(data: bytes) -> dict:
    """An image as TF Serving's JSON carries bytes."""
    return {"b64": base64.b64encode(data).decode()}


class Answer:
    """A response: its status, headers, body and the body as JSON."""

    def __init__(self, response: http.client.HTTPResponse, data: bytes) -> None:
        self.status, self.headers, self.data = response.status, response.headers, data
        self.json = json.loads(data)

    @property
    def error(self) -> str:
        assert set(self.json) == {"error"}, self.json
        message = self.json["error"]
        assert "\n" not in message and "Traceback" not in message, message
        return message


def connection(server, pkg, timeout: float = 30) -> http.client.HTTPConnection:
    """A connection to the server's REST port (TLS with the package's certificate)."""
    if not server.config.tls:
        return http.client.HTTPConnection("127.0.0.1", server.rest_port, timeout=timeout)
    context = ssl.create_default_context(cafile=str(pkg.cert))
    return http.client.HTTPSConnection("127.0.0.1", server.rest_port, context=context,
                                       timeout=timeout)


def call(server, pkg, method: str, path: str, body=None, key: str | None = KEYS[0],
         headers: dict | None = None) -> Answer:
    """One request on a connection of its own."""
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    sent = dict(headers or {})
    if key is not None:
        sent.setdefault("Authorization", f"Bearer {key}")
    conn = connection(server, pkg)
    try:
        conn.request(method, path, body=body, headers=sent)
        response = conn.getresponse()
        return Answer(response, response.read())
    finally:
        conn.close()


def bits(values) -> np.ndarray:
    """fp32 values as their bits, to compare them exactly."""
    return np.asarray(values, dtype=np.float32).view(np.uint32)
