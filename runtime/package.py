# SPDX-License-Identifier: Apache-2.0
"""Model packages: a whole pipeline in one zip file, checked when it is read.

Layout::

    manifest.json                  format, versions, the stages in order, SHA-256 of every file
    stages/<i>-<name>/...          a TensorFlow stage: a SavedModel (signature serving_default)
    stages/<i>-<name>.npub         an accelerator stage: its program

The manifest records each stage's kind, name, path, inputs and outputs (in order) and,
for a program, the fingerprint of the device it was built for. Loading refuses a
package that is not exactly what the manifest describes.

Example:
    >>> save_package(model, "resnet50.zip")      # doctest: +SKIP
    >>> model = load_package("resnet50.zip")     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import re
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from runtime.pipeline import (
    AcceleratorStage,
    ModelDefinition,
    PipelineError,
    TensorflowStage,
    TensorSpec,
    import_tensorflow,
)
from simulator.fileio import atomic_write
from simulator.program import Program, ProgramError

__all__ = ["FORMAT", "FORMAT_VERSION", "load_package", "save_package"]

FORMAT = "npusim-package"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


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


def save_package(model: ModelDefinition, path: str | Path) -> Path:
    """Write ``model`` to ``path`` as one zip, atomically; returns the path."""
    path = Path(path)
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
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "name": model.name,
                "version": model.version, "npusim": _npusim_version(),
                "tensorflow": tf_version, "stages": stages,
                "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}}

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w") as z:
            z.writestr(MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n",
                       zipfile.ZIP_DEFLATED)
            for name, data in sorted(files.items()):
                # weights barely compress; store them and deflate the rest
                raw = name.endswith(".npub") or "/variables/" in name
                z.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data,
                           zipfile.ZIP_STORED if raw else zipfile.ZIP_DEFLATED)

    atomic_write(path, write)
    return path


def _fail(path, what: str) -> PipelineError:
    return PipelineError(f"package {path}: {what}")


def _read_manifest(z: zipfile.ZipFile, path) -> dict:
    try:
        m = json.loads(z.read(MANIFEST))
    except KeyError:
        raise _fail(path, f"no {MANIFEST}: not an npusim package") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise _fail(path, f"{MANIFEST} is not valid JSON: {exc}") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        fmt = m.get("format") if isinstance(m, dict) else None
        raise _fail(path, f"unknown format {fmt!r} (expected {FORMAT!r})")
    if m.get("format_version") != FORMAT_VERSION:
        raise _fail(path, f"package format version {m.get('format_version')!r} is not "
                          f"supported (this build reads {FORMAT_VERSION})")
    try:
        files, stages = m["files"], m["stages"]
        if not (isinstance(files, dict) and isinstance(stages, list) and stages
                and all(isinstance(v, str) for v in files.values())):
            raise TypeError("'files' must map paths to SHA-256 and 'stages' list the stages")
        for s in stages:
            s["specs"] = ([TensorSpec.from_json(t) for t in s["inputs"]],
                          [TensorSpec.from_json(t) for t in s["outputs"]])
            if s["kind"] not in ("tensorflow", "accelerator") or not isinstance(s["path"], str):
                raise TypeError(f"stage {s.get('name')!r}: bad kind or path")
        int(m["version"]), str(m["name"])
    except KeyError as exc:
        raise _fail(path, f"malformed {MANIFEST}: missing key {exc}") from None
    except (TypeError, ValueError, AttributeError) as exc:
        raise _fail(path, f"malformed {MANIFEST}: {exc}") from None
    return m


def _check_files(z: zipfile.ZipFile, m: dict, path) -> dict[str, bytes]:
    names = [i.filename for i in z.infolist() if not i.is_dir() and i.filename != MANIFEST]
    for n in (*names, *m["files"]):
        p = PurePosixPath(n)
        if p.is_absolute() or ".." in p.parts or "\\" in n:
            raise _fail(path, f"unsafe file path {n!r}")
    extra = sorted(set(names) - set(m["files"]))
    if extra:
        raise _fail(path, f"file {extra[0]} is not listed in the manifest")
    missing = sorted(set(m["files"]) - set(names))
    if missing:
        raise _fail(path, f"file {missing[0]} listed in the manifest is missing")
    data = {}
    for n in sorted(names):
        try:
            blob = z.read(n)
        except (zipfile.BadZipFile, zlib.error) as exc:
            raise _fail(path, f"file {n} cannot be read ({exc}): tampered or corrupt") from None
        if hashlib.sha256(blob).hexdigest() != m["files"][n]:
            raise _fail(path, f"file {n} does not match its checksum: tampered or corrupt")
        data[n] = blob
    owned = {n for n in data for s in m["stages"]
             if n == s["path"] or n.startswith(s["path"].rstrip("/") + "/")}
    if set(data) - owned:
        raise _fail(path, f"file {sorted(set(data) - owned)[0]} belongs to no stage")
    return data


def _check_tensorflow(m: dict, path) -> None:
    if not any(s["kind"] == "tensorflow" for s in m["stages"]):
        return
    tf = import_tensorflow()
    saved = str(m.get("tensorflow") or "")
    if saved.split(".")[0] != tf.__version__.split(".")[0]:
        raise _fail(path, f"written with TensorFlow {saved or 'unknown'}, this host has "
                          f"{tf.__version__}: incompatible major version")


def load_package(path: str | Path) -> ModelDefinition:
    """Read a package written by :func:`save_package`; any inconsistency is a PipelineError."""
    path = Path(path)
    try:
        z = zipfile.ZipFile(path)
    except FileNotFoundError:
        raise PipelineError(f"package not found: {path}") from None
    except IsADirectoryError:
        raise PipelineError(f"package path is a directory: {path}") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise _fail(path, f"not a zip file ({exc})") from None
    with z:
        m = _read_manifest(z, path)
        data = _check_files(z, m, path)
    _check_tensorflow(m, path)
    stages = []
    with tempfile.TemporaryDirectory(prefix="npusim-package-") as tmp:
        for i, s in enumerate(m["stages"]):
            inputs, outputs = s["specs"]
            where = f"stage '{s['name']}'"
            if s["kind"] == "accelerator":
                stage = _load_program_stage(s, data, path)
            else:
                root = Path(tmp) / str(i)
                prefix = s["path"].rstrip("/") + "/"
                mine = {n[len(prefix):]: b for n, b in data.items() if n.startswith(prefix)}
                if "saved_model.pb" not in mine:
                    raise _fail(path, f"{where}: no saved_model.pb under {prefix}")
                for rel, blob in mine.items():
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    (root / rel).write_bytes(blob)
                stage = TensorflowStage.from_saved_model(
                    root, s["name"], inputs=[t.name for t in inputs],
                    outputs=[t.name for t in outputs])
            if stage.inputs != inputs or stage.outputs != outputs:
                raise _fail(path, f"{where}: its inputs/outputs differ from the manifest's "
                                  f"(tampered or corrupt)")
            stages.append(stage)
    try:
        return ModelDefinition(str(m["name"]), int(m["version"]), stages)
    except PipelineError as exc:
        raise _fail(path, str(exc)) from None


def _load_program_stage(s: dict, data: dict[str, bytes], path) -> AcceleratorStage:
    where = f"stage '{s['name']}'"
    if s["path"] not in data:
        raise _fail(path, f"{where}: no program file {s['path']}")
    try:
        prog = Program.from_bytes(data[s["path"]], s["path"])
    except ProgramError as exc:
        raise _fail(path, f"{where}: the program fails to load: {exc}") from None
    if prog.target.fingerprint().hex() != s.get("target"):
        raise _fail(path, f"{where}: the program's target {prog.target.name} "
                          f"({prog.target.fingerprint().hex()[:12]}) is not the one the "
                          f"manifest records")
    return AcceleratorStage(prog, s["name"])
