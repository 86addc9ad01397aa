# SPDX-License-Identifier: Apache-2.0
"""Datasets of :mod:`npusim.runtime.analysis.evaluate`: arrays in ``.npz``/``.npy`` files, folders
of images.

:func:`load_dataset` takes

- an ``.npz`` file with the inputs under ``x`` (or ``inputs``) and, optionally, integer
  class labels under ``y`` (or ``labels``); other arrays in it are ignored;
- an ``.npy`` file of inputs, with the labels in a separate ``.npy`` (``labels=``);
- a folder of JPEG/PNG images (``.jpg``, ``.jpeg``, ``.png``), in name order, labels from
  ``labels=`` if given;
- a folder of class folders, ImageNet style: an image's label is the position of its
  folder among the sorted folder names (``0 .. N-1``; keep empty folders of classes
  without images, or the positions shift).

Inputs are ``[N, *sample]``; labels ``[N]`` (or ``[N, 1]``) integers. Only the headers
are read up front (sizes and shapes are checked before anything big is allocated); the
samples are then read a chunk at a time: an ``.npy`` is mapped, an ``.npz`` member is
streamed out of its zip, and images are decoded by TensorFlow preprocessing stages
(:func:`image_preprocessing`) one chunk at a time. Names starting with ``.`` are skipped.

Example:
    >>> ds = load_dataset("digits-test.npz")                 # doctest: +SKIP
    >>> ds.count, ds.sample_shape, ds.labels[:3]             # doctest: +SKIP
    (360, (1, 8, 8), array([6, 9, 3]))
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from npusim.simulator.text import shorten

if TYPE_CHECKING:
    from npusim.runtime.serving.pipeline import ModelDefinition

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
"""The files a folder dataset takes (case-insensitive)."""

MAX_IMAGE_BYTES = 64 * 2**20
"""A larger image file is refused before it is read."""

MAX_LABELS = 1_000_000
"""Labels (and so samples) a labels file may hold; read whole, unlike the inputs."""


class DatasetError(ValueError):
    """A dataset that cannot be read: missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ArrayFile:
    """Where an array file's inputs are: an ``.npy``, or a member of an ``.npz``."""

    path: Path
    member: str | None
    """``x.npy`` or ``inputs.npy`` in an ``.npz``; None for an ``.npy``."""
    dtype: np.dtype
    fortran: bool
    """Stored in Fortran order (then read whole, not streamed)."""


@dataclass(frozen=True)
class Dataset:
    """A dataset's shape and labels, and how to read its samples (see :meth:`chunks`)."""

    source: str
    """The path, as messages quote it."""
    count: int
    labels: np.ndarray | None = None
    """``int64 [count]``, or None."""
    classes: tuple[str, ...] | None = None
    """The class folders' names, for a class tree."""
    sample_shape: tuple[int, ...] | None = None
    """One array sample's shape; None for images (their preprocessing decides)."""
    array: ArrayFile | None = None
    """The inputs of an array file; None for images."""
    files: tuple[Path, ...] = ()
    """Image files, in sample order."""
    preprocess: ModelDefinition | None = None
    """The stages from image bytes to samples (:func:`image_preprocessing`)."""

    @property
    def is_images(self) -> bool:
        return self.array is None

    def with_preprocessing(self, model: ModelDefinition) -> Dataset:
        return dataclasses.replace(self, preprocess=model)

    def chunks(self, size: int, count: int) -> Iterator[np.ndarray]:
        """The first ``count`` samples, ``size`` at a time."""
        if self.is_images:
            for start in range(0, count, size):
                yield _decode(self, self.files[start:min(count, start + size)])
            return
        path, member, dtype = self.array.path, self.array.member, self.array.dtype
        try:
            if member is None or self.array.fortran:
                whole = _load_whole(path, member) if member else np.load(path, mmap_mode="r")
                for start in range(0, count, size):
                    yield np.array(whole[start:min(count, start + size)])
                return
            sample_bytes = dtype.itemsize * math.prod(self.sample_shape)
            with zipfile.ZipFile(path) as zf, zf.open(member) as f:
                _header(f, f"{path}:{member}")
                for start in range(0, count, size):
                    n = min(count, start + size) - start
                    data = f.read(n * sample_bytes)
                    if len(data) != n * sample_bytes:
                        raise DatasetError(f"{path}: array {member} is truncated")
                    yield np.frombuffer(data, dtype).reshape(n, *self.sample_shape)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            if isinstance(exc, DatasetError):
                raise
            raise DatasetError(f"{path}: cannot read the inputs: {shorten(str(exc), 120)}") \
                from None


