# SPDX-License-Identifier: Apache-2.0
"""The ``tensorflow.serving.PredictionService`` methods of ``npusim serve``.

Every field of a request is the client's to get wrong, or to forge:
:class:`RequestDecoder` checks the model spec, the input names, dtypes and
shapes, the value counts against the shape and the decoded size against the
limits *before* anything is allocated, and every image's declared pixel count
(:mod:`npusim.runtime.serving.imageheader`) before anything is decoded. Each refusal is a
:class:`RequestError`: a gRPC status code and a one-line message naming the
problem. The codes follow TF Serving: NOT_FOUND for a model or version it does
not serve, INVALID_ARGUMENT for a malformed request, RESOURCE_EXHAUSTED for a
request over a size limit or a server with no room to queue it.

Example:
    >>> decoder = RequestDecoder(model, ServerConfig("tiny.zip"))   # doctest: +SKIP
    >>> feeds, outputs = decoder.predict(request)                    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from types import SimpleNamespace
from typing import TYPE_CHECKING

import grpc
import numpy as np

from npusim.runtime.serving.imageheader import ImageHeaderError, check_image

if TYPE_CHECKING:
    from npusim.runtime.serving.config import ServerConfig

__all__ = ["PredictionServicer", "RequestDecoder", "RequestError", "warmup_feeds"]

SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
MAX_RANK = 254  # TensorFlow's TensorShape::MaxDimensions()
_MAX_MESSAGE = 1000
# where a TensorProto keeps the values of each dtype (besides tensor_content)
_VALUE_FIELD = {"float32": "float_val", "float64": "double_val", "float16": "half_val",
                "bfloat16": "half_val", "int8": "int_val", "int16": "int_val",
                "int32": "int_val", "uint8": "int_val", "uint16": "int_val",
                "int64": "int64_val", "uint32": "uint32_val", "uint64": "uint64_val",
                "bool": "bool_val", "complex64": "scomplex_val", "complex128": "dcomplex_val",
                "string": "string_val"}


class RequestError(Exception):
    """A request refused with a gRPC status code and a one-line message."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        message = " ".join(message.split())
        if len(message) > _MAX_MESSAGE:
            message = message[:_MAX_MESSAGE - 3] + "..."
        super().__init__(message)
        self.code = code
        self.message = message


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


@functools.cache
def tf_apis():
    """TensorFlow and the TF Serving protos, imported on first use (a few seconds)."""
    import tensorflow as tf
    from tensorflow.core.framework import tensor_pb2
    from tensorflow.core.protobuf import meta_graph_pb2
    from tensorflow_serving.apis import (
        get_model_metadata_pb2,
        model_pb2,
        predict_pb2,
        prediction_service_pb2_grpc,
    )

    value_fields = tuple(f.name for f in tensor_pb2.TensorProto.DESCRIPTOR.fields
                         if f.name.endswith("_val"))
    return SimpleNamespace(tf=tf, predict_pb2=predict_pb2, model_pb2=model_pb2,
                           get_model_metadata_pb2=get_model_metadata_pb2,
                           meta_graph_pb2=meta_graph_pb2, value_fields=value_fields,
                           prediction_service_pb2_grpc=prediction_service_pb2_grpc)


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _show(name: str) -> str:
    """A client-chosen name quoted for a message: escaped, at most 64 characters."""
    return repr(name if len(name) <= 64 else name[:64] + "...")


def _shape(dims: list[int]) -> str:
    if len(dims) <= 8:
        return str(dims)
    return f"[{', '.join(map(str, dims[:8]))}, ...] (rank {len(dims)})"


