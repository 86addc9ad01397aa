# SPDX-License-Identifier: Apache-2.0
"""The manifest of a model package, and a strict reader for it: it is hostile JSON.

Every field is checked for its type and range before use: strings are printable and
bounded, integers are integers (not booleans, not floats), lists are bounded, numbers
are finite (``NaN`` and ``Infinity`` are refused, as are duplicate keys and keys this
format does not define), nesting that would exhaust the recursion limit is an error.

Example:
    >>> m = parse_manifest(zipfile.ZipFile("m.zip").read("manifest.json"))  # doctest: +SKIP
    >>> [(s.kind, s.name) for s in m.stages]                                 # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

from npusim.runtime.serving.pipeline import TensorSpec

__all__ = ["FORMAT", "FORMAT_VERSION", "MANIFEST", "Manifest", "ManifestError", "StageEntry",
           "name_problem", "parse_manifest"]

FORMAT = "npusim-package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MAX_PATH = 1024
MAX_TEXT = 256
MAX_STAGES = 256
MAX_TENSORS = 256  # inputs, or outputs, of one stage
MAX_RANK = 32
MAX_DIM = 2**62
_SHA256 = re.compile(r"[0-9a-f]{64}")
_TOP = {"format", "format_version", "name", "version", "npusim", "tensorflow", "stages", "files"}
_STAGE = {"kind", "name", "path", "inputs", "outputs"}


class ManifestError(ValueError):
    """A manifest that is not JSON, not of this format, or not well formed (one line)."""


class _Bad(Exception):
    pass


@dataclass(frozen=True)
class StageEntry:
    """One stage as the manifest records it."""

    kind: str
    """``"tensorflow"`` or ``"accelerator"``."""
    name: str
    path: str
    """Its SavedModel directory (tensorflow) or program file (accelerator) in the zip."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    target: str | None
    """Accelerator: the fingerprint (hex) of the device the program was compiled for."""