def load_dataset(data: str | Path, labels: str | Path | np.ndarray | None = None) -> Dataset:
    """Read the headers of the dataset at ``data`` (see the module docstring)."""
    path = Path(data)
    if path.is_dir():
        ds = _folder(path)
    elif not path.exists():
        raise DatasetError(f"dataset not found: {path}")
    elif path.suffix.lower() == ".npz":
        ds = _npz(path)
    elif path.suffix.lower() == ".npy":
        ds = _npy(path)
    else:
        raise DatasetError(f"dataset {path}: expected an .npz, an .npy or a folder of images")
    if labels is not None:
        if ds.labels is not None:
            what = "class folders" if ds.classes else "'y' array of the .npz"
            raise DatasetError(f"dataset {path} has labels already (its {what}); drop the "
                               "labels file")
        got = _label_array(labels) if isinstance(labels, np.ndarray) else _labels_file(labels)
        ds = dataclasses.replace(ds, labels=got)
    if ds.labels is not None and len(ds.labels) != ds.count:
        raise DatasetError(f"dataset {path}: {len(ds.labels)} labels for {ds.count} samples")
    return ds


# --- array files ---
def _header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DatasetError(f"{where}: not a .npy array: {shorten(str(exc), 120)}") from None
    return shape, fortran, dtype


