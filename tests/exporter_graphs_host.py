# SPDX-License-Identifier: Apache-2.0
"""Exporter graphs whose tails the host runs: a detection tail with data-dependent
shapes, a symbolic batch, ``ai.onnx.ml`` branches. Registered with the corpus in
``tests/compiler/test_exporter_graphs.py``."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from exporter_graphs import ExporterGraph, _conv_w, _model, _node, _rand, view_batch
from onnx import TensorProto

# ---- 13. detection tail with data-dependent shapes -------------------------------------------

DETECTION_HOST_OPS = frozenset({"TopK", "Squeeze", "Gather", "Unsqueeze", "NonMaxSuppression",
                                "Greater", "NonZero"})


def detection_tail(seed: int = 0) -> ExporterGraph:
    """Conv backbone -> box [64,4] and score [1,64] heads (device) -> TopK(16) -> Gather
    -> NonMaxSuppression -> Gather, and NonZero(top scores > 0.55): every node from TopK
    on is downstream of the data, so the host runs them all in one call."""
    rng = np.random.default_rng(seed)
    nodes = [_node("Conv", ["x", "w", "b"], "feat", kernel_shape=[3, 3], strides=[2, 2],
                   pads=[1, 1, 1, 1]),
             _node("Relu", ["feat"], "feat_r"),
             _node("Conv", ["feat_r", "bw", "bb"], "box_map", kernel_shape=[1, 1]),
             _node("Reshape", ["box_map", "box_shape"], "box_rows"),
             _node("Transpose", ["box_rows"], "boxes", perm=[1, 0]),
             _node("Conv", ["feat_r", "sw", "sb"], "score_map", kernel_shape=[1, 1]),
             _node("Sigmoid", ["score_map"], "score_sig"),
             _node("Reshape", ["score_sig", "score_shape"], "scores"),
             # data-dependent from here on
             _node("TopK", ["scores", "k"], ["top_s", "top_i"], name="topk", axis=1),
             _node("Squeeze", ["top_i", "axes0"], "idx"),
             _node("Gather", ["boxes", "idx"], "cand", axis=0),
             _node("Unsqueeze", ["cand", "axes0"], "cand_b"),
             _node("Unsqueeze", ["top_s", "axes1"], "cand_s"),
             _node("NonMaxSuppression", ["cand_b", "cand_s", "max_out", "iou", "thr"], "sel"),
             _node("Gather", ["sel", "two"], "keep", axis=1),
             _node("Gather", ["cand", "keep"], "det_boxes", axis=0),
             _node("Squeeze", ["top_s", "axes0"], "s16"),
             _node("Gather", ["s16", "keep"], "det_scores", axis=0),
             _node("Greater", ["top_s", "cut"], "confident"),
             _node("NonZero", ["confident"], "above")]
    weights = {"w": _conv_w(rng, 8, 3, 3), "b": _rand(rng, 8, scale=0.1),
               "bw": _rand(rng, 4, 8, 1, 1, scale=0.5), "bb": _rand(rng, 4, scale=0.1),
               "sw": _rand(rng, 1, 8, 1, 1, scale=0.5), "sb": _rand(rng, 1, scale=0.1),
               "box_shape": np.array([4, 64], np.int64),
               "score_shape": np.array([1, 64], np.int64),
               "k": np.array([16], np.int64), "axes0": np.array([0], np.int64),
               "axes1": np.array([1], np.int64), "two": np.array(2, np.int64),
               "max_out": np.array([10], np.int64), "iou": np.array([0.25], np.float32),
               "thr": np.array([0.2], np.float32), "cut": np.array(0.55, np.float32)}
    model = _model(nodes, {"x": [1, 3, 16, 16]},
                   {"det_boxes": ["K", 4], "det_scores": ["K"],
                    "above": ([2, "M"], TensorProto.INT64)}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, 3, 16, 16)}, host_ops=DETECTION_HOST_OPS,
                         must_host=frozenset({"TopK", "NonMaxSuppression", "NonZero"}),
                         host_calls=1)


# ---- 14. symbolic batch ----------------------------------------------------------------------

def symbolic_batch(seed: int = 0) -> ExporterGraph:
    """x ['N',3,16,16] -> Conv -> Relu -> GAP -> view(N, -1) -> Gemm, compiled at N = 1."""
    rng = np.random.default_rng(seed)
    nodes = [_node("Conv", ["x", "w", "b"], "conv", kernel_shape=[3, 3], strides=[2, 2],
                   pads=[1, 1, 1, 1]),
             _node("Relu", ["conv"], "relu"),
             _node("GlobalAveragePool", ["relu"], "gap"),
             *view_batch("gap", "flat"),
             _node("Gemm", ["flat", "fw", "fb"], "y", transB=1)]
    weights = {"w": _conv_w(rng, 8, 3, 3), "b": _rand(rng, 8, scale=0.1),
               "fw": _rand(rng, 10, 8, scale=0.35), "fb": _rand(rng, 10, scale=0.1)}
    model = _model(nodes, {"x": ["N", 3, 16, 16]}, {"y": ["N", 10]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, 3, 16, 16)},
                         input_shapes={"x": (1, 3, 16, 16)},
                         folded=frozenset({"shape", "zero", "batch", "axes0", "batch1",
                                           "minus1", "target"}))


# ---- 15. ai.onnx.ml tails ---------------------------------------------------------------------

def ml_label_encoder(seed: int = 0) -> ExporterGraph:
    """Gemm -> Softmax (probabilities) and Gemm -> ArgMax -> ai.onnx.ml LabelEncoder (label)."""
    rng = np.random.default_rng(seed)
    nodes = [_node("Gemm", ["x", "w", "b"], "logits", transB=1),
             _node("Softmax", ["logits"], "probs", axis=1),
             _node("ArgMax", ["logits"], "cls", axis=1, keepdims=0),
             _node("LabelEncoder", ["cls"], "label", domain="ai.onnx.ml",
                   keys_int64s=[0, 1, 2], values_int64s=[101, 202, 303], default_int64=-1)]
    model = _model(nodes, {"x": [1, 16]},
                   {"probs": [1, 3], "label": ([1], TensorProto.INT64)},
                   {"w": _rand(rng, 3, 16, scale=0.5), "b": _rand(rng, 3, scale=0.1)},
                   ml_opset=2)
    return ExporterGraph(model, {"x": _rand(rng, 1, 16)},
                         host_ops=frozenset({"ArgMax", "ai.onnx.ml.LabelEncoder"}),
                         must_host=frozenset({"ai.onnx.ml.LabelEncoder"}), host_calls=1)


def ml_linear_classifier(seed: int = 0) -> ExporterGraph:
    """Gemm -> Relu (device) -> ai.onnx.ml LinearClassifier (label, scores) on the host."""
    rng = np.random.default_rng(seed)
    coef = _rand(rng, 3, 6, scale=0.5)
    nodes = [_node("Gemm", ["x", "w", "b"], "hidden", transB=1),
             _node("Relu", ["hidden"], "hidden_r"),
             _node("LinearClassifier", ["hidden_r"], ["label", "scores"], name="classifier",
                   domain="ai.onnx.ml", coefficients=coef.ravel().tolist(),
                   intercepts=_rand(rng, 3, scale=0.1).tolist(), classlabels_ints=[0, 1, 2],
                   post_transform="LOGISTIC")]
    model = _model(nodes, {"x": [1, 8]},
                   {"label": ([1], TensorProto.INT64), "scores": [1, 3]},
                   {"w": _rand(rng, 6, 8, scale=0.35), "b": _rand(rng, 6, scale=0.1)},
                   ml_opset=1)
    return ExporterGraph(model, {"x": _rand(rng, 1, 8)},
                         host_ops=frozenset({"ai.onnx.ml.LinearClassifier"}),
                         must_host=frozenset({"ai.onnx.ml.LinearClassifier"}), host_calls=1)


BUILDERS: dict[str, Callable[[], ExporterGraph]] = {
    "detection_tail": detection_tail,
    "symbolic_batch": symbolic_batch,
    "ml_label_encoder": ml_label_encoder,
    "ml_linear_classifier": ml_linear_classifier,
}