@dataclass(frozen=True)
class Manifest:
    """A checked manifest: the model, its stages in order, every file's SHA-256."""

    name: str
    version: int
    npusim: str
    """The npusim version that wrote the package."""
    tensorflow: str | None
    """The TensorFlow version that wrote the TensorFlow stages (None: there are none)."""
    stages: tuple[StageEntry, ...]
    files: dict[str, str]
    """Path in the zip -> SHA-256 (hex) of its content."""


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a file of a package (zip slip and friends), or None."""
    if not name or len(name) > MAX_PATH:
        return "empty or too long"
    if not name.isprintable():
        return "control characters"
    if "\\" in name or ":" in name:
        return "a backslash or colon (a Windows path or drive)"
    if name.startswith("/"):
        return "absolute"
    if any(part in ("", ".", "..") or len(part) > 255 for part in name.split("/")):
        return "an empty, '.', '..' or overlong component"
    return None


def _show(v) -> str:
    """A short, one-line rendering of a JSON value for a message."""
    if isinstance(v, dict | list):
        return f"a JSON {'object' if isinstance(v, dict) else 'array'}"
    try:
        r = repr(v)
    except ValueError:  # an integer too long to print
        return "a huge integer"
    return r if len(r) <= 40 else r[:37] + "..."


def _constant(name: str):
    raise ValueError(f"non-standard constant {name}")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:20]} is out of range")
    return value


def _unique(pairs: list) -> dict:
    d = {}
    for k, v in pairs:
        if k in d:
            raise ValueError(f"duplicate key {_show(k)}")
        d[k] = v
    return d


def _fields(d, keys: set[str], where: str) -> dict:
    if not isinstance(d, dict):
        raise _Bad(f"{where}must be an object, not {_show(d)}")
    if missing := sorted(keys - d.keys()):
        raise _Bad(f"{where}missing key {missing[0]!r}")
    if extra := sorted(d.keys() - keys):
        raise _Bad(f"{where}unknown key {_show(extra[0])}")
    return d


def _text(v, what: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(v, str) or not v or len(v) > limit or not v.isprintable():
        raise _Bad(f"{what} must be a printable string of 1 to {limit} characters, "
                   f"not {_show(v)}")
    return v


def _int(v, what: str, lo: int, hi: int) -> int:
    if type(v) is not int or not lo <= v <= hi:  # bool is not an int here
        raise _Bad(f"{what} must be an integer in {lo}..{hi}, not {_show(v)}")
    return v


def _list(v, what: str, most: int) -> list:
    if not isinstance(v, list) or len(v) > most:
        got = f"{len(v)} items" if isinstance(v, list) else _show(v)
        raise _Bad(f"{what} must be a list of at most {most} items, not {got}")
    return v


def _spec(d, what: str) -> TensorSpec:
    _fields(d, {"name", "dtype", "shape"}, f"{what}: ")
    shape = d["shape"]
    if shape is not None:
        shape = tuple(None if x is None else _int(x, f"{what} dimension", 0, MAX_DIM)
                      for x in _list(shape, f"{what} shape", MAX_RANK))
    return TensorSpec(_text(d["name"], f"{what} name"), _text(d["dtype"], f"{what} dtype", 32),
                      shape)


def _stage(d, i: int) -> StageEntry:
    if not isinstance(d, dict):
        raise _Bad(f"stage #{i} must be an object, not {_show(d)}")
    kind = d.get("kind")
    if not isinstance(kind, str) or kind not in ("tensorflow", "accelerator"):
        raise _Bad(f"stage #{i}: kind must be 'tensorflow' or 'accelerator', not {_show(kind)}")
    _fields(d, _STAGE | ({"target"} if kind == "accelerator" else set()), f"stage #{i}: ")
    name = _text(d["name"], f"stage #{i} name")
    where = f"stage '{name}'"
    path = _text(d["path"], f"{where} path", MAX_PATH)
    if (problem := name_problem(path)) or not path.startswith("stages/"):
        raise _Bad(f"{where}: unsafe file path {path!r} ({problem or 'not under stages/'})")
    target = d.get("target")
    if kind == "accelerator" and not (isinstance(target, str) and _SHA256.fullmatch(target)):
        raise _Bad(f"{where}: target must be a device fingerprint (64 hex digits)")
    inputs, outputs = (tuple(_spec(t, f"{where} {io} #{j}")
                             for j, t in enumerate(_list(d[io], f"{where} {io}", MAX_TENSORS)))
                       for io in ("inputs", "outputs"))
    return StageEntry(kind, name, path, inputs, outputs, target)


def _check_layout(stages: tuple[StageEntry, ...], files: dict) -> None:
    """Each stage has its files, no two stages share a path, every file has its stage."""
    for a in stages:
        for b in stages:
            if a is not b and (a.path == b.path or b.path.startswith(a.path + "/")):
                raise _Bad(f"stages '{a.name}' and '{b.name}' share the path {b.path}")
        if a.kind == "accelerator" and a.path not in files:
            raise _Bad(f"stage '{a.name}': no program file {a.path}")
        if a.kind == "tensorflow" and f"{a.path}/saved_model.pb" not in files:
            raise _Bad(f"stage '{a.name}': no saved_model.pb under {a.path}/")
    for n in files:
        if not any(n == s.path if s.kind == "accelerator" else n.startswith(s.path + "/")
                   for s in stages):
            raise _Bad(f"file {n} belongs to no stage")


def _manifest(m: dict, max_files: int) -> Manifest:
    _fields(m, _TOP, "")
    files = m["files"]
    if not isinstance(files, dict) or len(files) > max_files:
        raise _Bad(f"'files' must map at most {max_files} paths to their SHA-256")
    for n, digest in files.items():
        if problem := name_problem(n):
            raise _Bad(f"unsafe file path {_show(n)} in 'files': {problem}")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise _Bad(f"file {n}: the checksum must be a SHA-256 (64 lowercase hex digits)")
    stages = tuple(_stage(s, i) for i, s in enumerate(_list(m["stages"], "'stages'",
                                                            MAX_STAGES)))
    if not stages:
        raise _Bad("'stages' is empty")
    tf = m["tensorflow"]
    if tf is not None:
        _text(tf, "'tensorflow'", 64)
    elif any(s.kind == "tensorflow" for s in stages):
        raise _Bad("'tensorflow' must give the version that wrote the TensorFlow stages")
    _check_layout(stages, files)
    return Manifest(_text(m["name"], "'name'"), _int(m["version"], "'version'", 1, 2**63 - 1),
                    _text(m["npusim"], "'npusim'", 64), tf, stages, dict(files))


def parse_manifest(raw: bytes, max_files: int = 10_000) -> Manifest:
    """The checked manifest of ``raw`` (``manifest.json``'s bytes); else a ManifestError."""
    try:
        m = json.loads(raw.decode("utf-8"), parse_constant=_constant, parse_float=_finite,
                       object_pairs_hook=_unique)
    except RecursionError:
        raise ManifestError(f"{MANIFEST} is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an over-long integer
        why = " ".join(str(exc).split())[:200]
        raise ManifestError(f"{MANIFEST} is not valid JSON: {why}") from None
    fmt = m.get("format") if isinstance(m, dict) else None
    if not isinstance(fmt, str) or fmt != FORMAT:
        raise ManifestError(f"unknown format {_show(fmt)} (expected {FORMAT!r})")
    version = m.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:
        raise ManifestError(f"package format version {_show(version)} is not supported "
                            f"(this build reads {FORMAT_VERSION})")
    try:
        return _manifest(m, max_files)
    except _Bad as exc:
        raise ManifestError(f"malformed {MANIFEST}: {exc}") from None