def _check_inputs(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if dtype.hasobject or dtype.kind not in "biuf":
        raise DatasetError(f"{where}: inputs have dtype {dtype}; expected numbers")
    if len(shape) < 2 or shape[0] == 0:
        raise DatasetError(f"{where}: inputs have shape {list(shape)}; expected [N, ...] with "
                           "N > 0 samples")


def _check_size(shape: tuple[int, ...], dtype: np.dtype, data_bytes: int, where: str) -> None:
    """The bytes after the header against what the header promises (a truncated file)."""
    if data_bytes < math.prod(shape) * dtype.itemsize:
        raise DatasetError(f"{where}: truncated: {data_bytes} bytes of data for an array "
                           f"{list(shape)} {dtype}")


def _npy(path: Path) -> Dataset:
    with open(path, "rb") as f:
        shape, fortran, dtype = _header(f, str(path))
        data_bytes = path.stat().st_size - f.tell()
    _check_inputs(shape, dtype, str(path))
    _check_size(shape, dtype, data_bytes, str(path))
    return Dataset(str(path), shape[0], sample_shape=tuple(shape[1:]),
                   array=ArrayFile(path, None, dtype, fortran))


def _member(zf: zipfile.ZipFile, keys: tuple[str, ...], path: Path) -> str | None:
    names = [k for k in keys if f"{k}.npy" in zf.namelist()]
    if len(names) > 1:
        raise DatasetError(f"{path} has both {names[0]!r} and {names[1]!r}; keep one")
    return f"{names[0]}.npy" if names else None


def _npz(path: Path) -> Dataset:
    try:
        with zipfile.ZipFile(path) as zf:
            x = _member(zf, ("x", "inputs"), path)
            if x is None:
                keys = sorted(n.removesuffix(".npy") for n in zf.namelist())
                raise DatasetError(f"{path} has no 'x' (or 'inputs') array of inputs; it has "
                                   f"{shorten(', '.join(keys) or 'nothing', 120)}")
            with zf.open(x) as f:
                shape, fortran, dtype = _header(f, f"{path}:{x}")
                data_bytes = zf.getinfo(x).file_size - f.tell()
            y = _member(zf, ("y", "labels"), path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DatasetError(f"{path}: not an .npz file: {exc}") from None
    _check_inputs(shape, dtype, f"{path}:{x}")
    _check_size(shape, dtype, data_bytes, f"{path}:{x}")
    labels = _load_labels(path, y) if y else None
    return Dataset(str(path), shape[0], labels=labels, sample_shape=tuple(shape[1:]),
                   array=ArrayFile(path, x, dtype, fortran))


def _load_whole(path: Path, member: str) -> np.ndarray:
    with zipfile.ZipFile(path) as zf, zf.open(member) as f:
        return np.lib.format.read_array(f, allow_pickle=False)


def _load_labels(path: Path, member: str) -> np.ndarray:
    where = f"{path}:{member}"
    with zipfile.ZipFile(path) as zf, zf.open(member) as f:
        shape, _, dtype = _header(f, where)
    _check_labels(shape, dtype, where)
    return _label_array(_load_whole(path, member), where)


def _labels_file(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            shape, _, dtype = _header(f, f"labels {path}")
    except FileNotFoundError:
        raise DatasetError(f"labels file not found: {path}") from None
    except IsADirectoryError:
        raise DatasetError(f"labels file {path} is a directory") from None
    _check_labels(shape, dtype, f"labels {path}")
    return _label_array(np.load(path, allow_pickle=False), f"labels {path}")


def _check_labels(shape: tuple[int, ...], dtype: np.dtype, where: str) -> None:
    if dtype.kind not in "iu" or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise DatasetError(f"{where}: labels have shape {list(shape)} and dtype {dtype}; "
                           "expected integer class indices [N]")
    if shape[0] > MAX_LABELS:
        raise DatasetError(f"{where}: {shape[0]} labels, more than the limit of {MAX_LABELS}")


def _label_array(a: np.ndarray, where: str = "labels") -> np.ndarray:
    _check_labels(a.shape, a.dtype, where)
    a = a.reshape(-1).astype(np.int64)
    if len(a) and a.min() < 0:
        raise DatasetError(f"{where}: negative label {int(a.min())}")
    return a


# --- folders of images ---
def _listing(folder: Path) -> list[os.DirEntry]:
    return sorted((e for e in os.scandir(folder) if not e.name.startswith(".")),
                  key=lambda e: e.name)


def _images(entries: list[os.DirEntry]) -> list[Path]:
    return [Path(e.path) for e in entries
            if e.is_file() and Path(e.name).suffix.lower() in IMAGE_SUFFIXES]


def _folder(path: Path) -> Dataset:
    entries = _listing(path)
    dirs, files = [e for e in entries if e.is_dir()], _images(entries)
    if dirs and files:
        raise DatasetError(f"dataset {path} holds both images and folders; give a folder of "
                           "images or a folder of class folders")
    if not dirs:
        if not files:
            raise DatasetError(f"dataset {path} has no images ({', '.join(IMAGE_SUFFIXES)})")
        return Dataset(str(path), len(files), files=tuple(files))
    per_class = [_images(_listing(Path(d.path))) for d in dirs]
    count = sum(len(f) for f in per_class)
    if not count:
        raise DatasetError(f"dataset {path}: its {len(dirs)} class folders hold no images "
                           f"({', '.join(IMAGE_SUFFIXES)})")
    labels = np.concatenate([np.full(len(f), k, np.int64) for k, f in enumerate(per_class)])
    return Dataset(str(path), count, labels=labels, classes=tuple(d.name for d in dirs),
                   files=tuple(p for f in per_class for p in f))


def image_preprocessing(input_shape: tuple[int, ...], package: str | Path | None = None):
    """The stages that turn image bytes into a program's input, as a ModelDefinition.

    With ``package``, its stages before its first accelerator stage. Otherwise the
    featurizer service's own (:func:`npusim.runtime.serving.tfstages.preprocess_stage`): decode,
    resize the short side to ``round(H * 256 / 224)``, crop the centre ``H x H``, subtract the
    ImageNet channel means, BGR, CHW; it needs a program input ``[1, 3, H, H]``.
    """
    from npusim.runtime.serving.pipeline import AcceleratorStage, ModelDefinition, PipelineError

    if package is None:
        shape = tuple(input_shape)
        if len(shape) != 4 or shape[:2] != (1, 3) or shape[2] != shape[3]:
            raise DatasetError(f"the default image preprocessing makes [1, 3, H, H] inputs; "
                               f"the program takes {list(shape)}: give --package with the "
                               "model's preprocessing")
        from npusim.runtime.serving.tfstages import preprocess_stage

        size = shape[2]
        return ModelDefinition("preprocess", 1, [preprocess_stage(size, max(
            size, round(size * 256 / 224)))])
    from npusim.runtime.serving.package import load_package

    try:
        loaded = load_package(package)
    except PipelineError as exc:
        raise DatasetError(str(exc)) from None
    stages = []
    for stage in loaded.stages:
        if isinstance(stage, AcceleratorStage):
            break
        stages.append(stage)
    if not stages or [s.dtype for s in stages[0].inputs] != ["string"]:
        raise DatasetError(f"package {package} has no preprocessing stage taking image bytes "
                           "before its accelerator stage")
    try:
        return ModelDefinition("preprocess", 1, stages)
    except PipelineError as exc:
        raise DatasetError(f"package {package}: {exc}") from None


def _read_image(path: Path) -> bytes:
    from npusim.runtime.serving.imageheader import DEFAULT_MAX_PIXELS, ImageHeaderError, check_image

    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise DatasetError(f"image {path}: {size} bytes, more than {MAX_IMAGE_BYTES}")
    data = path.read_bytes()
    try:
        check_image(data, DEFAULT_MAX_PIXELS)  # before TensorFlow decodes it
    except ImageHeaderError as exc:
        raise DatasetError(f"image {path}: {exc}") from None
    return data


def _decode(ds: Dataset, files: tuple[Path, ...]) -> np.ndarray:
    from npusim.runtime.serving.pipeline import PipelineInputError

    model = ds.preprocess
    name = model.inputs[0].name
    blobs = [_read_image(p) for p in files]
    try:
        return next(iter(model.run({name: np.array(blobs, dtype=object)}).values()))
    except PipelineInputError:
        for path, blob in zip(files, blobs):  # name the file TensorFlow could not decode
            try:
                model.run({name: np.array([blob], dtype=object)})
            except PipelineInputError as exc:
                raise DatasetError(f"image {path}: {exc}") from None
        raise
