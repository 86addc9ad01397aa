# SPDX-License-Identifier: Apache-2.0
"""The TF Serving messages of a client, and numpy <-> ``TensorProto``, without TensorFlow.

Why: ``tensorflow_serving.apis.predict_pb2`` imports ``tensorflow.core.framework.tensor_pb2``,
and importing any module of the ``tensorflow`` package runs ``tensorflow/__init__.py``
first, which loads all of TensorFlow: seconds of start-up and 600 MB or more for a
client that only builds and reads a few messages.

How: every generated ``_pb2`` module holds its ``.proto`` file as one serialized
``FileDescriptorProto``, the bytes literal it passes to ``AddSerializedFile``. :func:`messages`
reads that literal from the installed files as data (``ast.literal_eval``: nothing in them
runs), adds the files a message needs, imports first, to a *private* ``DescriptorPool``
and makes the message classes from it. It takes some 40 ms.

Why this way. The alternatives weighed:

- Running the generated modules by file path under their real names, skipping
  ``tensorflow/__init__.py``: their own ``from tensorflow.core.framework import ...`` lines
  import the parent package, so a stand-in ``tensorflow`` module would have to sit in
  ``sys.modules`` meanwhile. A thread importing TensorFlow at that moment would get the
  stand-in, and any failure midway would leave it behind to break TensorFlow for good.
- Copying the generated code (or the descriptors) into npusim: a second copy of the
  protocol that drifts from the installed TF Serving, for no gain over reading it.

A private pool never meets protobuf's default pool, where TensorFlow registers the same
``.proto`` files when it is imported: importing TensorFlow before or after cannot hit
protobuf's refusal of a file registered twice with different content, and TensorFlow's
modules load exactly as they would without npusim. The price: these classes are not
TensorFlow's (``CopyFrom`` between them fails), but their wire bytes are the same, so
messages cross as bytes (``SerializeToString`` / ``FromString``), which is all gRPC does.
Should a generated file ever stop carrying its descriptor that way (another protoc), the
classes come from the ``tensorflow_serving.apis`` modules instead: slow, but correct.

Example:
    >>> m = messages()
    >>> request = m.PredictRequest()
    >>> request.inputs["images"].CopyFrom(make_tensor_proto([b"JPEG bytes"], m.TensorProto))
    >>> make_ndarray(request.inputs["images"])
    array([b'JPEG bytes'], dtype=object)
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import logging
import threading
from pathlib import Path
from types import SimpleNamespace

import numpy as np

__all__ = ["DTYPE_NAMES", "datatype_enum", "dtype_name", "make_ndarray", "make_tensor_proto",
           "messages", "value_field"]

log = logging.getLogger("npusim.serving")

# (enum value, TensorFlow's name, where a TensorProto keeps its values besides
# tensor_content); the names are tf.dtypes.as_dtype(value).name
_DTYPES = (
    (1, "float32", "float_val"), (2, "float64", "double_val"), (3, "int32", "int_val"),
    (4, "uint8", "int_val"), (5, "int16", "int_val"), (6, "int8", "int_val"),
    (7, "string", "string_val"), (8, "complex64", "scomplex_val"), (9, "int64", "int64_val"),
    (10, "bool", "bool_val"), (11, "qint8", "int_val"), (12, "quint8", "int_val"),
    (13, "qint32", "int_val"), (14, "bfloat16", "half_val"), (15, "qint16", "int_val"),
    (16, "quint16", "int_val"), (17, "uint16", "int_val"), (18, "complex128", "dcomplex_val"),
    (19, "float16", "half_val"), (20, "resource", "resource_handle_val"),
    (21, "variant", "variant_val"), (22, "uint32", "uint32_val"), (23, "uint64", "uint64_val"),
)
DTYPE_NAMES = {value: name for value, name, _ in _DTYPES}
"""TensorFlow's name of each ``DataType`` value."""
_ENUM = {name: value for value, name, _ in _DTYPES}
_FIELD = {value: field for value, _, field in _DTYPES}
# the dtypes numpy holds natively; the others (quantized, bfloat16, handles) it cannot
_NUMPY = {"float32", "float64", "int32", "uint8", "int16", "int8", "complex64", "int64", "bool",
          "uint16", "complex128", "float16", "uint32", "uint64"}
