# SPDX-License-Identifier: Apache-2.0
"""Hostile bodies against TF Serving's REST API: over loopback (every answer a client
status with a one-line JSON error, the server answering after), and straight into the
request decoder."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from rest_helpers import PREDICT, b64, bits, call
from serving_helpers import png_claiming

pytest.importorskip("cryptography", reason="the test certificate needs cryptography")
pytestmark = pytest.mark.tf


_KEYS = ["instances", "inputs", "signature_name", "images", "b64", "x", ""]
_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
    st.text(max_size=12), st.sampled_from([{"b64": "QUJD"}, {"b64": "!!"}, {"b64": 3}]))
_values = st.recursive(_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=4), inner, max_size=3)),
    max_leaves=16)


@st.composite
def _bodies(draw, images: tuple[bytes, ...]) -> bytes:
    """A near-valid request (real and broken images, either form), any JSON value, one of
    those with bytes changed, cut or inserted, or noise."""
    kind = draw(st.sampled_from(["near", "near", "any", "mutated", "noise"]))
    if kind == "noise":
        return draw(st.binary(max_size=120))
    if kind == "any":
        doc = draw(_values)
    else:
        image = st.sampled_from(images).map(b64) | _values
        items = draw(st.lists(image | st.dictionaries(st.sampled_from(["images", "x"]), image,
                                                      max_size=2), max_size=5))
        doc = {draw(st.sampled_from(["instances", "inputs"])): items}
        if draw(st.booleans()):
            doc[draw(st.sampled_from(_KEYS))] = draw(_values)
    data = bytearray(json.dumps(doc, allow_nan=True).encode())
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, len(data)))
            if draw(st.booleans()) and at < len(data):
                data[at] = draw(st.integers(0, 255))
            else:
                data[at:at] = draw(st.binary(min_size=1, max_size=3))
    return bytes(data)


_PATHS = [PREDICT, PREDICT, "/v1/models/tiny/versions/1:predict", "/v1/models/tiny/versions/2:"
          "predict", "/v1/models/tiny/labels/x:predict", "/v1/models/x%00:predict"]
_CLIENT_STATUSES = {200, 400, 404, 429, 501}


def _small_images() -> tuple[bytes, ...]:
    from serving_helpers import bmp, gif

    return (bmp(6, 3), gif(5, 4, 2), png_claiming(10000, 10000), bmp(6, 3)[:30])


@fuzz_settings(60)
@given(data=st.data())
def test_fuzz_hostile_bodies_over_loopback(rest, pkg, data):
    body = data.draw(_bodies(_small_images()))
    path = data.draw(st.sampled_from(_PATHS))
    answer = call(rest, pkg, "POST", path, body)
    assert answer.status in _CLIENT_STATUSES, (answer.status, answer.data)
    if answer.status == 200:
        assert set(answer.json) <= {"predictions", "outputs"}
    else:
        assert len(answer.error) <= 1000


def test_the_server_still_answers_after_the_fuzz(rest, pkg):
    answer = call(rest, pkg, "POST", PREDICT, {"instances": [b64(pkg.images[0])]})
    assert np.array_equal(bits(answer.json["predictions"]), bits(pkg.expected[0]))


@functools.cache
def _decoder():
    from npusim.runtime.serving.pipeline import TensorSpec
    from npusim.runtime.serving.server import ServerConfig
    from npusim.runtime.serving.service import RequestDecoder

    model = SimpleNamespace(
        name="tiny", version=1, outputs=[TensorSpec("output_alias", "float32", (None, 10))],
        inputs=[TensorSpec("images", "string", (None,)), TensorSpec("x", "float32", (None, 3))])
    return RequestDecoder(model, ServerConfig("unused.zip", max_request_bytes=2**16,
                                              max_batch=4, max_image_pixels=10**6))


@fuzz_settings(400)
@given(body=_bodies(_small_images()))
def test_fuzz_json_into_the_request_decoder(body):
    """The JSON reader and the gRPC checks behind it, without sockets, on a model with a
    string, a float and an int input: a RequestError or decoded feeds, nothing else."""
    from npusim.runtime.serving import jsontensor
    from npusim.runtime.serving.service import RequestError, tf_apis

    decoder = _decoder()
    request = tf_apis().predict_pb2.PredictRequest()
    dtypes = {name: spec.dtype for name, spec in decoder.inputs.items()}
    try:
        doc = jsontensor.parse_body(body)
        jsontensor.fill_inputs(doc, request, dtypes, decoder.unknown_input)
        feeds, _ = decoder.predict(request)
    except RequestError as exc:
        assert exc.message and "\n" not in exc.message and len(exc.message) <= 1000
        assert exc.code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED)
        return
    assert set(feeds) == {"images", "x"}
