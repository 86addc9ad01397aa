# SPDX-License-Identifier: Apache-2.0
"""Forged PredictRequests: every answer is OK or a client error with a one-line message.

The decoder is fuzzed directly (quick: hundreds of requests, numeric inputs included via
a two-input model spec), then the real server over loopback (the pipeline runs on what
passes), then raw bytes that are no valid message at all. INTERNAL, UNKNOWN or a crash
fail the test.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import grpc
import numpy as np
import pytest
from fuzzing import fuzz_settings
from hypothesis import given
from hypothesis import strategies as st
from serving_helpers import bmp, client_for, gif, gif_claiming, png_claiming

from npusim.runtime.serving.pipeline import TensorSpec
from npusim.runtime.serving.server import ServerConfig
from npusim.runtime.serving.service import RequestDecoder, RequestError

pytestmark = pytest.mark.tf

CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                 grpc.StatusCode.RESOURCE_EXHAUSTED}
# DT_INVALID, FLOAT, DOUBLE, INT32, UINT8, INT8, STRING, INT64, BOOL, BFLOAT16, HALF,
# RESOURCE, VARIANT, FLOAT_REF, STRING_REF, and numbers that name no type
_DTYPES = [0, 1, 2, 3, 4, 6, 7, 9, 10, 14, 19, 20, 21, 101, 107, 999]
_VALUE_FIELDS = ["string_val", "float_val", "double_val", "int_val", "int64_val", "bool_val",
                 "half_val", "scomplex_val", "tensor_content"]


@functools.cache
def _apis():
    from npusim.runtime.serving.pipeline import import_tensorflow

    tf = import_tensorflow()
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import predict_pb2

    return SimpleNamespace(tf=tf, TensorProto=tensor_pb2.TensorProto,
                           PredictRequest=predict_pb2.PredictRequest)


@functools.cache
def _images() -> tuple[bytes, ...]:
    tf = _apis().tf
    rgb = np.random.default_rng(5).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    return (tf.io.encode_jpeg(rgb).numpy(), tf.io.encode_png(rgb).numpy(), gif(5, 4, 2),
            bmp(6, 3), png_claiming(10000, 10000), gif_claiming(5000, 5000))


@st.composite
def _image_bytes(draw) -> bytes:
    """A real image, or one with a few header bytes changed, or a prefix of one, or noise."""
    kind = draw(st.sampled_from(["real", "mutated", "cut", "noise"]))
    data = bytearray(draw(st.sampled_from(_images())))
    if kind == "noise":
        return draw(st.binary(max_size=40))
    if kind == "cut":
        return bytes(data[:draw(st.integers(0, 200))])
    if kind == "mutated":
        for _ in range(draw(st.integers(1, 3))):
            at = draw(st.integers(0, min(len(data) - 1, 120)))
            data[at] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def _tensor(draw):
    """A TensorProto with any dtype, shape and content, consistent or not."""
    a = _apis()
    if draw(st.booleans()):  # a well-formed string tensor of images, most of the time
        images = draw(st.lists(_image_bytes(), min_size=0, max_size=3))
        proto = a.tf.make_tensor_proto(np.array(images, dtype=object))
        if not draw(st.integers(0, 3)):
            proto.tensor_shape.dim[0].size = draw(st.sampled_from([-1, 0, 2, 7, 2**40]))
        return proto
    if draw(st.booleans()):  # a well-formed float tensor
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        proto = a.tf.make_tensor_proto(np.zeros(shape, np.float32))
        if not draw(st.integers(0, 2)):
            proto.tensor_content = draw(st.binary(max_size=40))
        return proto
    proto = a.TensorProto(dtype=draw(st.sampled_from(_DTYPES)))
    proto.tensor_shape.unknown_rank = draw(st.integers(0, 9)) == 0
    for size in draw(st.lists(st.one_of(st.integers(-2, 5), st.sampled_from(
            [2**31, 2**62, 10**6])), max_size=5)):
        proto.tensor_shape.dim.add(size=size)
    for field in draw(st.lists(st.sampled_from(_VALUE_FIELDS), max_size=2)):
        n = draw(st.integers(0, 6))
        if field == "string_val":
            proto.string_val.extend(draw(st.lists(_image_bytes(), min_size=n, max_size=n)))
        elif field == "tensor_content":
            proto.tensor_content = draw(st.binary(max_size=64))
        elif field in ("float_val", "double_val", "scomplex_val"):
            getattr(proto, field).extend([1.5] * n)
        elif field == "bool_val":
            proto.bool_val.extend([True] * n)
        else:
            getattr(proto, field).extend([7] * n)
    return proto


@st.composite
def _requests(draw, input_names: tuple[str, ...]):
    """A PredictRequest: three times in four a plausible header with drawn tensors (so that
    the tensors and images are what gets tested), else every field drawn."""
    request = _apis().PredictRequest()
    spec = request.model_spec
    if draw(st.integers(0, 3)):
        spec.name = draw(st.sampled_from(["", "tiny"]))
        if draw(st.booleans()):
            spec.version.value = 1
        spec.signature_name = draw(st.sampled_from(["", "serving_default"]))
        for name in input_names:
            request.inputs[name].CopyFrom(draw(_tensor()))
        request.output_filter.extend(draw(st.sampled_from([[], ["output_alias"]])))
        return request
    spec.name = draw(st.sampled_from(["", "tiny", "resnet152"]) | st.text(max_size=6))
    if draw(st.booleans()):
        spec.version.value = draw(st.sampled_from([1, 0, -1, 2, 2**62]))
    spec.signature_name = draw(st.sampled_from(["", "serving_default", "classify"]))
    if draw(st.integers(0, 3)) == 0:
        spec.version_label = "stable"
    names = draw(st.lists(st.sampled_from([*input_names, "pixels", "", "x" * 300]),
                          max_size=3, unique=True))
    for name in names:
        request.inputs[name].CopyFrom(draw(_tensor()))
    request.output_filter.extend(draw(st.lists(st.sampled_from(
        ["output_alias", "output_alias", "probs", ""]), max_size=2)))
    return request


def _assert_client_error(code: grpc.StatusCode, message: str) -> None:
    assert code in CLIENT_ERRORS, (code, message)
    assert message and "\n" not in message and len(message) <= 1000, message


@functools.cache
def _decoder() -> RequestDecoder:
    model = SimpleNamespace(
        name="tiny", version=1,
        inputs=[TensorSpec("images", "string", (None,)), TensorSpec("x", "float32", (None, 3))],
        outputs=[TensorSpec("output_alias", "float32", (None, 10))])
    return RequestDecoder(model, ServerConfig("unused.zip", max_request_bytes=2**16,
                                              max_batch=4, max_image_pixels=10**6))


@fuzz_settings(400)
@given(_requests(("images", "x")))
def test_fuzz_request_decoder(request):
    decoder = _decoder()
    try:
        feeds, wanted = decoder.predict(request)
    except RequestError as exc:
        _assert_client_error(exc.code, exc.message)
        return
    assert set(feeds) == {"images", "x"} and wanted and set(wanted) <= {"output_alias"}
    for name, array in feeds.items():
        dims = [d.size for d in request.inputs[name].tensor_shape.dim]
        assert list(array.shape) == dims and array.shape[0] <= decoder.max_batch
        assert array.size * array.dtype.itemsize <= decoder.max_bytes
    for data in feeds["images"].flat:  # every image passed the header check
        assert isinstance(data, bytes) and data[:2] in (b"\xff\xd8", b"\x89P", b"GI", b"BM")


@fuzz_settings(150)
@given(_requests(("images",)))
def test_fuzz_server_over_loopback(server, pkg, request):
    with client_for(server, pkg) as client:
        try:
            response = client._stub.Predict(request, timeout=30)
        except grpc.RpcError as exc:
            _assert_client_error(exc.code(), exc.details())
            return
    assert set(response.outputs) <= {"output_alias"} and response.model_spec.name == "tiny"


@fuzz_settings(150)
@given(st.data())
def test_fuzz_raw_bytes_over_loopback(server, pkg, data):
    """A valid request's bytes with some changed, cut or inserted: never INTERNAL."""
    request = _apis().PredictRequest()
    request.model_spec.name = "tiny"
    request.inputs["images"].CopyFrom(_apis().tf.make_tensor_proto(
        np.array([bmp(6, 3)], dtype=object)))
    raw = bytearray(request.SerializeToString())  # 150 bytes
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw)))
        if data.draw(st.booleans()) and at < len(raw):
            raw[at] = data.draw(st.integers(0, 255))
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    with client_for(server, pkg) as client:
        call = client._channel.unary_unary("/tensorflow.serving.PredictionService/Predict")
        try:
            call(bytes(raw), timeout=30)
        except grpc.RpcError as exc:
            _assert_client_error(exc.code(), exc.details())
