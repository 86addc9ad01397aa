# SPDX-License-Identifier: Apache-2.0
"""TF Serving's JSON for tensors: a REST predict body into a ``PredictRequest``, and the
outputs into the answer's JSON.

It follows ``tensorflow_serving/util/json_tensor.cc`` (TF Serving 2.18), message for
message where it can: the row form (``"instances"``: a list with one item per batch
row, each a value or an object of named inputs, batched along a new first dimension)
and the columnar form (``"inputs"``: one value, or an object of named values); a
string is UTF-8 text or ``{"b64": "..."}`` bytes; ``NaN``, ``Infinity`` and
``-Infinity`` are numbers. The answer is ``{"predictions": ...}`` for the row form
and ``{"outputs": ...}`` for the columnar one, the output's name dropped when there
is only one.

Where it differs, it is stricter: a body that is not UTF-8, an object with a key
twice, a columnar ``"inputs"`` object with a name the model does not take (TF
Serving ignores it) are refused. A float is written as Python's ``repr`` of the
float64 that holds the float32 exactly (``0.10000000149011612`` where TF Serving
writes ``0.1``): any JSON reader gets that float32 back exactly, with no rounding
of its own in between. Output strings that are not UTF-8 go out as ``{"b64": ...}``
(TF Serving would write invalid JSON).

Everything here is the client's to get wrong: each refusal is a
:class:`~npusim.runtime.serving.service.RequestError` with a one-line message. The
request it fills is checked again, as every gRPC request is, by
:class:`~npusim.runtime.serving.service.RequestDecoder`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from enum import StrEnum

import grpc
import numpy as np

from npusim.runtime.serving.protos import datatype_enum, value_field
from npusim.runtime.serving.service import MAX_RANK, RequestError

__all__ = ["Format", "fill_inputs", "outputs_json", "parse_body", "signature_name"]

_MAX_DEBUG = 256  # TF Serving's kMaxJsonDebugStringBytes
_B64 = "b64"
_BYTES_SUFFIX = "_bytes"  # TF Serving writes outputs named so as {"b64": ...}
# TensorFlow's DataTypeString, which TF Serving's messages use, where it differs from
# the Python name
_TF_TYPE_STRING = {"float32": "float", "float64": "double", "float16": "half"}
_B64_TEXT = re.compile(r"[A-Za-z0-9+/]*={0,2}")


class Format(StrEnum):
    """The two request forms, which the answer follows."""

    ROW = "predictions"  # "instances" in, "predictions" out
    COLUMNAR = "outputs"  # "inputs" in, "outputs" out


def _invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


class _DuplicateKey(ValueError):
    """A JSON object that names one key twice."""


def _object(pairs: list[tuple[str, object]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(f"key {json.dumps(key[:64])} appears twice in an object")
    return out


def parse_body(body: bytes) -> dict:
    """The JSON object of a request body (one line naming the problem if it is not one)."""
    if not body.strip():
        raise _invalid("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _invalid(f"JSON Parse error: the body is not UTF-8 (byte 0x{body[exc.start]:02x} "
                       f"at offset: {exc.start})") from None
    try:
        doc = json.loads(text, object_pairs_hook=_object)
    except json.JSONDecodeError as exc:
        raise _invalid(f"JSON Parse error: {exc.msg} at offset: {exc.pos}") from None
    except RecursionError:
        raise _invalid("JSON Parse error: the document nests too deeply") from None
    except ValueError as exc:  # a duplicate key, an integer of thousands of digits
        raise _invalid(f"JSON Parse error: {str(exc).split(';')[0]}") from None
    if not isinstance(doc, dict):
        raise _invalid(f"JSON Value: {_debug(doc)} Is not object")
    return doc


def signature_name(doc: dict) -> str:
    """The request's ``signature_name`` (empty if it names none)."""
    name = doc.get("signature_name", "")
    if not isinstance(name, str):
        raise _invalid(f"JSON Value: {_debug(doc)} not formatted correctly. 'signature_name' "
                       "key must be a string value.")
    return name