class RequestDecoder:
    """Checks and decodes the requests of one model under a server's limits."""

    def __init__(self, model, config: ServerConfig) -> None:
        self.model_name = model.name
        self.version = int(model.version)
        self.inputs = {s.name: s for s in model.inputs}
        self.outputs = [s.name for s in model.outputs]
        self.max_bytes = config.max_request_bytes
        self.max_batch = config.max_batch
        self.max_pixels = config.max_image_pixels

    def check_spec(self, spec) -> None:
        """The model spec names this model (or none) and its version (or none)."""
        if spec.name and spec.name != self.model_name:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model {_show(spec.name)} not found; this server serves "
                               f"'{self.model_name}'")
        if spec.HasField("version") and spec.version.value != self.version:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"model '{self.model_name}' has no version "
                               f"{spec.version.value}; it serves version {self.version}")
        if spec.version_label:
            raise _invalid(f"version labels are not supported (got {_show(spec.version_label)})")

    def check_signature(self, name: str) -> None:
        """``name`` is this model's signature (or empty: the default one)."""
        if name not in ("", SIGNATURE_NAME):
            raise _invalid(f"unknown signature {_show(name)}; this model has '{SIGNATURE_NAME}'")

    def unknown_input(self, name: str) -> RequestError:
        """The refusal of an input this model does not take."""
        takes = ", ".join(f"'{n}'" for n in self.inputs)
        return _invalid(f"unknown input {_show(name)}; the model takes {takes}")

    def predict(self, request) -> tuple[dict[str, np.ndarray], list[str]]:
        """The feeds and the wanted output names of a ``PredictRequest``."""
        self.check_spec(request.model_spec)
        self.check_signature(request.model_spec.signature_name)
        if not request.inputs:
            raise _invalid("the request has no inputs")
        for name in request.inputs:
            if name not in self.inputs:
                raise self.unknown_input(name)
        for name, spec in self.inputs.items():
            if name not in request.inputs:
                raise _invalid(f"missing input '{name}' ({spec.dtype}, {spec.shape_text()})")
        wanted = list(request.output_filter) or self.outputs
        for name in wanted:
            if name not in self.outputs:
                raise _invalid(f"unknown output {_show(name)} in output_filter; the model gives "
                               f"{', '.join(self.outputs)}")
        if len(set(wanted)) != len(wanted):
            raise _invalid("output_filter names an output twice")
        feeds = {name: self.tensor(name, request.inputs[name]) for name in self.inputs}
        return feeds, wanted

    def tensor(self, name: str, proto) -> np.ndarray:
        """Input ``name`` as numpy, refusing what is malformed or over the limits."""
        a, spec = tf_apis(), self.inputs[name]
        what = f"input '{name}'"
        try:
            dtype = a.tf.dtypes.as_dtype(proto.dtype)
        except TypeError:
            raise _invalid(f"{what} has an invalid dtype ({proto.dtype})") from None
        if dtype.name != spec.dtype:
            raise _invalid(f"{what} has dtype {dtype.name}; the model takes {spec.dtype}")
        if proto.tensor_shape.unknown_rank:
            raise _invalid(f"{what} has an unknown rank")
        dims = [d.size for d in proto.tensor_shape.dim]
        if len(dims) > MAX_RANK or any(d < 0 for d in dims):
            raise _invalid(f"{what} has an invalid shape {_shape(dims)}")
        if spec.shape is not None and (len(dims) != len(spec.shape) or any(
                d is not None and d != n for d, n in zip(spec.shape, dims))):
            raise _invalid(f"{what} has shape {_shape(dims)}; the model takes "
                           f"{spec.shape_text()} (None: any size)")
        if dims and dims[0] > self.max_batch:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{what} has a batch of {dims[0]}; this server takes at most "
                               f"{self.max_batch}")
        # a TensorProto may hold one value and a huge shape: bound the decoded size first
        count = math.prod(dims)
        size = count * (8 if dtype == a.tf.string else dtype.size)
        if size > self.max_bytes:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"{what} of shape {_shape(dims)} would decode to {size} bytes; "
                               f"the limit is {self.max_bytes}")
        self._check_values(what, proto, dtype, dims, count)
        try:
            array = a.tf.make_ndarray(proto)
        except Exception as exc:  # noqa: BLE001 - any malformed tensor is the client's error
            raise _invalid(f"{what} is not a valid {dtype.name} tensor of shape {_shape(dims)}: "
                           f"{one_line(exc)}") from None
        if dtype == a.tf.string:
            for i, data in enumerate(array.flat):
                try:
                    check_image(data, self.max_pixels)
                except ImageHeaderError as exc:
                    # INVALID_ARGUMENT, not RESOURCE_EXHAUSTED: like an image too big in bytes
                    # for TF Serving's decoder, this one fails on every server at every retry;
                    # RESOURCE_EXHAUSTED here means "busy, try later" (a full queue)
                    raise _invalid(f"{what} item {i}: {exc}") from None
        return array

    def _check_values(self, what: str, proto, dtype, dims: list[int], count: int) -> None:
        """The values the proto holds fit ``dims``, in the field of ``dtype``."""
        field = _VALUE_FIELD.get(dtype.name)
        if field is None:
            raise _invalid(f"{what}: dtype {dtype.name} cannot travel in a request")
        for other in tf_apis().value_fields:
            if other != field and len(getattr(proto, other)):
                raise _invalid(f"{what} ({dtype.name}) holds values in '{other}'; its values "
                               f"go in '{field}'")
        values = len(getattr(proto, field))
        content = len(proto.tensor_content)
        if field == "string_val":
            if content:
                raise _invalid(f"{what}: strings go in 'string_val', not in 'tensor_content'")
            if values != count:
                raise _invalid(f"{what} has shape {_shape(dims)} but {values} strings")
        elif content:
            if values:
                raise _invalid(f"{what} has both tensor_content and '{field}'")
            if content != count * dtype.size:
                raise _invalid(f"{what} has {content} bytes of tensor_content; shape "
                               f"{_shape(dims)} of {dtype.name} takes {count * dtype.size}")
        else:
            per = 2 if dtype.is_complex else 1
            # count values, or one repeated over the shape (as make_tensor_proto writes a fill)
            if values % per or values // per not in (count, min(count, 1)):
                raise _invalid(f"{what} has shape {_shape(dims)} ({count} values) but "
                               f"{values // per if not values % per else values} in '{field}'")