# as tf.make_tensor_proto: these go in tensor_content when there is more than one value
_CONTENT = {"float16", "float32", "float64", "int32", "uint8", "int16", "int8", "int64",
            "uint32", "uint64"}

# the messages a client sends and reads, by the .proto file that defines them
_MESSAGES = {
    "tensorflow_serving/apis/predict.proto": ("PredictRequest", "PredictResponse"),
    "tensorflow_serving/apis/get_model_metadata.proto": (
        "GetModelMetadataRequest", "GetModelMetadataResponse", "SignatureDefMap"),
    "tensorflow/core/framework/tensor.proto": ("TensorProto",),
}
_PACKAGE = {"TensorProto": "tensorflow"}  # the others are in tensorflow.serving
_lock = threading.Lock()


def dtype_name(value: int) -> str:
    """TensorFlow's name of a ``DataType`` value (``1`` -> ``"float32"``); ValueError if none."""
    try:
        return DTYPE_NAMES[value]
    except KeyError:
        raise ValueError(f"{value} is not a TensorFlow dtype") from None


def datatype_enum(name: str) -> int:
    """The ``DataType`` value of a TensorFlow dtype name (``"string"`` -> ``7``)."""
    try:
        return _ENUM[name]
    except KeyError:
        raise ValueError(f"{name!r} is not a TensorFlow dtype") from None


def value_field(name: str) -> str:
    """The ``TensorProto`` field that holds the values of dtype ``name`` (besides
    ``tensor_content``): ``"float32"`` -> ``"float_val"``."""
    return _FIELD[datatype_enum(name)]


@functools.cache
def messages() -> SimpleNamespace:
    """The message classes, by name: ``PredictRequest``, ``PredictResponse``,
    ``GetModelMetadataRequest``, ``GetModelMetadataResponse``, ``SignatureDefMap`` and
    ``TensorProto``; ``light`` says whether they came without TensorFlow."""
    with _lock:
        try:
            return _from_descriptors()
        except (OSError, LookupError, ValueError, SyntaxError, TypeError) as exc:
            log.debug("TF Serving protos through TensorFlow (%s: %s)", type(exc).__name__, exc)
            return _from_tensorflow()


def _from_descriptors() -> SimpleNamespace:
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.DescriptorPool()
    added: set[str] = set()

    def add(name: str, chain: tuple[str, ...] = ()) -> None:
        if name in added:
            return
        if name in chain:
            raise ValueError(f"{name} imports itself")
        proto = descriptor_pb2.FileDescriptorProto.FromString(_serialized(name))
        for dependency in proto.dependency:
            add(dependency, chain + (name,))
        pool.Add(proto)
        added.add(name)

    found = {}
    for file, names in _MESSAGES.items():
        add(file)
        for name in names:
            full = f"{_PACKAGE.get(name, 'tensorflow.serving')}.{name}"
            found[name] = message_factory.GetMessageClass(pool.FindMessageTypeByName(full))
    return SimpleNamespace(light=True, **found)


def _from_tensorflow() -> SimpleNamespace:
    from npusim.runtime.serving.pipeline import import_tensorflow

    import_tensorflow()
    from tensorflow.core.framework import tensor_pb2
    from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2

    return SimpleNamespace(
        light=False, PredictRequest=predict_pb2.PredictRequest,
        PredictResponse=predict_pb2.PredictResponse,
        GetModelMetadataRequest=get_model_metadata_pb2.GetModelMetadataRequest,
        GetModelMetadataResponse=get_model_metadata_pb2.GetModelMetadataResponse,
        SignatureDefMap=get_model_metadata_pb2.SignatureDefMap,
        TensorProto=tensor_pb2.TensorProto)