def fill_inputs(doc: dict, request, dtypes: dict[str, str],
                unknown_input: Callable[[str], RequestError]) -> Format:
    """Fill ``request.inputs`` from the ``"instances"`` or ``"inputs"`` of ``doc``, for a
    model whose inputs have ``dtypes`` (name -> TensorFlow dtype name, in the model's
    order); returns the form, which the answer follows."""
    if "instances" in doc and "inputs" in doc:
        raise _invalid(f"JSON Value: {_debug(doc)} Not formatted correctly expecting only one "
                       "of 'inputs' or 'instances' keys to exist")
    if "instances" in doc:
        instances = doc["instances"]
        if not isinstance(instances, list):
            raise _invalid(f"JSON Value: {_debug(doc)} Expecting 'instances' to be an list/array")
        if not instances:
            raise _invalid(f"JSON Value: {_debug(doc)} No values in 'instances' array")
        tensors, form = _rows(instances, dtypes, unknown_input), Format.ROW
    elif "inputs" in doc:
        tensors, form = _columns(doc["inputs"], dtypes, unknown_input), Format.COLUMNAR
    else:
        raise _invalid("Missing 'inputs' or 'instances' key")
    for name, (shape, values) in tensors.items():
        proto = request.inputs[name]
        proto.dtype = datatype_enum(dtypes[name])
        for d in shape:
            proto.tensor_shape.dim.add(size=d)
        getattr(proto, value_field(dtypes[name])).extend(values)
    return form


def _rows(instances: list, dtypes: dict[str, str], unknown_input) -> dict:
    names = list(dtypes)
    named = _is_named(instances[0])
    if not named and len(names) > 1:
        raise _invalid("instances is a plain list, but expecting list of objects as multiple "
                       "input tensors required as per tensorinfo_map")
    shapes: dict[str, list[int]] = {}
    sizes: dict[str, int] = {}
    values: dict[str, list] = {name: [] for name in names}

    def add(i: int, name: str, item, where: str) -> None:
        try:
            shape = _dense_shape(item)
            before = len(values[name])
            _fill(item, shape, dtypes[name], values[name])
            size = len(values[name]) - before
            if name not in shapes:
                shapes[name], sizes[name] = shape, size
            elif size != sizes[name]:
                raise _invalid(f"Expecting tensor size: {sizes[name]} but got: {size}")
            elif shape != shapes[name]:
                raise _invalid(f"Expecting shape {_dims(shapes[name])} but got: {_dims(shape)}")
        except RequestError as exc:
            raise RequestError(exc.code, f"Failed to process element: {i} {where}of 'instances' "
                                         f"list. Error: {exc.message}") from None

    for i, item in enumerate(instances):
        if named:
            if not _is_named(item):
                raise _invalid(f"Expecting object but got list at item {i} of input list")
            for key, value in item.items():
                if key not in dtypes:
                    raise _invalid(f"Failed to process element: {i} key: {_quote(key)} of "
                                   f"'instances' list. Error: {unknown_input(key).message}")
                add(i, key, value, f"key: {_quote(key)} ")
            if len(item) != len(names):
                raise _invalid(f"Failed to process element: {i} of 'instances' list. JSON "
                               f"object: {_debug(item)} keys must be equal to: "
                               f"{','.join(sorted(names))}")
        else:
            if _is_named(item):
                raise _invalid(f"Expecting value/list but got object at item {i} of input list")
            add(i, names[0], item, "")
    return {name: ([len(instances), *shapes[name]], values[name]) for name in names}


def _columns(inputs, dtypes: dict[str, str], unknown_input) -> dict:
    names = list(dtypes)
    if not _is_named(inputs):
        if len(names) > 1:
            raise _invalid("inputs is a plain value/list, but expecting an object as multiple "
                           "input tensors required as per tensorinfo_map")
        inputs = {names[0]: inputs}
    else:
        for key in inputs:
            if key not in dtypes:
                raise unknown_input(key)
    out = {}
    for name in names:
        if name not in inputs:
            raise _invalid(f"Missing named input: {name} in 'inputs' object.")
        shape, values = _dense_shape(inputs[name]), []
        _fill(inputs[name], shape, dtypes[name], values)
        out[name] = (shape, values)
    return out


