# SPDX-License-Identifier: Apache-2.0
"""Pipelines: host TensorFlow stages chained around programs on the accelerator.

A :class:`ModelDefinition` is what a service deploys: an ordered list of stages,
stage *i*'s outputs feeding stage *i+1*'s inputs by position. A
:class:`TensorflowStage` runs on the host (image decoding before the device, the
classifier head after it, as the Brainwave service did); an
:class:`AcceleratorStage` runs a compiled program on a simulated device, one row
of the batch at a time because the device serves batch 1.

TensorFlow is imported only when a TensorFlow stage is built or loaded.

Example:
    >>> from npusim.runtime.serving.tfstages import featurizer_pipeline    # doctest: +SKIP
    >>> model = featurizer_pipeline("resnet50")             # doctest: +SKIP
    >>> probs = model.run({"images": np.array([jpeg_bytes], dtype=object)})  # doctest: +SKIP
    >>> save_package(model, "resnet50.zip")                 # doctest: +SKIP
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np

from npusim.simulator.config import DeviceConfig
from npusim.simulator.device import InputError
from npusim.simulator.program import Program
from npusim.simulator.text import one_line

if TYPE_CHECKING:
    from npusim.runtime.device import Device, DevicePool

__all__ = ["AcceleratorStage", "ModelDefinition", "PipelineError", "PipelineInputError",
           "Stage", "TensorSpec", "TensorflowStage", "check_feeds"]


class PipelineError(ValueError):
    """A pipeline or package that cannot be built, saved or loaded."""


class PipelineInputError(PipelineError):
    """A request the pipeline cannot take: unknown, missing or misshapen input, bad data."""


@dataclass(frozen=True)
class TensorSpec:
    """A named tensor a stage or pipeline takes or gives.

    ``dtype`` is a numpy/TensorFlow dtype name (``"string"`` for bytes); a ``None``
    dimension takes any size. ``shape`` is ``None`` only for a TensorFlow stage
    input of unknown rank (the classifier head takes ``[N, F]`` or ``[N, C, H, W]``).
    """

    name: str
    dtype: str
    shape: tuple[int | None, ...] | None

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype,
                "shape": None if self.shape is None else list(self.shape)}

    @classmethod
    def from_json(cls, d: dict) -> TensorSpec:
        shape = d["shape"]
        return cls(str(d["name"]), str(d["dtype"]), None if shape is None else tuple(shape))

    def shape_text(self) -> str:
        return "any shape" if self.shape is None else str(list(self.shape))


class Stage(Protocol):
    """What a pipeline needs of a stage."""

    kind: str
    name: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]

    def run(self, feeds: dict[str, np.ndarray],
            pool: DevicePool | None = None) -> dict[str, np.ndarray]: ...


# --- checking requests ---
def _as_array(spec: TensorSpec, value, where: str) -> np.ndarray:
    a = value if isinstance(value, np.ndarray) else np.asarray(
        value, dtype=object if spec.dtype == "string" else None)
    bad = f"{where}input '{spec.name}' has dtype {a.dtype}, expected {spec.dtype}"
    if spec.dtype == "string":
        if a.dtype.kind == "S":
            a = a.astype(object)
        elif a.dtype.kind != "O":
            raise PipelineInputError(bad)
        if not all(isinstance(v, bytes) for v in a.flat):
            raise PipelineInputError(f"{where}input '{spec.name}' must hold bytes (raw image "
                                     "data), not text or other objects")
    else:
        want = np.dtype(spec.dtype)
        ok = {"f": "fiu", "i": "iu", "u": "u", "b": "b", "c": "fiuc"}.get(want.kind, want.kind)
        if a.dtype.kind not in ok:
            raise PipelineInputError(bad)
        a = a.astype(want, copy=False)
    if spec.shape is not None:
        if a.ndim != len(spec.shape) or any(d is not None and d != n
                                           for d, n in zip(spec.shape, a.shape)):
            raise PipelineInputError(f"{where}input '{spec.name}' has shape {list(a.shape)}, "
                                     f"expected {list(spec.shape)} (None: any size)")
    return a


def check_feeds(specs: list[TensorSpec], feeds: Mapping[str, object],
                where: str = "") -> dict[str, np.ndarray]:
    """``feeds`` checked against ``specs`` and converted; a bad one raises PipelineInputError."""
    prefix = f"{where}: " if where else ""
    if not isinstance(feeds, Mapping):
        raise PipelineInputError(f"{prefix}feeds must map input names to arrays, "
                                 f"got {type(feeds).__name__}")
    names = [s.name for s in specs]
    unknown = [k for k in feeds if k not in names]
    if unknown:
        raise PipelineInputError(f"{prefix}unknown input '{unknown[0]}'; it takes "
                                 f"{', '.join(names)}")
    out = {}
    for s in specs:
        if s.name not in feeds:
            raise PipelineInputError(f"{prefix}missing input '{s.name}' ({s.dtype}, "
                                     f"{s.shape_text()})")
        out[s.name] = _as_array(s, feeds[s.name], prefix)
    return out


def _compatible(a: TensorSpec, b: TensorSpec) -> bool:
    if a.dtype != b.dtype:
        return False
    if a.shape is None or b.shape is None:
        return True
    return len(a.shape) == len(b.shape) and all(x is None or y is None or x == y
                                                for x, y in zip(a.shape, b.shape))


# --- TensorFlow stages ---
_tf_lock = threading.Lock()


def import_tensorflow():
    """TensorFlow, imported quietly: its C++ start-up chatter would break one-line errors.

    ``TF_CPP_MIN_LOG_LEVEL`` (an observability knob) defaults to 3 unless already set.
    """
    if "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf
    with _tf_lock:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        sys.stderr.flush()
        saved, null = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 2)  # absl writes to fd 2 before its logging is set up
        try:
            import tensorflow as tf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(null)
    return tf


def _tf_message(exc) -> str:
    """The one informative line of a TensorFlow op error."""
    # skip the graph error's preamble and its (indented) stack of Python frames
    for line in str(getattr(exc, "message", exc)).splitlines():
        if not line.strip() or line[0].isspace() or line.startswith((
                "Graph execution error", "Detected at node", "<stack traces", "[[")):
            continue
        return one_line(line.split(" [Op:")[0].strip())
    return type(exc).__name__


def _spec_of(name: str, tf_spec) -> TensorSpec:
    shape = tf_spec.shape
    dims = None if shape.rank is None else tuple(shape.as_list())
    return TensorSpec(name, tf_spec.dtype.name, dims)


class TensorflowStage:
    """A host stage: a TensorFlow function from named tensors to named tensors.

    Build one with :meth:`from_function` or :meth:`from_saved_model`.
    """

    kind = "tensorflow"

    def __init__(self, name: str, inputs: list[TensorSpec], outputs: list[TensorSpec],
                 call: Callable[..., dict], serve, keep=None) -> None:
        """Internal: ``call(**tensors) -> {output name: tensor}``; ``serve`` is the same as a
        ``tf.function`` with an input signature (what a package saves); ``keep`` holds the
        objects it needs alive (a loaded SavedModel)."""
        self.name = name
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self._call = call
        self._serve = serve
        self._keep = keep

    @classmethod
    def from_function(cls, fn, name: str, output_names: Iterable[str]) -> TensorflowStage:
        """Wrap a ``tf.function`` with an ``input_signature``.

        The inputs are named by the signature's ``tf.TensorSpec`` names; ``output_names``
        names what ``fn`` returns (a tensor, a tuple in order, or a dict by key).

        Example::

            @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
            def double(x):
                return 2 * x

            stage = TensorflowStage.from_function(double, "double", ["y"])
            stage.run({"x": np.array([1.0, 2.0])})  # {"y": array([2., 4.], dtype=float32)}
        """
        tf = import_tensorflow()
        output_names = list(output_names)
        sig = getattr(fn, "input_signature", None)
        if not sig:
            raise PipelineError(f"stage '{name}': give a tf.function with an input_signature")
        specs = list(sig)
        in_names = [s.name for s in specs]
        if any(not isinstance(s, tf.TensorSpec) or not s.name for s in specs):
            raise PipelineError(f"stage '{name}': every input_signature entry needs a "
                                "tf.TensorSpec with a name")
        if len(set(in_names)) != len(in_names) or len(set(output_names)) != len(output_names):
            raise PipelineError(f"stage '{name}': input and output names must be unique")

        def as_dict(result) -> dict:
            if isinstance(result, Mapping):
                return {k: result[k] for k in output_names}
            values = list(result) if isinstance(result, (tuple, list)) else [result]
            return dict(zip(output_names, values))

        result = fn.get_concrete_function().structured_outputs
        if isinstance(result, Mapping):
            if set(result) != set(output_names):
                raise PipelineError(f"stage '{name}': the function returns "
                                    f"{sorted(result)}, not {output_names}")
        elif (count := len(result) if isinstance(result, (tuple, list)) else 1) \
                != len(output_names):
            raise PipelineError(f"stage '{name}': the function returns {count} tensor(s) "
                                f"but {len(output_names)} output name(s) are given")

        @tf.function(input_signature=specs)
        def serve(*args):
            return as_dict(fn(*args))

        concrete = serve.get_concrete_function()
        outs = concrete.structured_outputs
        outputs = [_spec_of(k, tf.TensorSpec.from_tensor(outs[k])) for k in output_names]
        inputs = [_spec_of(s.name, s) for s in specs]
        return cls(name, inputs, outputs, lambda **kw: serve(*(kw[n] for n in in_names)),
                   serve, keep=fn)

    @classmethod
    def from_saved_model(cls, path: str | Path, name: str, signature: str = "serving_default",
                         inputs: list[str] | None = None,
                         outputs: list[str] | None = None) -> TensorflowStage:
        """Load a stage from a SavedModel directory's ``signature``.

        Its inputs and outputs are in name order unless ``inputs`` / ``outputs`` give the
        order (a package records it).
        """
        tf = import_tensorflow()
        try:
            return cls._from_loaded(tf, path, name, signature, inputs, outputs)
        except PipelineError:
            raise
        except Exception as exc:  # a corrupt SavedModel fails in many ways inside TF
            raise PipelineError(f"stage '{name}': cannot load the SavedModel at {path}: "
                                f"{_tf_message(exc)}") from None

    @classmethod
    def _from_loaded(cls, tf, path, name: str, signature: str, inputs: list[str] | None,
                     outputs: list[str] | None) -> TensorflowStage:
        loaded = tf.saved_model.load(str(path))
        sigs = getattr(loaded, "signatures", {})
        if signature not in sigs:
            raise PipelineError(f"stage '{name}': the SavedModel at {path} has no signature "
                                f"'{signature}' (it has {', '.join(sigs) or 'none'})")
        fn = sigs[signature]
        in_specs = dict(fn.structured_input_signature[1])
        out_specs = dict(fn.structured_outputs)
        for what, order, have in (("inputs", inputs, in_specs), ("outputs", outputs, out_specs)):
            if order is not None and sorted(order) != sorted(have):
                raise PipelineError(f"stage '{name}': the SavedModel's {what} are "
                                    f"{sorted(have)}, expected {sorted(order)}")
        in_names = inputs if inputs is not None else sorted(in_specs)
        out_names = outputs if outputs is not None else sorted(out_specs)
        specs = [in_specs[n] for n in in_names]

        @tf.function(input_signature=[tf.TensorSpec(s.shape, s.dtype, name=n)
                                      for n, s in zip(in_names, specs)])
        def serve(*args):
            result = fn(**dict(zip(in_names, args)))
            return {k: result[k] for k in out_names}

        return cls(name, [_spec_of(n, in_specs[n]) for n in in_names],
                   [_spec_of(n, out_specs[n]) for n in out_names], fn, serve, keep=loaded)

    def run(self, feeds: dict[str, np.ndarray],
            pool: DevicePool | None = None) -> dict[str, np.ndarray]:
        """Run on the host (``pool`` is not used); returns numpy outputs by name."""
        tf = import_tensorflow()
        arrays = check_feeds(self.inputs, feeds, f"stage '{self.name}'")
        tensors = {k: tf.constant(v) for k, v in arrays.items()}
        try:
            result = self._call(**tensors)
            return {s.name: result[s.name].numpy() for s in self.outputs}
        except tf.errors.InvalidArgumentError as exc:
            names = ", ".join(f"'{s.name}'" for s in self.inputs)
            raise PipelineInputError(f"stage '{self.name}': cannot process input {names}: "
                                     f"{_tf_message(exc)}") from None
        except Exception as exc:  # the stage itself is broken (a corrupt SavedModel)
            raise PipelineError(f"stage '{self.name}' failed: {_tf_message(exc)}") from None

    def __repr__(self) -> str:
        return f"TensorflowStage({self.name!r}, inputs={self.inputs}, outputs={self.outputs})"


# --- accelerator stages ---
class AcceleratorStage:
    """A compiled program on the accelerator.

    The device serves batch 1: a program whose inputs have batch 1 takes a batch of
    any size here, its rows run one after another on one device
    (:meth:`npusim.simulator.device.Device.run_batch`), the outputs concatenated.
    """

    kind = "accelerator"

    def __init__(self, program: Program | str | Path, name: str = "featurizer") -> None:
        self.program = program if isinstance(program, Program) else Program.load(program)
        self.name = name
        self._batched = all(t.shape[:1] == (1,) for t in
                            (*self.program.inputs, *self.program.outputs))

        def spec(t) -> TensorSpec:
            shape = (None, *t.shape[1:]) if self._batched else tuple(t.shape)
            return TensorSpec(t.name, t.dtype, shape)

        self.inputs = [spec(t) for t in self.program.inputs]
        self.outputs = [spec(t) for t in self.program.outputs]
        self._device: Device | None = None
        self._lock = threading.Lock()

    def _run_once(self, feeds: dict[str, np.ndarray], pool: DevicePool | None,
                  batch: bool = False) -> dict:
        if pool is not None:
            return pool.run(self.program, feeds, batch)[0]
        with self._lock:
            if self._device is None:
                from npusim.runtime.device import Device

                dev = Device(self.program.target)
                dev.load(self.program)
                self._device = dev
        return self._device.run_batch(feeds) if batch else self._device.run(feeds)

    def run(self, feeds: dict[str, np.ndarray],
            pool: DevicePool | None = None) -> dict[str, np.ndarray]:
        """Run on a device of ``pool`` (one per row), or on this stage's own device."""
        where = f"stage '{self.name}'"
        arrays = check_feeds(self.inputs, feeds, where)
        try:
            if not self._batched:
                return self._run_once(arrays, pool)
            rows = {len(a) for a in arrays.values()}
            if len(rows) > 1:
                raise PipelineInputError(f"{where}: inputs "
                                         f"{', '.join(repr(n) for n in arrays)} have different "
                                         f"batch sizes {sorted(rows)}")
            n = rows.pop() if rows else 1
            if n == 0:
                return {s.name: np.zeros((0, *s.shape[1:]), np.dtype(s.dtype))
                        for s in self.outputs}
            # the rows run one after another on one device, the host's work vectorized
            out = self._run_once({k: a[:, None] for k, a in arrays.items()}, pool, batch=True)
        except InputError as exc:
            raise PipelineInputError(f"{where}: {exc}") from None
        return {s.name: out[s.name].reshape(n, *out[s.name].shape[2:]) for s in self.outputs}

    def __repr__(self) -> str:
        return (f"AcceleratorStage({self.name!r}, target={self.program.target.name!r}, "
                f"inputs={self.inputs}, outputs={self.outputs})")