class PredictionServicer:
    """``tensorflow.serving.PredictionService`` over one ModelDefinition and a DevicePool.

    At most ``config.max_queued`` Predict calls are held at once (running or waiting
    for one of ``config.workers`` turns); one more is refused with RESOURCE_EXHAUSTED
    at once rather than queued without bound. The REST API's predict calls
    (:mod:`npusim.runtime.serving.rest`) are held and run through the same
    :meth:`admitted` and :meth:`run`, so both APIs share one queue and one set of workers.
    """

    def __init__(self, model, pool, config: ServerConfig) -> None:
        from npusim.runtime.serving.pipeline import PipelineInputError

        self.model, self.pool, self.config = model, pool, config
        self.decoder = RequestDecoder(model, config)
        self._input_error = PipelineInputError
        self._admitted = threading.BoundedSemaphore(config.max_queued)
        self._turns = threading.Condition()
        self._free = config.workers
        self._paused = False

    def pause(self, paused: bool) -> None:
        """While paused, no new run starts (the ones running finish)."""
        with self._turns:
            self._paused = paused
            self._turns.notify_all()

    def _take_turn(self, context) -> None:
        """Wait for a worker, giving up when the call ends (cancel, deadline, shutdown)."""
        with self._turns:
            while self._paused or not self._free:
                self._turns.wait(0.1)
                if not context.is_active():
                    raise RequestError(grpc.StatusCode.CANCELLED,
                                       "the call ended while it waited for a worker")
            self._free -= 1

    def _end_turn(self) -> None:
        with self._turns:
            self._free += 1
            self._turns.notify()

    @contextlib.contextmanager
    def admitted(self):
        """Hold one of the ``max_queued`` places for a Predict call, or refuse it at once."""
        if not self._admitted.acquire(blocking=False):
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                               f"the server already holds {self.config.max_queued} Predict "
                               "calls (its max_queued); try again later")
        try:
            yield
        finally:
            self._admitted.release()

    def run(self, request, context) -> dict[str, np.ndarray]:
        """The wanted outputs of an admitted ``PredictRequest``, by name, in order: the
        request checked and decoded, then run on the pipeline in a worker's turn."""
        feeds, wanted = self.decoder.predict(request)
        self._take_turn(context)
        try:
            outputs = self.model.run(feeds, pool=self.pool)
        except self._input_error as exc:
            raise _invalid(one_line(exc)) from None
        finally:
            self._end_turn()
        return {name: outputs[name] for name in wanted}

    # --- the PredictionService methods ---
    def Predict(self, request, context):
        with self.admitted():
            outputs = self.run(request, context)
        a = tf_apis()
        response = a.predict_pb2.PredictResponse()
        self._fill_spec(response.model_spec)
        for name, value in outputs.items():
            response.outputs[name].CopyFrom(a.tf.make_tensor_proto(value))
        return response

    def GetModelMetadata(self, request, context):
        a = tf_apis()
        self.decoder.check_spec(request.model_spec)
        fields = list(request.metadata_field)
        if not fields:
            raise _invalid("GetModelMetadataRequest must name at least one metadata_field "
                           "('signature_def')")
        bad = [f for f in fields if f != "signature_def"]
        if bad:
            raise _invalid(f"metadata field {_show(bad[0])} is not supported; only "
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
    def _fill_spec(self, spec) -> None:
        spec.name = self.model.name
        spec.version.value = self.decoder.version
        spec.signature_name = SIGNATURE_NAME

    def _signature_def(self):
        a = tf_apis()
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


def warmup_feeds(model) -> dict[str, np.ndarray]:
    """One request of batch 1 for ``model``: a small grey PNG for a string input, zeros else."""
    feeds = {}
    for spec in model.inputs:
        shape = [1] if spec.shape is None else [1 if d is None else d for d in spec.shape]
        if spec.dtype == "string":
            image = tf_apis().tf.io.encode_png(np.full((32, 32, 3), 128, np.uint8)).numpy()
            feeds[spec.name] = np.full(shape, image, dtype=object)
        else:
            feeds[spec.name] = np.zeros(shape, np.dtype(spec.dtype))
    return feeds