def _dense_shape(value) -> list[int]:
    """The shape a nested list declares by its first items (TF Serving's GetDenseTensorShape);
    :func:`_fill` checks that every other item agrees."""
    shape = []
    while isinstance(value, list):
        if len(shape) == MAX_RANK:
            raise _invalid(f"JSON Value nests lists deeper than {MAX_RANK} levels (TensorFlow's "
                           "largest rank)")
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill(value, shape: list[int], dtype: str, out: list) -> None:
    """Append the leaves of ``value`` to ``out`` in row-major order, each converted to
    ``dtype``, checking that the nesting matches ``shape`` (iteratively: no recursion for
    a hostile depth to exhaust)."""
    convert = _converter(dtype)
    rank = len(shape)
    stack = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if not isinstance(item, list):
            if level != rank:
                raise _invalid(f"JSON Value: {_debug(item)} found at incorrect level: "
                               f"{level + 1} in the JSON DOM. Expected at level: {rank}")
            out.append(convert(item))
            continue
        if level >= rank:
            raise _invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
        if len(item) != shape[level]:
            raise _invalid(f"Encountered list at unexpected size: {len(item)} at level: {level} "
                           f"expected size: {shape[level]}")
        if level == rank - 1:  # the innermost lists hold the values: no stack for them
            for leaf in item:
                if isinstance(leaf, list):
                    raise _invalid(f"Encountered list at unexpected level: {level + 1} "
                                   f"expected < {rank}")
                out.append(convert(leaf))
        else:
            stack.extend((child, level + 1) for child in reversed(item))


def _converter(dtype: str) -> Callable[[object], object]:
    """What one JSON value becomes in a TensorProto of ``dtype`` (TF Serving's
    AddValueToTensor), or the refusal naming it."""
    want = _TF_TYPE_STRING.get(dtype, dtype)
    if dtype in ("float32", "float64"):
        def convert(value):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _type_error(value, want)
            try:
                return float(value)
            except OverflowError:
                raise _invalid(f"JSON Value: {_debug(value)} is too large for {want}") from None
        return convert
    if dtype in ("int8", "uint8", "int16", "int32", "int64", "uint32", "uint64"):
        # TF Serving takes any int32 for the narrower types; their own range is the sane bound
        info = np.iinfo(dtype)
        low, high = int(info.min), int(info.max)

        def convert(value):
            if isinstance(value, bool) or not isinstance(value, int):
                raise _type_error(value, want)
            if not low <= value <= high:
                raise _invalid(f"JSON Value: {_debug(value)} is out of the range of {want}")
            return value
        return convert
    if dtype == "bool":
        def convert(value):
            if not isinstance(value, bool):
                raise _type_error(value, want)
            return value
        return convert
    if dtype == "string":
        return _string

    def unsupported(value):
        if isinstance(value, dict):
            raise _type_error(value, want)
        raise RequestError(grpc.StatusCode.UNIMPLEMENTED, f"Conversion of JSON Value: "
                                                          f"{_debug(value)} to type: {want}")
    return unsupported


def _string(value) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:
            raise _invalid(f"JSON Value: {_debug(value)} holds an unpaired surrogate "
                           "(\\ud800-\\udfff); send bytes as {\"b64\": ...}") from None
    if isinstance(value, dict):
        if not _is_b64(value):
            raise _invalid(f"JSON Value: {_debug(value)} not formatted correctly for base64 "
                           "data")
        text = value[_B64]
        if not _B64_TEXT.fullmatch(text):
            raise _invalid(f"Unable to base64 decode: {_debug(value)} holds characters that "
                           "are not base64")
        try:  # the padding may be left out, as TF Serving's decoder allows
            return base64.b64decode(text + "=" * (-len(text) % 4) if "=" not in text else text,
                                    validate=True)
        except (binascii.Error, ValueError):
            raise _invalid(f"Unable to base64 decode: {_debug(value)}") from None
    raise _type_error(value, "string")


