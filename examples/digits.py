# SPDX-License-Identifier: Apache-2.0
"""Train a small CNN on scikit-learn's digits and export it for ``npusim eval``.

    python examples/digits.py --out digits
    npusim eval digits/digits.onnx digits/digits-test.npz --numerics all

The digits (1,797 8x8 grey images, 0-16, ten classes) ship with scikit-learn: nothing is
downloaded. A stratified fifth of them is held out for testing. The CNN (two 3x3
convolutions, max-pooling, two dense layers) trains with Keras for 30 epochs with fixed
seeds and deterministic ops (a few seconds on 2 CPU cores) and is exported with tf2onnx
(opset 17) taking NCHW images ``[1, 1, 8, 8]``, pixels scaled to [0, 1], and giving ten
logits. Writes ``OUT/digits.onnx``, ``OUT/digits-test.npz`` (``x``: ``float32 [360,
1, 8, 8]``, ``y``: ``int64 [360]``) and ``OUT/digits-calib.npz`` (the first 128 training
digits: calibration data for ``npusim compile --numerics auto``, apart from the test
set), and prints the test accuracy of Keras and of onnxruntime on the exported model.
Needs scikit-learn and tf2onnx (``pip install -e ".[test]"``).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

SEED = 0
EPOCHS = 30
CALIBRATION = 128


def load_digits_split() -> tuple[np.ndarray, ...]:
    """``(x_train, y_train, x_test, y_test)``: NCHW float32 in [0, 1], int64 labels."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2,
                                                        random_state=SEED, stratify=y)
    return x_train, y_train, x_test, y_test


def train(x: np.ndarray, y: np.ndarray):
    """The Keras model (NHWC inside, as Keras on a CPU needs), trained on ``x`` NCHW."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=keras.optimizers.Adam(1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x.transpose(0, 2, 3, 1), y, batch_size=32, epochs=EPOCHS, verbose=0,
              shuffle=True)
    return model


def export(model, path: Path) -> None:
    """Write ``model`` as ONNX taking NCHW ``images [1, 1, 8, 8]`` and giving ``logits``."""
    import tensorflow as tf
    import tf2onnx

    @tf.function(input_signature=[tf.TensorSpec([1, 1, 8, 8], tf.float32, name="images")])
    def nchw(images):
        return tf.identity(model(tf.transpose(images, [0, 2, 3, 1])), name="logits")

    proto, _ = tf2onnx.convert.from_function(nchw, input_signature=nchw.input_signature,
                                             opset=17)
    proto.graph.name = "digits"
    path.write_bytes(proto.SerializeToString())


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def onnx_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    pred = [int(sess.run(None, {name: xi[None]})[0].argmax()) for xi in x]
    return float(np.mean(np.array(pred) == y))


def atomic_write(path: Path, write) -> None:
    """``write(tmp)`` beside ``path``, then rename: no half-written file on an error."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="digits", help="output folder (default: digits)")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter

    x_train, y_train, x_test, y_test = load_digits_split()
    model = train(x_train, y_train)
    logits = model.predict(x_test.transpose(0, 2, 3, 1), verbose=0)
    keras_acc = float(np.mean(logits.argmax(axis=1) == y_test))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    onnx_path, npz_path = out / "digits.onnx", out / "digits-test.npz"
    calib_path = out / "digits-calib.npz"
    atomic_write(onnx_path, lambda tmp: export(model, Path(tmp)))
    atomic_write(npz_path, lambda tmp: tmp.write_bytes(_npz_bytes(x=x_test, y=y_test)))
    atomic_write(calib_path, lambda tmp: tmp.write_bytes(_npz_bytes(x=x_train[:CALIBRATION],
                                                                    y=y_train[:CALIBRATION])))
    print(f"trained on {len(x_train)} digits, {EPOCHS} epochs; test accuracy on "
          f"{len(x_test)}: Keras {keras_acc:.2%}, onnxruntime "
          f"{onnx_accuracy(onnx_path, x_test, y_test):.2%}")
    print(f"wrote {onnx_path}, {npz_path} and {calib_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
