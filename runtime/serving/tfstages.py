# SPDX-License-Identifier: Apache-2.0
"""Ready-made stages: the host pipeline of the Brainwave image featurizer service.

Raw JPEG/PNG bytes are decoded and resized on the host (:func:`preprocess_stage`), the
featurizer runs on the accelerator, and a dense + softmax head classifies its features
on the host again (:func:`classifier_stage`); :func:`featurizer_pipeline` chains the
three. Weights are seeded; nothing is downloaded.

Example:
    >>> model = featurizer_pipeline("resnet50", numerics="msfp16")      # doctest: +SKIP
    >>> model.run({"images": np.array([open("cat.jpg", "rb").read()], dtype=object)})
    ... # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from npusim.runtime.serving.imageheader import DEFAULT_MAX_PIXELS, ImageHeaderError, check_image
from npusim.runtime.serving.pipeline import (
    AcceleratorStage,
    ModelDefinition,
    PipelineError,
    PipelineInputError,
    TensorflowStage,
    check_feeds,
    import_tensorflow,
)
from npusim.simulator.config import DeviceConfig

__all__ = ["CHANNEL_MEANS", "classifier_stage", "classifier_weights", "featurizer_pipeline",
           "preprocess_stage"]

CHANNEL_MEANS = (123.68, 116.779, 103.939)
"""ImageNet channel means (R, G, B) the featurizers were trained with."""


class _DecodeStage(TensorflowStage):
    """The preprocessing stage, refusing an image whose header declares more than
    ``max_pixels`` before TensorFlow decodes it (a package saves the TensorFlow function
    only: ``npusim serve`` checks with its own ``--max-image-pixels``)."""

    max_pixels: int = DEFAULT_MAX_PIXELS

    def run(self, feeds: dict[str, np.ndarray], pool=None) -> dict[str, np.ndarray]:
        arrays = check_feeds(self.inputs, feeds, f"stage '{self.name}'")
        for i, data in enumerate(arrays["images"].flat):
            try:
                check_image(data, self.max_pixels)
            except ImageHeaderError as exc:
                raise PipelineInputError(f"stage '{self.name}': cannot process input 'images': "
                                         f"item {i}: {exc}") from None
        return super().run(arrays, pool)


def preprocess_stage(size: int = 224, resize: int = 256, name: str = "preprocess",
                     max_pixels: int = DEFAULT_MAX_PIXELS) -> TensorflowStage:
    """Decode a batch of images into the featurizer's NCHW, mean-subtracted BGR input.

    Input ``images`` (string, ``[N]``: raw JPEG/PNG/GIF/BMP bytes); per image: decode to
    RGB, resize bilinearly so that the shortest side is ``resize`` (the longer side
    rounded to the nearest pixel, aspect kept), crop the centre ``size`` x ``size``,
    subtract :data:`CHANNEL_MEANS`, reverse the channels to BGR and lay out as CHW.
    Output ``images`` (float32, ``[N, 3, size, size]``). An image whose header declares
    more than ``max_pixels`` pixels (see :mod:`npusim.runtime.serving.imageheader`) is refused
    undecoded.
    """
    if not (isinstance(size, int) and isinstance(resize, int) and 0 < size <= resize):
        raise PipelineError(f"preprocessing needs 0 < size <= resize, got size={size!r}, "
                            f"resize={resize!r}")
    tf = import_tensorflow()
    means = tf.constant(CHANNEL_MEANS, tf.float32)

    def one(data):
        img = tf.io.decode_image(data, channels=3, expand_animations=False)
        img.set_shape([None, None, 3])
        hw = tf.cast(tf.shape(img)[:2], tf.float64)
        new_hw = tf.cast(tf.round(hw * (resize / tf.reduce_min(hw))), tf.int32)
        new_hw = tf.maximum(new_hw, resize)  # the short side is exactly ``resize``
        img = tf.image.resize(tf.cast(img, tf.float32), new_hw, method="bilinear")
        top, left = (new_hw[0] - size) // 2, (new_hw[1] - size) // 2
        img = img[top:top + size, left:left + size, :] - means
        return tf.transpose(img[:, :, ::-1], [2, 0, 1])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
    def preprocess(images):
        return tf.map_fn(one, images,
                         fn_output_signature=tf.TensorSpec([3, size, size], tf.float32))

    stage = _DecodeStage.from_function(preprocess, name, ["images"])
    stage.max_pixels = max_pixels
    return stage


def classifier_weights(features: int, classes: int = 1000,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The head's seeded weights ``[features, classes]`` and bias ``[classes]`` (float32)."""
    for what, v in (("features", features), ("classes", classes)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise PipelineError(f"classifier {what} must be a positive integer, got {v!r}")
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((features, classes)) / np.sqrt(features)).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.01).astype(np.float32)
    return w, b