def _serialized(proto_file: str) -> bytes:
    """The serialized FileDescriptorProto of ``proto_file`` (``a/b/c.proto``), read from the
    installed generated module ``a/b/c_pb2.py`` without running it."""
    if proto_file.startswith("google/protobuf/"):
        # protobuf's own well-known types: importing them loads nothing of TensorFlow
        module = importlib.import_module(
            "google.protobuf." + Path(proto_file).stem + "_pb2")
        return module.DESCRIPTOR.serialized_pb
    top = proto_file.split("/", 1)[0]
    spec = importlib.util.find_spec(top)  # a top-level package is found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise LookupError(f"package {top} is not installed")
    root = Path(next(iter(spec.submodule_search_locations))).parent
    path = root / (proto_file.removesuffix(".proto") + "_pb2.py")
    for node in ast.walk(ast.parse(path.read_bytes(), str(path))):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "AddSerializedFile" and len(node.args) == 1):
            data = ast.literal_eval(node.args[0])
            if isinstance(data, bytes):
                return data
    raise LookupError(f"{path} holds no serialized descriptor")


# --- numpy <-> TensorProto (what tf.make_tensor_proto and tf.make_ndarray do) ---
def make_tensor_proto(value, proto_class):
    """``value`` (an array, or anything ``np.asarray`` takes) as a new ``proto_class``
    (a TensorProto class): bytes and str as DT_STRING, numbers in ``tensor_content``
    when there is more than one, as ``tf.make_tensor_proto`` lays them out."""
    array = np.asarray(value)
    proto = proto_class()
    proto.tensor_shape.SetInParent()  # a scalar's empty shape is written, as TensorFlow does
    for d in array.shape:
        proto.tensor_shape.dim.add(size=d)
    if array.dtype.kind in "OSU":
        proto.dtype = _ENUM["string"]
        strings = []
        for item in array.ravel():
            if isinstance(item, (bytes, np.bytes_)):
                strings.append(bytes(item))
            elif isinstance(item, str):
                strings.append(item.encode())
            else:
                raise TypeError(f"a string tensor holds bytes or str, not {type(item).__name__}")
        proto.string_val.extend(strings)
        return proto
    name = array.dtype.name
    if name not in _NUMPY:
        raise TypeError(f"dtype {name} has no TensorFlow counterpart")
    proto.dtype = _ENUM[name]
    flat = np.ascontiguousarray(array.ravel()).astype(array.dtype.newbyteorder("<"),
                                                        copy=False)
    if name in _CONTENT and flat.size > 1:
        proto.tensor_content = flat.tobytes()
    elif name == "float16":
        proto.half_val.extend(flat.view(np.uint16).tolist())
    elif array.dtype.kind == "c":
        getattr(proto, _FIELD[proto.dtype]).extend(
            flat.view(flat.real.dtype).tolist())  # real, imaginary, real, ...
    else:
        getattr(proto, _FIELD[proto.dtype]).extend(flat.tolist())
    return proto


def make_ndarray(proto) -> np.ndarray:
    """The array a TensorProto holds, as ``tf.make_ndarray`` reads it (strings as an
    object array of bytes; fewer values than the shape holds repeat the last one).
    TypeError for a dtype numpy cannot hold."""
    shape = [d.size for d in proto.tensor_shape.dim]
    count = int(np.prod(shape, dtype=np.int64))
    name = DTYPE_NAMES.get(proto.dtype)
    if name == "string":
        values = list(proto.string_val)
        if len(values) < count:
            values += [values[-1] if values else b""] * (count - len(values))
        out = np.empty(len(values), dtype=object)
        out[:] = values
        return out.reshape(shape)
    if name not in _NUMPY:
        raise TypeError(f"tensor dtype {name or proto.dtype} cannot be read without "
                        "TensorFlow")
    dtype = np.dtype(name)
    if proto.tensor_content:
        return np.frombuffer(proto.tensor_content, dtype.newbyteorder("<")).astype(
            dtype).reshape(shape)
    field = getattr(proto, _FIELD[proto.dtype])
    if name == "float16":
        values = np.array(field, dtype=np.uint16).view(np.float16)
    elif dtype.kind == "c":
        parts = np.array(field, dtype=np.float32 if name == "complex64" else np.float64)
        values = parts[0::2] + 1j * parts[1::2] if parts.size else parts
        values = values.astype(dtype)
    else:
        values = np.array(field, dtype=dtype)
    if values.size == 0:
        return np.zeros(shape, dtype)
    if values.size != count:
        values = np.pad(values, (0, count - values.size), "edge")
    return values.reshape(shape)