# --- the pipeline ---
class ModelDefinition:
    """A servable model: stages run in order, each one's outputs feeding the next by position.

    Example:
        >>> model = ModelDefinition("resnet50", 1)                            # doctest: +SKIP
        >>> model.add(preprocess_stage()).add(AcceleratorStage("resnet50.npub"))  # doctest: +SKIP
        >>> model.run({"images": np.array([jpeg], dtype=object)})             # doctest: +SKIP
    """

    def __init__(self, name: str = "model", version: int = 1, stages: Iterable[Stage] = ()) -> None:
        if not isinstance(name, str) or not name or "/" in name or name.strip() != name:
            raise PipelineError(f"model name must be a non-empty name without '/' or "
                                f"surrounding spaces, got {name!r}")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise PipelineError(f"model version must be a positive integer, got {version!r}")
        self.name = name
        self.version = version
        self._stages: list[Stage] = []
        for s in stages:
            self.add(s)

    def add(self, stage: Stage) -> ModelDefinition:
        """Append ``stage``; its inputs must match the last stage's outputs by position."""
        if any(s.name == stage.name for s in self._stages):
            raise PipelineError(f"model '{self.name}' already has a stage named '{stage.name}'")
        if self._stages:
            prev = self._stages[-1]
            if len(prev.outputs) != len(stage.inputs):
                raise PipelineError(f"stage '{prev.name}' gives {len(prev.outputs)} output(s) "
                                    f"but stage '{stage.name}' takes {len(stage.inputs)} "
                                    "input(s)")
            for out, inp in zip(prev.outputs, stage.inputs):
                if not _compatible(out, inp):
                    raise PipelineError(
                        f"stage '{prev.name}' output '{out.name}' ({out.dtype}, "
                        f"{out.shape_text()}) does not fit stage '{stage.name}' input "
                        f"'{inp.name}' ({inp.dtype}, {inp.shape_text()})")
        self._stages.append(stage)
        return self

    @property
    def stages(self) -> tuple[Stage, ...]:
        return tuple(self._stages)

    @property
    def inputs(self) -> list[TensorSpec]:
        return list(self._stages[0].inputs) if self._stages else []

    @property
    def outputs(self) -> list[TensorSpec]:
        return list(self._stages[-1].outputs) if self._stages else []

    def device_config(self) -> DeviceConfig:
        """The device the accelerator stages were compiled for (one for all of them)."""
        targets = {}
        for s in self._stages:
            if isinstance(s, AcceleratorStage):
                targets.setdefault(s.program.target.fingerprint(), (s.name, s.program.target))
        if not targets:
            raise PipelineError(f"model '{self.name}' has no accelerator stage")
        if len(targets) > 1:
            (a, ca), (b, cb) = list(targets.values())[:2]
            raise PipelineError(f"model '{self.name}': stages '{a}' and '{b}' were compiled for "
                                f"different devices ({ca.name}, {ca.numerics} and {cb.name}, "
                                f"{cb.numerics})")
        return next(iter(targets.values()))[1]

    def run(self, feeds: dict[str, np.ndarray],
            pool: DevicePool | None = None) -> dict[str, np.ndarray]:
        """Check ``feeds`` against :attr:`inputs`, run every stage; the last stage's outputs."""
        if not self._stages:
            raise PipelineError(f"model '{self.name}' has no stages")
        current = check_feeds(self.inputs, feeds, f"model '{self.name}'")
        for i, stage in enumerate(self._stages):
            out = stage.run(current, pool)
            if i + 1 < len(self._stages):
                nxt = self._stages[i + 1]
                current = {b.name: out[a.name] for a, b in zip(stage.outputs, nxt.inputs)}
        return out

    def signature(self) -> dict:
        """Inputs and outputs as ``{name: {"dtype", "shape"}}`` (model metadata)."""
        def table(specs):
            return {s.name: {"dtype": s.dtype,
                             "shape": None if s.shape is None else list(s.shape)}
                    for s in specs}
        return {"inputs": table(self.inputs), "outputs": table(self.outputs)}

    def __repr__(self) -> str:
        return (f"ModelDefinition({self.name!r}, version={self.version}, "
                f"stages=[{', '.join(s.name for s in self._stages)}])")
