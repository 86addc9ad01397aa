# SPDX-License-Identifier: Apache-2.0
"""Small ONNX graphs in the shapes that real exporters (torch, tf2onnx, paddle2onnx,
skl2onnx) emit: shape arithmetic on ``Shape`` outputs, constant-first binaries,
decomposed activations and norms, data-dependent detection tails, ``ai.onnx.ml`` ops.

Each builder returns an :class:`ExporterGraph`: a checked model, seeded feeds, the
``input_shapes`` to compile it with, and what the compiler should place where.
Every model here runs under onnxruntime; ``tests/compiler/test_exporter_graphs.py``
holds the compiler to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

INT64_MAX = np.iinfo(np.int64).max
Dims = list[int | str]


@dataclass(frozen=True)
class ExporterGraph:
    """One corpus model and the placement the compiler owes it."""

    model: onnx.ModelProto
    """Checked ONNX model; every node is named."""
    feeds: dict[str, np.ndarray]
    """Seeded inputs, at the shapes of ``input_shapes`` when it is given."""
    input_shapes: dict[str, tuple[int, ...]] | None = None
    """Sizes for the symbolic input dims, passed to ``compile_full``."""
    host_ops: frozenset[str] = frozenset()
    """ONNX op types (``domain.Op`` outside the default domain) allowed on the host."""
    must_host: frozenset[str] = frozenset()
    """Op types that can only run on the host (data-dependent shapes, ``ai.onnx.ml``)."""
    host_calls: int = 0
    """``summary["host_calls"]``: consecutive host nodes make one call."""
    folded: frozenset[str] = field(default_factory=frozenset)
    """Node names that must end up ``constant`` or ``removed`` (shape arithmetic, no-ops)."""


def op_key(n: onnx.NodeProto) -> str:
    """The op type as the expectations name it: ``Relu``, ``ai.onnx.ml.LabelEncoder``."""
    return n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"


# ---- construction helpers ------------------------------------------------------------------

def _node(op: str, inputs: list[str], output: str | list[str], name: str | None = None,
          domain: str = "", **attrs) -> onnx.NodeProto:
    """A node named after its first output (exporters name every node)."""
    outs = [output] if isinstance(output, str) else output
    return helper.make_node(op, inputs, outs, name=name or outs[0], domain=domain, **attrs)


def _const(name: str, value: np.ndarray | Iterable | float | int,
           dtype: type = np.int64) -> onnx.NodeProto:
    """A ``Constant`` node, as torch emits for shape literals."""
    arr = np.asarray(value, dtype=dtype)
    return helper.make_node("Constant", [], [name], name=name,
                            value=numpy_helper.from_array(arr, name))


def _info(name: str, dims: Dims | None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, dims)


def _model(nodes: list[onnx.NodeProto], inputs: Mapping[str, Dims],
           outputs: Mapping[str, Dims | tuple[Dims, int]], weights: Mapping[str, np.ndarray],
           opset: int = 17, ml_opset: int | None = None) -> onnx.ModelProto:
    """A model checked by ``onnx.checker`` with strict shape inference.

    ``outputs`` maps a name to its dims, or to ``(dims, TensorProto elem type)``.
    """
    outs = [_info(k, *v) if isinstance(v, tuple) else _info(k, v) for k, v in outputs.items()]
    graph = helper.make_graph(
        nodes, "exporter_graph", [_info(k, v) for k, v in inputs.items()], outs,
        [numpy_helper.from_array(np.asarray(v), k) for k, v in weights.items()])
    opsets = [helper.make_opsetid("", opset)]
    if ml_opset is not None:
        opsets.append(helper.make_opsetid("ai.onnx.ml", ml_opset))
    model = helper.make_model(graph, opset_imports=opsets, producer_name="npusim-tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _rand(rng: np.random.Generator, *shape: int, scale: float = 1.0) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _conv_w(rng: np.random.Generator, out: int, cin: int, k: int) -> np.ndarray:
    """He-scaled weights, so activations stay near unit size through a few layers."""
    return _rand(rng, out, cin, k, k, scale=float(np.sqrt(2.0 / (cin * k * k))))


# ---- 1. paddle2onnx: Reshape target from Shape -> Cast(int32) -> Slice -> Cast(int64) ---------

def paddle_reshape_chain(seed: int = 0) -> ExporterGraph:
    """[1,8,4,4] -> GlobalAveragePool -> Reshape([N, 8]) -> Relu, N sliced from Shape."""
    rng = np.random.default_rng(seed)
    nodes = [_node("GlobalAveragePool", ["x"], "gap"),
             _node("Shape", ["gap"], "shape"),
             _node("Cast", ["shape"], "shape_i32", to=TensorProto.INT32),
             _node("Slice", ["shape_i32", "s0", "s1", "s0"], "batch_i32"),
             _node("Cast", ["batch_i32"], "batch", to=TensorProto.INT64),
             _node("Concat", ["batch", "eight"], "target", axis=0),
             _node("Reshape", ["gap", "target"], "flat"),
             _node("Relu", ["flat"], "y")]
    model = _model(nodes, {"x": [1, 8, 4, 4]}, {"y": [1, 8]},
                   {"s0": np.array([0], np.int64), "s1": np.array([1], np.int64),
                    "eight": np.array([8], np.int64)})
    return ExporterGraph(model, {"x": _rand(rng, 1, 8, 4, 4)},
                         folded=frozenset({"shape", "shape_i32", "batch_i32", "batch",
                                           "target"}))


# ---- 2. torch legacy exporter: x.view(x.size(0), -1) -------------------------------------------

def view_batch(src: str, out: str) -> list[onnx.NodeProto]:
    """``x.view(x.size(0), -1)`` as torch's legacy exporter writes it:
    Shape -> Gather(0) -> Unsqueeze -> Concat([-1]) -> Reshape."""
    return [_node("Shape", [src], "shape"),
            _const("zero", 0),
            _node("Gather", ["shape", "zero"], "batch", axis=0),
            _const("axes0", [0]),
            _node("Unsqueeze", ["batch", "axes0"], "batch1"),
            _const("minus1", [-1]),
            _node("Concat", ["batch1", "minus1"], "target", axis=0),
            _node("Reshape", [src, "target"], out)]


def torch_flatten(seed: int = 0) -> ExporterGraph:
    """Conv -> Shape -> Gather(0) -> Unsqueeze -> Concat([-1]) -> Reshape -> Gemm."""
    rng = np.random.default_rng(seed)
    nodes = [_node("Conv", ["x", "w", "b"], "conv", kernel_shape=[3, 3], strides=[2, 2],
                   pads=[1, 1, 1, 1]),
             _node("Relu", ["conv"], "relu"),
             *view_batch("relu", "flat"),
             _node("Gemm", ["flat", "fw", "fb"], "y", transB=1)]
    weights = {"w": _conv_w(rng, 8, 3, 3), "b": _rand(rng, 8, scale=0.1),
               "fw": _rand(rng, 10, 512, scale=0.05), "fb": _rand(rng, 10, scale=0.1)}
    model = _model(nodes, {"x": [1, 3, 16, 16]}, {"y": [1, 10]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, 3, 16, 16)},
                         folded=frozenset({"shape", "zero", "batch", "axes0", "batch1",
                                           "minus1", "target"}))


# ---- 3. ShuffleNetV2 unit: chunk(2, dim=1), branch, concat, channel_shuffle -------------------

def _dims(src: str, tag: str, idx: int) -> list[onnx.NodeProto]:
    """``x.size(idx)`` as the legacy exporter writes it: Shape -> Gather -> Unsqueeze."""
    return [_const(f"{tag}_i", idx),
            _node("Gather", [f"{src}_shape", f"{tag}_i"], f"{tag}_s", axis=0),
            _node("Unsqueeze", [f"{tag}_s", "axes0"], tag)]


def shufflenet_unit(chunk: str = "split", seed: int = 0) -> ExporterGraph:
    """x [1,16,8,8] -> chunk (Split, or Slice with ends from Shape/Div) -> branch
    Conv1x1/dw3x3/Conv1x1 -> Concat -> channel_shuffle(2) via computed Reshape/Transpose."""
    rng = np.random.default_rng(seed)
    c = 16
    nodes = [_const("axes0", [0])]
    folded = {"axes0"}
    if chunk == "split":
        nodes.append(_node("Split", ["x", "halves"], ["x1", "x2"], name="chunk", axis=1))
    else:
        nodes += [_node("Shape", ["x"], "x_shape"), *_dims("x", "xc", 1),
                  _const("two", [2]),
                  _node("Div", ["xc", "two"], "half"),
                  _node("Slice", ["x", "start0", "half", "ax1"], "x1"),
                  _node("Slice", ["x", "half", "end_max", "ax1"], "x2")]
        folded |= {"x_shape", "xc_i", "xc_s", "xc", "two", "half"}
    nodes += [_node("Conv", ["x2", "w1"], "b1", kernel_shape=[1, 1]),
              _node("Relu", ["b1"], "b1r"),
              _node("Conv", ["b1r", "w2"], "b2", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                    group=c // 2),
              _node("Conv", ["b2", "w3"], "b3", kernel_shape=[1, 1]),
              _node("Relu", ["b3"], "b3r"),
              _node("Concat", ["x1", "b3r"], "cat", axis=1),
              # channel_shuffle: view(b, g, c // g, h, w) -> transpose(1, 2) -> view(b, -1, h, w)
              _node("Shape", ["cat"], "cat_shape")]
    for tag, idx in (("nb", 0), ("nc", 1), ("nh", 2), ("nw", 3)):
        nodes += _dims("cat", tag, idx)
        folded |= {f"{tag}_i", f"{tag}_s", tag}
    nodes += [_const("groups", [2]),
              _node("Div", ["nc", "groups"], "per_group"),
              _node("Concat", ["nb", "groups", "per_group", "nh", "nw"], "shape5", axis=0),
              _node("Reshape", ["cat", "shape5"], "grouped"),
              _node("Transpose", ["grouped"], "swapped", perm=[0, 2, 1, 3, 4]),
              _const("minus1", [-1]),
              _node("Concat", ["nb", "minus1", "nh", "nw"], "shape4", axis=0),
              _node("Reshape", ["swapped", "shape4"], "y")]
    folded |= {"cat_shape", "groups", "per_group", "shape5", "minus1", "shape4"}
    weights = {"w1": _conv_w(rng, 8, 8, 1), "w2": _conv_w(rng, 8, 1, 3),
               "w3": _conv_w(rng, 8, 8, 1)}
    if chunk == "split":
        weights["halves"] = np.array([8, 8], np.int64)
    else:
        weights |= {"start0": np.array([0], np.int64), "ax1": np.array([1], np.int64),
                    "end_max": np.array([INT64_MAX], np.int64)}
    model = _model(nodes, {"x": [1, c, 8, 8]}, {"y": [1, c, 8, 8]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, c, 8, 8)}, folded=frozenset(folded))


# ---- 4. Pad before Conv: torch F.pad / TF 'SAME' (asymmetric), and a reflect Pad --------------

def pad_conv(mode: str = "constant", seed: int = 0) -> ExporterGraph:
    """Pad (pads and value as inputs) -> Conv with pads 0, twice."""
    rng = np.random.default_rng(seed)
    if mode == "constant":  # TF SAME with stride 2 pads only the bottom/right
        pads1, pads2 = [0, 0, 0, 0, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1]
    else:
        pads1, pads2 = [0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 1, 1, 0, 0, 1, 1]
    extra = ["zero"] if mode == "constant" else []
    nodes = [_node("Pad", ["x", "pads1", *extra], "pad1", mode=mode),
             _node("Conv", ["pad1", "w1", "b1"], "conv1", kernel_shape=[3, 3], strides=[2, 2]),
             _node("Relu", ["conv1"], "relu1"),
             _node("Pad", ["relu1", "pads2", *extra], "pad2", mode=mode),
             _node("Conv", ["pad2", "w2"], "y", kernel_shape=[3, 3])]
    weights = {"pads1": np.array(pads1, np.int64), "pads2": np.array(pads2, np.int64),
               "w1": _conv_w(rng, 8, 4, 3), "b1": _rand(rng, 8, scale=0.1),
               "w2": _conv_w(rng, 8, 8, 3)}
    if mode == "constant":
        weights["zero"] = np.array(0.0, np.float32)
    model = _model(nodes, {"x": [1, 4, 16, 16]}, {"y": [1, 8, 8, 8]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, 4, 16, 16)})


# ---- 5. constant-first binaries and Max/Min with a constant ---------------------------------

def constant_first_binaries(seed: int = 0) -> ExporterGraph:
    """Mul(c, x) -> Add(c, .) -> Sub(1, .) -> Max(., -1) -> Min(2, .) -> Add(3, .) -> Div(1, .)."""
    rng = np.random.default_rng(seed)
    nodes = [_node("Mul", ["scale", "x"], "mul"),
             _node("Add", ["shift", "mul"], "add"),
             _node("Sub", ["one", "add"], "sub"),
             _node("Max", ["sub", "lo"], "max"),
             _node("Min", ["hi", "max"], "min"),
             _node("Add", ["three", "min"], "pos"),
             _node("Div", ["one", "pos"], "y")]
    weights = {"scale": _rand(rng, 8, 1, 1), "shift": _rand(rng, 1, 8, 1, 1),
               "one": np.array(1.0, np.float32), "lo": np.array(-1.0, np.float32),
               "hi": np.array([2.0], np.float32), "three": np.array(3.0, np.float32)}
    model = _model(nodes, {"x": [1, 8, 4, 4]}, {"y": [1, 8, 4, 4]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, 8, 4, 4)})


# ---- 6. MobileNetV3 / EfficientNet block with squeeze-excite ----------------------------------

def _hard_sigmoid(src: str, out: str, form: str) -> list[onnx.NodeProto]:
    if form == "onnx":
        return [_node("HardSigmoid", [src], out, alpha=1.0 / 6.0, beta=0.5)]
    # torch F.hardsigmoid before opset 14: relu6(x + 3) / 6
    return [_node("Add", [src, "three"], f"{out}_p3"),
            _node("Clip", [f"{out}_p3", "zero", "six"], f"{out}_clip"),
            _node("Div", [f"{out}_clip", "six"], out)]


def _act(src: str, out: str, form: str) -> list[onnx.NodeProto]:
    if form == "onnx":
        return [_node("HardSwish", [src], out)]
    # SiLU / swish as torch exports it: x * sigmoid(x)
    return [_node("Sigmoid", [src], f"{out}_sig"), _node("Mul", [src, f"{out}_sig"], out)]


def mobilenet_v3_block(form: str = "onnx", seed: int = 0) -> ExporterGraph:
    """Conv1x1 -> act -> dw3x3 -> act -> SE(GAP, Conv, Relu, Conv, hard-sigmoid, Mul)
    -> Conv1x1 -> + x. ``form`` "onnx": HardSwish/HardSigmoid ops; "torch": SiLU as
    x*Sigmoid(x) and hard-sigmoid as Add(3)/Clip(0,6)/Div(6)."""
    rng = np.random.default_rng(seed)
    nodes = [_node("Conv", ["x", "w_exp", "b_exp"], "exp", kernel_shape=[1, 1]),
             *_act("exp", "exp_a", form),
             _node("Conv", ["exp_a", "w_dw", "b_dw"], "dw", kernel_shape=[3, 3],
                   pads=[1, 1, 1, 1], group=16),
             *_act("dw", "dw_a", form),
             _node("GlobalAveragePool", ["dw_a"], "se_gap"),
             _node("Conv", ["se_gap", "w_se1", "b_se1"], "se1", kernel_shape=[1, 1]),
             _node("Relu", ["se1"], "se1_r"),
             _node("Conv", ["se1_r", "w_se2", "b_se2"], "se2", kernel_shape=[1, 1]),
             *_hard_sigmoid("se2", "se_gate", form),
             _node("Mul", ["dw_a", "se_gate"], "se_out"),
             _node("Conv", ["se_out", "w_proj", "b_proj"], "proj", kernel_shape=[1, 1]),
             _node("Add", ["proj", "x"], "y")]
    weights = {"w_exp": _conv_w(rng, 16, 8, 1), "b_exp": _rand(rng, 16, scale=0.1),
               "w_dw": _conv_w(rng, 16, 1, 3), "b_dw": _rand(rng, 16, scale=0.1),
               "w_se1": _conv_w(rng, 4, 16, 1), "b_se1": _rand(rng, 4, scale=0.1),
               "w_se2": _conv_w(rng, 16, 4, 1), "b_se2": _rand(rng, 16, scale=0.1),
               "w_proj": _conv_w(rng, 8, 16, 1), "b_proj": _rand(rng, 8, scale=0.1)}
    if form == "torch":
        weights |= {"three": np.array(3.0, np.float32), "zero": np.array(0.0, np.float32),
                    "six": np.array(6.0, np.float32)}
    model = _model(nodes, {"x": [1, 8, 16, 16]}, {"y": [1, 8, 16, 16]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, 8, 16, 16)})


# ---- 7. MnasNet / EfficientNet head: ReduceMean over H, W ------------------------------------

def reduce_mean_head(opset: int = 17, seed: int = 0) -> ExporterGraph:
    """Conv -> Relu -> ReduceMean([2,3], keepdims=0) -> Gemm, and ReduceMean(keepdims=1)
    -> Conv1x1 -> Flatten. Opset 17 gives axes as an attribute, opset 18 as an input."""
    rng = np.random.default_rng(seed)

    def mean(out: str, keep: int) -> onnx.NodeProto:
        if opset < 18:
            return _node("ReduceMean", ["relu"], out, axes=[2, 3], keepdims=keep)
        return _node("ReduceMean", ["relu", "hw"], out, keepdims=keep)

    nodes = [_node("Conv", ["x", "w", "b"], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             _node("Relu", ["conv"], "relu"),
             mean("pooled", 0),
             _node("Gemm", ["pooled", "fw", "fb"], "logits", transB=1),
             mean("pooled4", 1),
             _node("Conv", ["pooled4", "cw", "cb"], "cls", kernel_shape=[1, 1]),
             _node("Flatten", ["cls"], "logits2", axis=1)]
    weights = {"w": _conv_w(rng, 16, 3, 3), "b": _rand(rng, 16, scale=0.1),
               "fw": _rand(rng, 10, 16, scale=0.25), "fb": _rand(rng, 10, scale=0.1),
               "cw": _conv_w(rng, 10, 16, 1), "cb": _rand(rng, 10, scale=0.1)}
    if opset >= 18:
        weights["hw"] = np.array([2, 3], np.int64)
    model = _model(nodes, {"x": [1, 3, 8, 8]}, {"logits": [1, 10], "logits2": [1, 10]},
                   weights, opset=opset)
    return ExporterGraph(model, {"x": _rand(rng, 1, 3, 8, 8)})


# ---- 8. segmentation head: Conv -> Resize back to the input size -----------------------------

def segmentation_head(mode: str = "half_pixel", seed: int = 0) -> ExporterGraph:
    """Conv s2 -> Relu -> Conv1x1 -> Resize. "half_pixel"/"align_corners": bilinear to
    sizes = Concat([1, C], Shape(x)[2:4]) (torchvision FCN/DeepLab); "nearest": Upsample-style
    scales [1,1,2,2], asymmetric, floor."""
    rng = np.random.default_rng(seed)
    nodes = [_node("Conv", ["x", "w1", "b1"], "conv1", kernel_shape=[3, 3], strides=[2, 2],
                   pads=[1, 1, 1, 1]),
             _node("Relu", ["conv1"], "relu1"),
             _node("Conv", ["relu1", "w2", "b2"], "logits", kernel_shape=[1, 1])]
    weights = {"w1": _conv_w(rng, 8, 3, 3), "b1": _rand(rng, 8, scale=0.1),
               "w2": _conv_w(rng, 4, 8, 1), "b2": _rand(rng, 4, scale=0.1)}
    folded: frozenset[str] = frozenset()
    if mode == "nearest":
        nodes.append(_node("Resize", ["logits", "", "scales"], "y", mode="nearest",
                           coordinate_transformation_mode="asymmetric", nearest_mode="floor"))
        weights["scales"] = np.array([1, 1, 2, 2], np.float32)
    else:
        nodes += [_node("Shape", ["x"], "x_shape"),
                  _node("Slice", ["x_shape", "s2", "s4", "s0"], "hw"),
                  _node("Concat", ["nc", "hw"], "sizes", axis=0),
                  _node("Resize", ["logits", "", "", "sizes"], "y", mode="linear",
                        coordinate_transformation_mode=mode)]
        weights |= {"s0": np.array([0], np.int64), "s2": np.array([2], np.int64),
                    "s4": np.array([4], np.int64), "nc": np.array([1, 4], np.int64)}
        folded = frozenset({"x_shape", "hw", "sizes"})
    model = _model(nodes, {"x": [1, 3, 16, 16]}, {"y": [1, 4, 16, 16]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, 3, 16, 16)}, folded=folded)


# ---- 9. ConvNeXt block ----------------------------------------------------------------------

def _layer_norm(src: str, out: str, form: str, scale: str, bias: str) -> list[onnx.NodeProto]:
    """LayerNorm over the last axis: the opset-17 op, or the torch opset<17 decomposition."""
    if form == "op":
        return [_node("LayerNormalization", [src, scale, bias], out, axis=-1, epsilon=1e-6)]
    p = f"{out}_"
    return [_node("ReduceMean", [src], p + "mean", axes=[-1], keepdims=1),
            _node("Sub", [src, p + "mean"], p + "centered"),
            _node("Pow", [p + "centered", "two_f"], p + "sq"),
            _node("ReduceMean", [p + "sq"], p + "var", axes=[-1], keepdims=1),
            _node("Add", [p + "var", "eps"], p + "var_eps"),
            _node("Sqrt", [p + "var_eps"], p + "std"),
            _node("Div", [p + "centered", p + "std"], p + "normed"),
            _node("Mul", [p + "normed", scale], p + "scaled"),
            _node("Add", [p + "scaled", bias], out)]


def convnext_block(norm: str = "op", seed: int = 0) -> ExporterGraph:
    """dw Conv7x7 -> NHWC -> LayerNorm -> MatMul -> Gelu (erf form) -> MatMul -> layer
    scale -> NCHW -> + x."""
    rng = np.random.default_rng(seed)
    c, hidden = 16, 64
    nodes = [_node("Conv", ["x", "dw_w", "dw_b"], "dw", kernel_shape=[7, 7],
                   pads=[3, 3, 3, 3], group=c),
             _node("Transpose", ["dw"], "nhwc", perm=[0, 2, 3, 1]),
             *_layer_norm("nhwc", "ln", norm, "ln_s", "ln_b"),
             _node("MatMul", ["ln", "w1"], "fc1"),
             _node("Add", ["fc1", "b1"], "fc1_b"),
             _node("Div", ["fc1_b", "sqrt2"], "gelu_div"),
             _node("Erf", ["gelu_div"], "gelu_erf"),
             _node("Add", ["gelu_erf", "one"], "gelu_add"),
             _node("Mul", ["fc1_b", "gelu_add"], "gelu_mul"),
             _node("Mul", ["gelu_mul", "half"], "gelu"),
             _node("MatMul", ["gelu", "w2"], "fc2"),
             _node("Add", ["fc2", "b2"], "fc2_b"),
             _node("Mul", ["fc2_b", "gamma"], "scaled"),
             _node("Transpose", ["scaled"], "nchw", perm=[0, 3, 1, 2]),
             _node("Add", ["x", "nchw"], "y")]
    weights = {"dw_w": _conv_w(rng, c, 1, 7), "dw_b": _rand(rng, c, scale=0.1),
               "ln_s": 1 + _rand(rng, c, scale=0.1), "ln_b": _rand(rng, c, scale=0.1),
               "w1": _rand(rng, c, hidden, scale=0.25), "b1": _rand(rng, hidden, scale=0.1),
               "w2": _rand(rng, hidden, c, scale=0.125), "b2": _rand(rng, c, scale=0.1),
               "gamma": np.full(c, 0.5, np.float32), "sqrt2": np.array(np.sqrt(2), np.float32),
               "one": np.array(1.0, np.float32), "half": np.array(0.5, np.float32)}
    if norm != "op":
        weights |= {"two_f": np.array(2.0, np.float32), "eps": np.array(1e-6, np.float32)}
    model = _model(nodes, {"x": [1, c, 8, 8]}, {"y": [1, c, 8, 8]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, c, 8, 8)})


# ---- 10. ViT patch embedding with a class token ----------------------------------------------

def vit_patch_embed(seed: int = 0) -> ExporterGraph:
    """Conv4x4 s4 -> flatten(2) via Shape/Concat Reshape -> Transpose -> Concat with the
    class token Expand-ed to [B,1,D] -> + position embedding -> LayerNorm -> token 0 -> Gemm."""
    rng = np.random.default_rng(seed)
    d = 8
    nodes = [_node("Conv", ["x", "pw", "pb"], "patches", kernel_shape=[4, 4], strides=[4, 4]),
             _node("Shape", ["patches"], "p_shape"),
             _node("Slice", ["p_shape", "s0", "s2", "s0"], "bc"),
             _node("Concat", ["bc", "minus1"], "flat_shape", axis=0),
             _node("Reshape", ["patches", "flat_shape"], "flat"),
             _node("Transpose", ["flat"], "tokens", perm=[0, 2, 1]),
             _node("Shape", ["x"], "x_shape"),
             _const("zero", 0),
             _node("Gather", ["x_shape", "zero"], "batch", axis=0),
             _node("Unsqueeze", ["batch", "s0"], "batch1"),
             _node("Concat", ["batch1", "one_one"], "cls_shape", axis=0),
             _node("Expand", ["cls", "cls_shape"], "cls_b"),
             _node("Concat", ["cls_b", "tokens"], "seq", axis=1),
             _node("Add", ["seq", "pos"], "seq_pos"),
             _node("LayerNormalization", ["seq_pos", "ln_s", "ln_b"], "ln", axis=-1,
                   epsilon=1e-6),
             _node("Gather", ["ln", "zero"], "cls_out", axis=1),
             _node("Gemm", ["cls_out", "hw", "hb"], "y", transB=1)]
    weights = {"pw": _conv_w(rng, d, 3, 4), "pb": _rand(rng, d, scale=0.1),
               "s0": np.array([0], np.int64), "s2": np.array([2], np.int64),
               "minus1": np.array([-1], np.int64), "one_one": np.array([1, 1], np.int64),
               "cls": _rand(rng, 1, 1, d), "pos": _rand(rng, 1, 17, d, scale=0.1),
               "ln_s": 1 + _rand(rng, d, scale=0.1), "ln_b": _rand(rng, d, scale=0.1),
               "hw": _rand(rng, 10, d, scale=0.35), "hb": _rand(rng, 10, scale=0.1)}
    model = _model(nodes, {"x": [1, 3, 16, 16]}, {"y": [1, 10]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, 3, 16, 16)},
                         folded=frozenset({"p_shape", "bc", "flat_shape", "x_shape", "zero",
                                           "batch", "batch1", "cls_shape"}))


# ---- 11. ConvTranspose ----------------------------------------------------------------------

def conv_transpose(grouped: bool = False, seed: int = 0) -> ExporterGraph:
    """ConvTranspose 3x3 s2 pads 1 output_padding 1 (8 -> 16), or a grouped 4x4 s2 pads 1."""
    rng = np.random.default_rng(seed)
    if grouped:
        node = _node("ConvTranspose", ["x", "w", "b"], "up", kernel_shape=[4, 4],
                     strides=[2, 2], pads=[1, 1, 1, 1], group=2)
        w = _rand(rng, 8, 4, 4, 4, scale=0.25)  # [C_in, C_out / group, kH, kW]
    else:
        node = _node("ConvTranspose", ["x", "w", "b"], "up", kernel_shape=[3, 3],
                     strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1])
        w = _rand(rng, 8, 8, 3, 3, scale=0.25)
    nodes = [node, _node("Relu", ["up"], "y")]
    model = _model(nodes, {"x": [1, 8, 8, 8]}, {"y": [1, 8, 16, 16]},
                   {"w": w, "b": _rand(rng, 8, scale=0.1)})
    return ExporterGraph(model, {"x": _rand(rng, 1, 8, 8, 8)})


# ---- 12. no-ops: Cast float->float, Identity, inference Dropout ------------------------------

def no_ops(seed: int = 0) -> ExporterGraph:
    """Conv -> Cast(float) -> Identity -> Dropout(ratio) -> Relu."""
    rng = np.random.default_rng(seed)
    nodes = [_node("Conv", ["x", "w"], "conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             _node("Cast", ["conv"], "cast", to=TensorProto.FLOAT),
             _node("Identity", ["cast"], "ident"),
             _node("Dropout", ["ident", "ratio"], "drop"),
             _node("Relu", ["drop"], "y")]
    model = _model(nodes, {"x": [1, 8, 8, 8]}, {"y": [1, 8, 8, 8]},
                   {"w": _conv_w(rng, 8, 8, 3), "ratio": np.array(0.1, np.float32)})
    return ExporterGraph(model, {"x": _rand(rng, 1, 8, 8, 8)},
                         folded=frozenset({"cast", "ident", "drop"}))


# ---- 13. a deep chain of computed pads: each block pads to a multiple of the window ---------

def padded_window_chain(blocks: int = 24, seed: int = 0) -> ExporterGraph:
    """Swin's window padding at opset 11, ``blocks`` times over: each block's Pad amount
    is computed from the previous block's shape (Shape -> Gather -> Mod -> Sub -> Concat
    -> Pad), then a Conv trims the width back. Resolving it takes two fold-and-infer
    rounds per block, so it holds the compiler to a real fixed point, not a few rounds."""
    rng = np.random.default_rng(seed)
    nodes = [_const("axes0", [0]), _const("i3", 3), _const("win", 4), _const("zeros6", [0] * 7)]
    weights = {}
    last = "x"
    for b in range(blocks):
        t = f"b{b}"
        nodes += [_node("Shape", [last], f"{t}_shape"),
                  _node("Gather", [f"{t}_shape", "i3"], f"{t}_w", axis=0),
                  _node("Mod", [f"{t}_w", "win"], f"{t}_rem"),
                  _node("Sub", ["win", f"{t}_rem"], f"{t}_short"),
                  _node("Mod", [f"{t}_short", "win"], f"{t}_padw"),
                  _node("Unsqueeze", [f"{t}_padw", "axes0"], f"{t}_padw1"),
                  _node("Concat", ["zeros6", f"{t}_padw1"], f"{t}_pads", axis=0),
                  _node("Pad", [last, f"{t}_pads"], f"{t}_padded"),
                  _node("Conv", [f"{t}_padded", f"{t}_k"], f"{t}_y", kernel_shape=[1, 2])]
        weights[f"{t}_k"] = _conv_w(rng, 4, 4, 1)[:, :, :, :1].repeat(2, axis=3) * 0.5
        last = f"{t}_y"
    nodes.append(_node("Relu", [last], "y"))
    width = 13
    for _ in range(blocks):
        width = width + (-width) % 4 - 1
    model = _model(nodes, {"x": [1, 4, 3, 13]}, {"y": [1, 4, 3, width]}, weights)
    return ExporterGraph(model, {"x": _rand(rng, 1, 4, 3, 13)})


BUILDERS: dict[str, Callable[[], ExporterGraph]] = {
    "padded_window_chain": padded_window_chain,
    "paddle_reshape_chain": paddle_reshape_chain,
    "torch_flatten": torch_flatten,
    "shufflenet_split": lambda: shufflenet_unit("split"),
    "shufflenet_slice": lambda: shufflenet_unit("slice"),
    "pad_conv_constant": lambda: pad_conv("constant"),
    "pad_conv_reflect": lambda: pad_conv("reflect"),
    "constant_first_binaries": constant_first_binaries,
    "mobilenet_v3_block": lambda: mobilenet_v3_block("onnx"),
    "mobilenet_v3_block_torch": lambda: mobilenet_v3_block("torch"),
    "reduce_mean_head_opset17": lambda: reduce_mean_head(17),
    "reduce_mean_head_opset18": lambda: reduce_mean_head(18),
    "segmentation_bilinear_half_pixel": lambda: segmentation_head("half_pixel"),
    "segmentation_bilinear_align_corners": lambda: segmentation_head("align_corners"),
    "segmentation_nearest_scales": lambda: segmentation_head("nearest"),
    "convnext_block": lambda: convnext_block("op"),
    "convnext_block_decomposed_ln": lambda: convnext_block("decomposed"),
    "vit_patch_embed": vit_patch_embed,
    "conv_transpose": lambda: conv_transpose(False),
    "conv_transpose_grouped": lambda: conv_transpose(True),
    "no_ops": no_ops,
}
"""Every corpus graph by name; each builder is seeded and deterministic."""