def _type_error(value, want: str) -> RequestError:
    return _invalid(f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of expected "
                    f"type: {want}")


def _is_b64(value) -> bool:
    return (isinstance(value, dict) and len(value) == 1 and isinstance(value.get(_B64), str))


def _is_named(value) -> bool:
    """An object of named inputs (not a ``{"b64": ...}`` value)."""
    return isinstance(value, dict) and not _is_b64(value)


def _json_type(value) -> str:
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _dims(shape: list[int]) -> str:
    return "[" + ",".join(map(str, shape)) + "]"


def _quote(text: str) -> str:
    return json.dumps(text if len(text) <= 64 else text[:64] + "...")


def _debug(value) -> str:
    """``value`` as JSON text for a message: one line, ASCII, at most about 256 characters
    (TF Serving's JsonValueToDebugString), however large or deep ``value`` is."""
    parts: list[str] = []
    room = [_MAX_DEBUG]

    def put(text: str) -> None:
        parts.append(text)
        room[0] -= len(text)

    def walk(item) -> None:  # each level writes a character: depth <= the budget
        if room[0] <= 0:
            return
        if isinstance(item, list):
            put("[")
            for i, child in enumerate(item):
                if room[0] <= 0:
                    return
                put("," * bool(i))
                walk(child)
            put("]")
        elif isinstance(item, dict):
            put("{")
            for i, (key, child) in enumerate(item.items()):
                if room[0] <= 0:
                    return
                put("," * bool(i) + _quote(key) + ":")
                walk(child)
            put("}")
        elif isinstance(item, str):
            put(_quote(item))
        else:
            put(json.dumps(item))

    walk(value)
    text = "".join(parts)
    return text if len(text) <= _MAX_DEBUG else text[:_MAX_DEBUG] + "..."


# --- the answer ---
def outputs_json(outputs: dict[str, np.ndarray], form: Format) -> bytes:
    """The JSON answer of a predict call: ``{"predictions": ...}`` or ``{"outputs": ...}``."""
    if form is Format.ROW:
        batch = None
        for name, array in outputs.items():
            if array.ndim == 0:
                raise _invalid(f"Tensor name: {name} has no shape information")
            if batch is not None and array.shape[0] != batch:
                raise _invalid(f"Tensor name: {name} has inconsistent batch size: "
                               f"{array.shape[0]} expecting: {batch}")
            batch = array.shape[0]
        if len(outputs) == 1:
            ((name, array),) = outputs.items()
            answer = _jsonable(name, array)
        else:
            columns = {name: _jsonable(name, array) for name, array in outputs.items()}
            answer = [{name: column[i] for name, column in columns.items()}
                      for i in range(batch)]
    elif len(outputs) == 1:
        ((name, array),) = outputs.items()
        answer = _jsonable(name, array)
    else:
        answer = {name: _jsonable(name, array) for name, array in outputs.items()}
    return (json.dumps({form.value: answer}, allow_nan=True) + "\n").encode()


def _jsonable(name: str, array: np.ndarray):
    """Nested lists of JSON values; a float32 becomes the float64 that holds it exactly,
    whose ``repr`` reads back to the same float32."""
    kind = array.dtype.kind
    if kind in "fiub":
        return array.tolist()
    if kind == "O" or kind == "S":
        as_b64 = name.endswith(_BYTES_SUFFIX)

        def text(item):
            if isinstance(item, list):
                return [text(x) for x in item]
            data = item if isinstance(item, bytes) else str(item).encode()
            if not as_b64:
                try:
                    return data.decode("utf-8")
                except UnicodeDecodeError:
                    pass
            return {_B64: base64.b64encode(data).decode("ascii")}
        return text(array.tolist())
    raise _invalid(f"Failed to write JSON value for tensor type: {array.dtype.name}")
