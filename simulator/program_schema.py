# SPDX-License-Identifier: Apache-2.0
"""The JSON sections of a program file, checked against a schema before anything reads them.

A program may come from anyone, so every JSON section is parsed strictly (no ``NaN`` or
``Infinity``, bounded nesting) and validated with :mod:`jsonschema` against the schemas
below: types, ranges, enum values and sizes. :mod:`npusim.simulator.program_check` then checks
what a schema cannot say (extents against the memory map, field consistency).
``docs/isa.md`` lists the sections.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema

from npusim.simulator.numerics import FORMAT_NAMES, Rounding

MAX_DEPTH = 32
"""JSON nesting deeper than this is refused (the sections this build writes use 4)."""
MAX_NAME = 4096
"""Characters of a tensor, layer or op name."""
MAX_RANK = 16
MAX_U48 = 1 << 48
"""Addresses and byte counts: far above any device DRAM, small enough to add safely."""

NUMERIC_DTYPES = ("bool", "float16", "float32", "float64", "int8", "int16", "int32", "int64",
                  "uint8", "uint16", "uint32", "uint64")
"""Element types a tensor in DRAM may have (numpy names)."""
HOST_ONLY_DTYPE = "nontensor"
"""A value the host keeps that is not a tensor (a sequence or a map)."""

_U48 = {"type": "integer", "minimum": 0, "maximum": MAX_U48}
_NAME = {"type": "string", "maxLength": MAX_NAME}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "dtype", "addr", "nbytes"],
    "additionalProperties": False,
    "properties": {
        "name": _NAME,
        "shape": {"type": "array", "maxItems": MAX_RANK,
                  "items": {"type": "integer", "minimum": -1, "maximum": MAX_U48}},
        "dtype": {"enum": [*NUMERIC_DTYPES, HOST_ONLY_DTYPE, *FORMAT_NAMES]},
        "addr": _U48,
        "nbytes": _U48,
    },
}
_TENSORS = {"type": "array", "items": _TENSOR}
_REGION = {"type": "array", "prefixItems": [_U48, _U48], "minItems": 2, "maxItems": 2}

IO = {
    "type": "object",
    "required": ["inputs", "outputs"],
    "additionalProperties": False,
    # V_RD / V_WR name an I/O slot in an 8-bit field
    "properties": {"inputs": {**_TENSORS, "maxItems": 256},
                   "outputs": {**_TENSORS, "maxItems": 256}},
}
TENSORS = _TENSORS
METADATA = {
    "type": "object",
    "required": ["layers", "memory_map"],
    "properties": {
        "layers": {"type": "array", "items": {
            "type": "object", "required": ["name", "op"],
            "properties": {"name": _NAME, "op": _NAME, "tensor": _NAME,
                           "nodes": {"type": "array", "items": _NAME}}}},
        "memory_map": {
            "type": "object", "required": ["weights", "constants", "activations"],
            "additionalProperties": False,
            "properties": {"weights": _REGION, "constants": _REGION, "activations": _REGION}},
        "model": _NAME,
        "rounding": {"enum": [r.value for r in Rounding]},
        "seed": {"type": "integer", "minimum": 0, "maximum": (1 << 63) - 1},
        "pinned_weight_bytes": _U48,
        "streamed_weight_bytes": _U48,
        "placement": {"type": "array", "items": {
            "type": "object", "required": ["node", "op", "where", "why"],
            "properties": {k: {"type": "string"} for k in ("node", "op", "where", "why")}}},
        "summary": {"type": "object", "additionalProperties": _U48},
    },
    # keys a later minor version adds are carried along unread
}
HOST = {"type": "array", "items": {
    "type": "object",
    "required": ["name", "op", "model", "inputs", "outputs", "on_host"],
    "additionalProperties": False,
    "properties": {
        "name": _NAME, "op": _NAME, "model": _REGION, "inputs": _TENSORS,
        "outputs": _TENSORS, "on_host": {"type": "array", "items": _NAME},
    },
}}
DEVICE = {"type": "object", "required": ["name"], "properties": {"name": _NAME}}


class SchemaError(ValueError):
    """A JSON section that does not parse or does not match its schema."""


def _reject_constant(name: str) -> Any:
    raise SchemaError(f"{name} is not a JSON number")


def _depth(obj: Any) -> int:
    """Nesting depth, walked without recursion (the parser's own limit is the stack's)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        item, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return deepest


def parse(data: bytes, schema: dict, section: str) -> Any:
    """Parse one JSON section strictly and check it against ``schema``."""
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise SchemaError(f"section {section}: JSON nested too deep") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"section {section}: not valid JSON ({_short(exc)})") from None
    if _depth(obj) > MAX_DEPTH:
        raise SchemaError(f"section {section}: JSON nested deeper than {MAX_DEPTH} levels")
    error = jsonschema.exceptions.best_match(_validator(schema).iter_errors(obj))
    if error is not None:
        raise SchemaError(f"section {section} at {error.json_path}: {_short(error.message)}")
    return obj


def _short(exc: object, limit: int = 160) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


_VALIDATORS: dict[int, jsonschema.protocols.Validator] = {}


def _validator(schema: dict) -> jsonschema.protocols.Validator:
    v = _VALIDATORS.get(id(schema))
    if v is None:
        v = _VALIDATORS[id(schema)] = jsonschema.Draft202012Validator(schema)
    return v
