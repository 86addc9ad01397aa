# SPDX-License-Identifier: Apache-2.0
"""Seeded versions of the "light" model-zoo graphs shipped inside the ``onnx`` package.

``onnx`` ships weight-less copies of classic CNNs under ``onnx/backend/test/data/light``
(``light_<name>.onnx``). Their weights are produced by ``ConstantOfShape`` nodes that fill
every tensor with one constant, which is useless for numerical work. :func:`load_light_model`
replaces those generators with seeded random initializers whose distribution depends on
how each tensor is consumed, so that deep networks stay numerically sane. Nothing is
downloaded.

The models are ``ir_version`` 3 (opset 9): in that IR every initializer must also be
listed in ``graph.input``. The loader keeps the original IR version, so the new
initializers are listed as inputs too; use :func:`light_model_input` (or compare against
``graph.initializer``) to find the true data inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = [
    "light_model_dir",
    "light_model_input",
    "light_model_names",
    "light_model_path",
    "load_light_model",
]

_PREFIX = "light_"
#: Ops that only re-arrange a tensor; roles are looked up through them (e.g. Unsqueeze->Mul).
_PASSTHROUGH = frozenset({"Cast", "Flatten", "Identity", "Reshape", "Squeeze", "Transpose",
                          "Unsqueeze"})


def light_model_dir() -> Path:
    """Return the folder of the ``onnx`` package that holds ``light_*.onnx``."""
    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"


def light_model_names() -> tuple[str, ...]:
    """Return the sorted names (file stems without ``light_``) of the available models."""
    return tuple(sorted(p.stem[len(_PREFIX):] for p in light_model_dir().glob("light_*.onnx")))


def light_model_path(name: str) -> Path:
    """Return the path of ``light_<name>.onnx``.

    Raises:
        ValueError: If no such model ships with the installed ``onnx`` package.
    """
    names = light_model_names()
    if name not in names:
        raise ValueError(f"unknown light model {name!r}; available: {', '.join(names) or 'none'}")
    return light_model_dir() / f"{_PREFIX}{name}.onnx"


def _consumers(graph: onnx.GraphProto) -> dict[str, list[tuple[onnx.NodeProto, int]]]:
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for idx, name in enumerate(node.input):
            uses.setdefault(name, []).append((node, idx))
    return uses


def _role(name: str, uses: dict[str, list[tuple[onnx.NodeProto, int]]]
          ) -> tuple[onnx.NodeProto, int] | None:
    """First real consumer ``(node, input index)`` of ``name``, looking through re-layouts."""
    seen: set[str] = set()
    while name in uses and name not in seen:
        seen.add(name)
        node, idx = uses[name][0]
        if node.op_type in _PASSTHROUGH and idx == 0:
            name = node.output[0]
            continue
        return node, idx
    return None


def _attr(node: onnx.NodeProto, key: str, default: int) -> int:
    for a in node.attribute:
        if a.name == key:
            return int(helper.get_attribute_value(a))
    return default


def _fan_in(node: onnx.NodeProto, shape: tuple[int, ...]) -> int:
    if node.op_type == "Conv":  # [M, C/group, kh, kw]
        fan = int(np.prod(shape[1:]))
    elif node.op_type == "Gemm" and _attr(node, "transB", 0):  # [N, K] (possibly pre-Reshape)
        fan = shape[-1]
    elif node.op_type == "Gemm":  # [K, N]
        fan = int(np.prod(shape[:-1]))
    else:  # MatMul B: [..., K, N]
        fan = shape[-2] if len(shape) >= 2 else shape[0]
    return max(int(fan), 1)


def _feeds_residual_merge(node: onnx.NodeProto,
                          uses: dict[str, list[tuple[onnx.NodeProto, int]]]) -> bool:
    """True if ``node``'s output goes straight into an elementwise Sum/Add (residual merge)."""
    return any(n.op_type in ("Add", "Sum") for n, _ in uses.get(node.output[0], []))


def _normal(rng: np.random.Generator, std: float, shape: tuple[int, ...]) -> np.ndarray:
    # Sampling directly in float32 is ~2x faster than float64 for the 100M+ weight models.
    out = rng.standard_normal(shape, dtype=np.float32)
    out *= np.float32(std)
    return out


def _uniform(rng: np.random.Generator, lo: float, hi: float, shape: tuple[int, ...]
             ) -> np.ndarray:
    out = rng.random(shape, dtype=np.float32)
    out *= np.float32(hi - lo)
    out += np.float32(lo)
    return out