def classifier_stage(features: int, classes: int = 1000, seed: int = 0,
                     name: str = "classifier") -> TensorflowStage:
    """Dense + softmax over ``classes`` on the flattened features (seeded weights).

    Input ``features`` (float32, ``[N, features]``, ``[N, features, 1, 1]`` or any
    ``[N, C, H, W]`` with ``C*H*W == features``); output ``output_alias`` (float32,
    ``[N, classes]``), the name the Brainwave service's clients read.
    """
    w, b = classifier_weights(features, classes, seed)
    tf = import_tensorflow()
    wt, bt = tf.constant(w), tf.constant(b)

    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32, name="features")])
    def classify(x):
        flat = tf.reshape(x, [tf.shape(x)[0], features])
        return tf.nn.softmax(tf.matmul(flat, wt) + bt)

    return TensorflowStage.from_function(classify, name, ["output_alias"])


def _onnx_model(model: str | Path, seed: int):
    from npusim.runtime.zoo import MODELS

    if isinstance(model, str) and model in MODELS:
        return MODELS[model](seed=seed), model
    path = Path(model)
    if path.is_file():
        return path, path.stem
    raise PipelineError(f"unknown model {str(model)!r}: not a zoo model "
                        f"({', '.join(MODELS)}) nor an ONNX file")


def featurizer_pipeline(model: str | Path = "resnet50",
                        device: str | Path | DeviceConfig = "brainwave-s10",
                        numerics: str | None = None, seed: int = 0, classes: int = 1000,
                        name: str | None = None) -> ModelDefinition:
    """Preprocessing, the compiled featurizer and a classifier head, as one model.

    ``model`` is a zoo name (seeded weights) or an ONNX file taking ``[1, 3, H, H]``
    images; the head's input size is the featurizer's output size.

    Example:
        >>> m = featurizer_pipeline("resnet50", device="brainwave-s10")   # doctest: +SKIP
        >>> [s.name for s in m.stages]                                    # doctest: +SKIP
        ['preprocess', 'featurizer', 'classifier']
    """
    from npusim.compiler import compile_model
    from npusim.simulator.config import load_device

    cfg = load_device(device)  # a bad device fails here, before anything is compiled
    source, default_name = _onnx_model(model, seed)
    classifier_weights(1, classes)  # check ``classes`` before the long compile
    featurizer = AcceleratorStage(compile_model(source, cfg, numerics, seed=seed), "featurizer")
    prog = featurizer.program
    if len(prog.inputs) != 1 or len(prog.outputs) != 1:
        raise PipelineError(f"model {default_name} has {len(prog.inputs)} input(s) and "
                            f"{len(prog.outputs)} output(s); a featurizer takes one image "
                            "tensor and gives one feature tensor")
    (inp,), (out,) = prog.inputs, prog.outputs
    if len(inp.shape) != 4 or inp.shape[:2] != (1, 3) or inp.shape[2] != inp.shape[3] \
            or inp.dtype != "float32":
        raise PipelineError(f"model {default_name} takes '{inp.name}' {list(inp.shape)} "
                            f"{inp.dtype}; a featurizer takes float32 images [1, 3, H, H]")
    size = inp.shape[2]
    pre = preprocess_stage(size, max(size, round(size * 256 / 224)))
    head = classifier_stage(int(np.prod(out.shape[1:])), classes, seed)
    return ModelDefinition(name or default_name, 1, [pre, featurizer, head])
