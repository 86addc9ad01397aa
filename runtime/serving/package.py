# SPDX-License-Identifier: Apache-2.0
"""Model packages: a whole pipeline in one zip file, checked when it is read.

Layout::

    manifest.json                  format, versions, the stages in order, SHA-256 of every file
    manifest.sig                   optional: an Ed25519 signature of manifest.json (signing.py)
    stages/<i>-<name>/...          a TensorFlow stage: a SavedModel (signature serving_default)
    stages/<i>-<name>.npub         an accelerator stage: its program

The manifest records each stage's kind, name, path, inputs and outputs (in order) and,
for a program, the fingerprint of the device it was built for. Loading treats the zip
as hostile and refuses, with one :class:`PackageError` naming the package and the
problem, anything that is not exactly what the manifest describes:

- before anything is decompressed: entry names (no absolute paths, ``..``, ``.``, empty
  components, backslashes, colons or control characters), duplicates, names that
  collide on extraction (a file where a directory is, names differing only in case),
  symbolic links and other special files, encrypted entries, compression other than
  stored or deflate, and the declared sizes against :class:`PackageLimits`;
- the signature, when trusted keys are given (before the manifest is parsed);
- every field of the manifest (types, ranges, no NaN/Infinity, no duplicate keys);
- every file, streamed to disk inside a fresh directory while its SHA-256 and its
  byte count are checked (a declared size can lie: reading stops at it).

Example:
    >>> save_package(model, "resnet50.zip", sign_key="npusim-sign.pem")     # doctest: +SKIP
    >>> model = load_package("resnet50.zip", trust_keys=["npusim-sign.pub.pem"])  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import struct
import tempfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from npusim.runtime.serving.manifest import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    Manifest,
    ManifestError,
    StageEntry,
    name_problem,
    parse_manifest,
)
from npusim.runtime.serving.pipeline import (
    AcceleratorStage,
    ModelDefinition,
    PipelineError,
    TensorflowStage,
    import_tensorflow,
)
from npusim.runtime.serving.signing import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE,
    PrivateKeyLike,
    PublicKeyLike,
    SigningError,
    check_signature,
    load_private_key,
    load_trust_keys,
    sign_manifest,
)
from npusim.simulator.fileio import atomic_write
from npusim.simulator.program import Program

__all__ = ["DEFAULT_LIMITS", "FORMAT", "FORMAT_VERSION", "MANIFEST", "PackageError",
           "PackageLimits", "extract_package", "load_package", "save_package"]

_CHUNK = 1 << 20
_ENCRYPTED = 0x1 | 0x40 | 0x2000  # traditional, strong, masked central directory
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
# what zipfile, zlib and the filesystem raise on a corrupt or hostile zip
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, struct.error,
               OverflowError, NotImplementedError, RuntimeError, KeyError, IndexError)
_PROGRAM_ERRORS = (ValueError, KeyError, IndexError, TypeError, struct.error, OverflowError,
                   RecursionError)


class PackageError(PipelineError):
    """A package that cannot be read: not a package, corrupt, tampered, hostile or untrusted."""


@dataclass(frozen=True)
class PackageLimits:
    """How much a package may unpack to (a ResNet-50 package is about 100 MiB).

    Checked on the sizes the zip declares before anything is decompressed, then on the
    bytes as they come out (a declared size can lie), so a zip bomb costs at most these
    many bytes of temporary disk and one chunk of memory.
    """

    total_bytes: int = 2 * 2**30
    """All files together, uncompressed."""
    file_bytes: int = 2**30
    """One file, uncompressed."""
    manifest_bytes: int = 4 * 2**20
    """``manifest.json``, which is parsed in memory."""
    files: int = 10_000
    """Files in the package."""


DEFAULT_LIMITS = PackageLimits()


def _npusim_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("npusim")
    except PackageNotFoundError:
        return "unknown"


def _stage_path(index: int, stage) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", stage.name)
    return f"stages/{index}-{safe}" + (".npub" if stage.kind == "accelerator" else "")


def _save_tf_stage(stage: TensorflowStage, directory: Path) -> None:
    tf = import_tensorflow()
    module = tf.Module()
    module.serve = stage._serve
    concrete = stage._serve.get_concrete_function()
    module.captured = list(concrete.variables)  # a SavedModel saves tracked variables only
    try:
        tf.saved_model.save(module, str(directory), signatures={"serving_default": concrete})
    except (AssertionError, ValueError, TypeError) as exc:  # e.g. an untracked TF resource
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"stage '{stage.name}': cannot save it as a SavedModel: "
                            f"{first}") from None


def _entry(name: str) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0))  # reproducible bytes


def save_package(model: ModelDefinition, path: str | Path,
                 sign_key: PrivateKeyLike | None = None) -> Path:
    """Write ``model`` to ``path`` as one zip, atomically; returns the path.

    ``sign_key``, an Ed25519 private key (PEM file path, PEM bytes or a ``cryptography``
    key object), adds ``manifest.sig``: a signature over the exact manifest bytes, which
    hold the SHA-256 of every file, so it covers the whole package.
    """
    path = Path(path)
    key = None if sign_key is None else load_private_key(sign_key)  # fail before the work
    if not model.stages:
        raise PipelineError(f"model '{model.name}' has no stages to save")
    files: dict[str, bytes] = {}
    stages = []
    tf_version = None
    with tempfile.TemporaryDirectory(prefix="npusim-package-") as tmp:
        for i, stage in enumerate(model.stages):
            where = _stage_path(i, stage)
            entry = {"kind": stage.kind, "name": stage.name, "path": where,
                     "inputs": [s.to_json() for s in stage.inputs],
                     "outputs": [s.to_json() for s in stage.outputs]}
            if isinstance(stage, AcceleratorStage):
                files[where] = stage.program.to_bytes()
                entry["target"] = stage.program.target.fingerprint().hex()
            elif isinstance(stage, TensorflowStage):
                tf_version = import_tensorflow().__version__
                out = Path(tmp) / str(i)
                _save_tf_stage(stage, out)
                for f in sorted(p for p in out.rglob("*") if p.is_file()):
                    files[f"{where}/{f.relative_to(out).as_posix()}"] = f.read_bytes()
            else:
                raise PipelineError(f"stage '{stage.name}': cannot save a stage of kind "
                                    f"{getattr(stage, 'kind', type(stage).__name__)!r}")
            stages.append(entry)
    for name in files:
        if problem := name_problem(name):
            raise PipelineError(f"cannot package file {name!r}: {problem}")
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": model.name,
                "version": model.version, "npusim": _npusim_version(),
                "tensorflow": tf_version, "stages": stages,
                "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}}
    text = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr(_entry(MANIFEST), text, zipfile.ZIP_DEFLATED)
            if key is not None:
                z.writestr(_entry(SIGNATURE), sign_manifest(key, text), zipfile.ZIP_DEFLATED)
            for name, data in sorted(files.items()):
                # weights barely compress; store them and deflate the rest
                raw = name.endswith(".npub") or "/variables/" in name
                z.writestr(_entry(name), data,
                           zipfile.ZIP_STORED if raw else zipfile.ZIP_DEFLATED)

    atomic_write(path, write)
    return path


# --- reading ---
def _fail(path, what: str) -> PackageError:
    return PackageError(" ".join(f"package {path}: {what}".split()))  # always one line


def _why(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def _size(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _collision(files: Iterable[str], dirs: Iterable[str]) -> tuple[str, str] | None:
    """Two names that would land on one path when extracted: a file where a directory is,
    or names equal once case-folded and NFC-normalized (macOS, Windows)."""
    seen: dict[str, tuple[str, bool]] = {}
    for name, is_file in [(n, True) for n in files] + [(d, False) for d in dirs]:
        parts = name.split("/")
        for k in range(1, len(parts) + 1):
            p, file_here = "/".join(parts[:k]), is_file and k == len(parts)
            key = unicodedata.normalize("NFC", p).casefold()
            prev = seen.setdefault(key, (p, file_here))
            if prev != (p, file_here) and (file_here or prev[1]):
                return (prev[0] + ("" if prev[1] else "/"), p + ("" if file_here else "/"))
    return None


def _scan(z: zipfile.ZipFile, path, limits: PackageLimits) -> dict[str, zipfile.ZipInfo]:
    """The files of the zip by name, refused up front if anything about them is hostile."""
    infos = z.infolist()
    if len(infos) > limits.files + 2:
        raise _fail(path, f"{len(infos)} entries, over the cap of {limits.files} files")
    files: dict[str, zipfile.ZipInfo] = {}
    dirs: list[str] = []
    total = 0
    for info in infos:
        n = info.filename
        is_dir = n.endswith("/")
        name = n[:-1] if is_dir else n
        if problem := name_problem(name):
            raise _fail(path, f"unsafe file path {n!r}: {problem}")
        kind = stat.S_IFMT(info.external_attr >> 16)
        if stat.S_ISLNK(kind):
            raise _fail(path, f"{n} is a symbolic link")
        if kind not in (0, stat.S_IFDIR if is_dir else stat.S_IFREG):
            raise _fail(path, f"{n} is not a regular file (mode {oct(kind)})")
        if info.flag_bits & _ENCRYPTED:
            raise _fail(path, f"{n} is encrypted")
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise _fail(path, f"{n} uses compression method {info.compress_type}, "
                              "not stored or deflate")
        if info.file_size > limits.file_bytes:
            raise _fail(path, f"{n} declares {_size(info.file_size)} uncompressed, over the "
                              f"{_size(limits.file_bytes)} cap per file")
        total += info.file_size
        if total > limits.total_bytes:
            raise _fail(path, f"the files declare over {_size(total)} uncompressed, over the "
                              f"{_size(limits.total_bytes)} cap of a package")
        if is_dir:
            dirs.append(name)
        elif n in files:
            raise _fail(path, f"{n} appears twice in the zip")
        else:
            files[n] = info
    if clash := _collision(files, dirs):
        raise _fail(path, f"{clash[0]!r} and {clash[1]!r} collide when extracted (a file "
                          "where a directory is, or names differing only in case)")
    return files


def _copy(z: zipfile.ZipFile, info: zipfile.ZipInfo, write: Callable[[bytes], object],
          path) -> str:
    """Stream one entry to ``write`` in chunks; its SHA-256. Stops at the declared size."""
    digest, count = hashlib.sha256(), 0
    try:
        with z.open(info) as f:
            while chunk := f.read(_CHUNK):
                count += len(chunk)
                if count > info.file_size:  # zipfile stops there too; a lie costs nothing
                    raise _fail(path, f"file {info.filename} holds more than the "
                                      f"{info.file_size} bytes it declares")
                digest.update(chunk)
                write(chunk)
    except PackageError:
        raise
    except _ZIP_ERRORS as exc:
        raise _fail(path, f"file {info.filename} cannot be unpacked ({_why(exc)}): "
                          "tampered or corrupt") from None
    if count != info.file_size:
        raise _fail(path, f"file {info.filename} holds {count} bytes, not the "
                          f"{info.file_size} it declares: tampered or corrupt")
    return digest.hexdigest()


def _read_small(z: zipfile.ZipFile, info: zipfile.ZipInfo, cap: int, path) -> bytes:
    if info.file_size > cap:
        raise _fail(path, f"{info.filename} declares {_size(info.file_size)}, over its "
                          f"{_size(cap)} cap")
    buf = bytearray()
    _copy(z, info, buf.extend, path)
    return bytes(buf)


def _extract(z: zipfile.ZipFile, info: zipfile.ZipInfo, root: Path, sha256: str,
             path) -> None:
    dest = root.joinpath(*info.filename.split("/"))
    if not dest.resolve().is_relative_to(root.resolve()):
        raise _fail(path, f"unsafe file path {info.filename!r}: it leaves the extraction "
                          "directory")
    dest.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL | O_NOFOLLOW: never through a link, never over a file already there
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        digest = _copy(z, info, f.write, path)
    if digest != sha256:
        raise _fail(path, f"file {info.filename} does not match its checksum: "
                          "tampered or corrupt")


def _unpack(z: zipfile.ZipFile, path, root: Path, trusted: list,
            limits: PackageLimits) -> Manifest:
    files = _scan(z, path, limits)
    if MANIFEST not in files:
        raise _fail(path, f"no {MANIFEST}: not an npusim package")
    raw = _read_small(z, files.pop(MANIFEST), limits.manifest_bytes, path)
    sig = files.pop(SIGNATURE, None)
    if sig is not None:
        sig = _read_small(z, sig, MAX_SIGNATURE_BYTES, path)
    try:  # before the manifest is even parsed
        check_signature(raw, sig, trusted)
    except SigningError as exc:
        raise _fail(path, str(exc)) from None
    try:
        m = parse_manifest(raw, limits.files)
    except ManifestError as exc:
        raise _fail(path, str(exc)) from None
    extra = sorted(set(files) - set(m.files))
    if extra:
        raise _fail(path, f"file {extra[0]} is not listed in the manifest")
    missing = sorted(set(m.files) - set(files))
    if missing:
        raise _fail(path, f"file {missing[0]} listed in the manifest is missing")
    for name in sorted(files):
        _extract(z, files[name], root, m.files[name], path)
    return m


def extract_package(path: str | Path, directory: str | Path,
                    trust_keys: PublicKeyLike | Iterable[PublicKeyLike] = (),
                    limits: PackageLimits = DEFAULT_LIMITS) -> Manifest:
    """Check the package at ``path`` and unpack its files into ``directory``; its manifest.

    Everything :func:`load_package` checks short of loading the stages (no TensorFlow).
    ``directory`` must be absent or empty; on failure what was written there is removed.
    ``trust_keys`` as in :func:`load_package`.
    """
    path, root = Path(path), Path(directory)
    try:
        trusted = load_trust_keys(trust_keys)
    except SigningError as exc:
        raise _fail(path, str(exc)) from None
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise PackageError(f"package not found: {path}") from None
    except IsADirectoryError:
        raise PackageError(f"package path is a directory: {path}") from None
    except _ZIP_ERRORS as exc:
        raise _fail(path, f"not a zip file ({_why(exc)})") from None
    with z:
        created = not root.exists()
        root.mkdir(parents=True, exist_ok=True)
        if not created and any(root.iterdir()):
            raise _fail(path, f"the extraction directory {root} is not empty")
        try:
            return _unpack(z, path, root, trusted, limits)
        except BaseException as exc:
            for child in [root] if created else list(root.iterdir()):
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink()
            if isinstance(exc, _ZIP_ERRORS) and not isinstance(exc, PipelineError):
                raise _fail(path, f"cannot be read ({_why(exc)})") from None
            raise


def _check_tensorflow(m: Manifest, path) -> None:
    if not any(s.kind == "tensorflow" for s in m.stages):
        return
    tf = import_tensorflow()
    saved = m.tensorflow or ""
    if saved.split(".")[0] != tf.__version__.split(".")[0]:
        raise _fail(path, f"written with TensorFlow {saved or 'unknown'}, this host has "
                          f"{tf.__version__}: incompatible major version")


def _load_stage(s: StageEntry, root: Path, path):
    where = f"stage '{s.name}'"
    if s.kind == "accelerator":
        try:
            prog = Program.from_bytes((root / s.path).read_bytes(), s.path)
        except _PROGRAM_ERRORS as exc:
            raise _fail(path, f"{where}: the program fails to load: {_why(exc)}") from None
        if prog.target.fingerprint().hex() != s.target:
            raise _fail(path, f"{where}: the program's target {prog.target.name} "
                              f"({prog.target.fingerprint().hex()[:12]}) is not the one the "
                              f"manifest records")
        stage = AcceleratorStage(prog, s.name)
    else:
        try:
            stage = TensorflowStage.from_saved_model(
                root / s.path, s.name, inputs=[t.name for t in s.inputs],
                outputs=[t.name for t in s.outputs])
        except PipelineError as exc:
            raise _fail(path, str(exc)) from None
    if stage.inputs != list(s.inputs) or stage.outputs != list(s.outputs):
        raise _fail(path, f"{where}: its inputs/outputs differ from the manifest's "
                          f"(tampered or corrupt)")
    return stage


def load_package(path: str | Path, trust_keys: PublicKeyLike | Iterable[PublicKeyLike] = (),
                 limits: PackageLimits = DEFAULT_LIMITS) -> ModelDefinition:
    """Read a package written by :func:`save_package`; any problem is one PackageError.

    ``trust_keys``: Ed25519 public keys (PEM file paths, PEM bytes or key objects). When
    given, the package must carry a signature that verifies under one of them. Without
    them a signature is only checked to be well formed, not verified. The files are
    unpacked into a temporary directory, removed when the stages are loaded.
    """
    path = Path(path)
    with tempfile.TemporaryDirectory(prefix="npusim-package-") as tmp:
        root = Path(tmp) / "files"
        m = extract_package(path, root, trust_keys, limits)
        _check_tensorflow(m, path)
        stages = [_load_stage(s, root, path) for s in m.stages]
    try:
        return ModelDefinition(m.name, m.version, stages)
    except PipelineError as exc:
        raise _fail(path, str(exc)) from None