def _sample(role: tuple[onnx.NodeProto, int] | None, shape: tuple[int, ...],
            rng: np.random.Generator, uses: dict[str, list[tuple[onnx.NodeProto, int]]]
            ) -> np.ndarray:
    """Draw values suited to how the tensor is consumed (``role`` = consumer, input index)."""
    if role is None:
        return _normal(rng, 0.1, shape)
    node, idx = role
    op = node.op_type
    if op in ("Conv", "Gemm", "MatMul") and idx == 1 and shape:
        return _normal(rng, float(np.sqrt(2.0 / _fan_in(node, shape))), shape)
    if op in ("Conv", "Gemm") and idx == 2:
        return _normal(rng, 0.01, shape)
    if op == "BatchNormalization" and idx == 1 and _feeds_residual_merge(node, uses):
        return _uniform(rng, 0.1, 0.3, shape)  # damp residual branches, as in resnet.py
    if op == "BatchNormalization" and idx in (1, 4):
        return _uniform(rng, 0.5, 1.0, shape) if idx == 1 else _uniform(rng, 0.5, 1.5, shape)
    if op == "Mul":  # caffe "Scale" layers (BN -> Unsqueeze -> Mul): treat like a BN scale
        return _uniform(rng, 0.5, 1.0, shape)
    return _normal(rng, 0.1, shape)  # BN bias/mean and everything else


def _store(tensor: onnx.TensorProto, name: str, data: np.ndarray) -> None:
    """Overwrite ``tensor`` in place with ``data`` (avoids copying large protos)."""
    tensor.Clear()
    tensor.name = name
    tensor.data_type = helper.np_dtype_to_tensor_dtype(data.dtype)
    tensor.dims.extend(data.shape)
    tensor.raw_data = np.ascontiguousarray(data, dtype=data.dtype.newbyteorder("<")).tobytes()


def load_light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Load ``light_<name>.onnx`` with its ``ConstantOfShape`` weights made random.

    Every ``ConstantOfShape`` whose shape input is an initializer becomes an initializer
    with the same output name, dtype and shape. Values are drawn from one
    ``numpy.random.default_rng(seed)`` in graph order, by role: weights of Conv/Gemm/MatMul
    are He-normal, Conv/Gemm biases N(0, 0.01), BatchNormalization scale U(0.5, 1)
    (U(0.1, 0.3) when the BN output feeds a residual Add/Sum), bias and mean N(0, 0.1),
    var U(0.5, 1.5), Mul operands (caffe Scale layers) U(0.5, 1), and anything else
    N(0, 0.1). Re-layout ops (Unsqueeze, Reshape, ...) are looked through to find the role;
    the first consumer decides. Values are sampled in float32 and cast to the generator's
    dtype. Non-float generators keep their constant value. Initializers that already hold
    data are left untouched. A shape initializer read only by its generator is replaced in
    place (same slot in ``graph.initializer``, and in ``graph.input`` where IR <= 3 demands
    it is listed; dropped from ``graph.input`` otherwise); one with other readers is kept.

    Raises:
        ValueError: If ``name`` is not one of :func:`light_model_names`.
    """
    model = onnx.load(str(light_model_path(name)))
    graph = model.graph
    rng = np.random.default_rng(seed)
    uses = _consumers(graph)
    inits = {t.name: t for t in graph.initializer}
    inputs = {v.name: v for v in graph.input}
    list_as_input = model.ir_version < 4  # IR <= 3: every initializer must be a graph input
    # Shape initializers read by exactly one node (the generator) are rewritten in place, so
    # the new tensor takes their slot in graph.initializer / graph.input without copying.
    outputs = {v.name for v in graph.output}
    private = {n for n, u in uses.items() if len(u) == 1 and n not in outputs}

    kept_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        shape_name = node.input[0] if node.op_type == "ConstantOfShape" and node.input else ""
        if shape_name not in inits:
            kept_nodes.append(node)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[shape_name]))
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        fill = numpy_helper.to_array(value) if value is not None else np.zeros(1, np.float32)
        if np.issubdtype(fill.dtype, np.floating):
            role = _role(node.output[0], uses)
            data = _sample(role, shape, rng, uses).astype(fill.dtype, copy=False)
        else:
            data = np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)
        shared = shape_name not in private
        tensor = graph.initializer.add() if shared else inits[shape_name]
        _store(tensor, node.output[0], data)
        info = helper.make_tensor_value_info(tensor.name, tensor.data_type, list(shape))
        if not shared:
            if shape_name in inputs:
                inputs[shape_name].CopyFrom(info)
                if not list_as_input:
                    graph.input.remove(inputs[shape_name])
            elif list_as_input:
                graph.input.append(info)
        elif list_as_input:  # shape tensor shared with another reader: it stays as well
            graph.input.append(info)

    del graph.node[:]
    graph.node.extend(kept_nodes)
    return model


def light_model_input(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded standard-normal feeds for every true graph input (initializers excluded).

    Symbolic or unknown dimensions are taken as 1. Values are cast to the declared dtype.
    """
    rng = np.random.default_rng(seed)
    init_names = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for v in model.graph.input:
        if v.name in init_names:
            continue
        ttype = v.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1
                 for d in ttype.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type)
        feeds[v.name] = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    return feeds
