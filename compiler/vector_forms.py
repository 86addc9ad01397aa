# SPDX-License-Identifier: Apache-2.0
"""The vector unit's forms of ONNX ops: one pass, :func:`vector_forms`.

Element-wise functions become ``NpuUnary``; reductions over contiguous axes
``NpuReduce``; LayerNormalization and InstanceNormalization ``NpuNorm``; Resize
and Upsample ``NpuResize``; Transpose, Slice, Expand, a Gather with a constant
index, DepthToSpace and SpaceToDepth a strided copy ``NpuMove`` (the vector unit's
address generator walks any view of up to six dimensions); a Gather with constant
index vectors ``NpuGather``; a Pad of the two innermost axes ``NpuPad``. Everything
is fp32. A node that has no device form keeps its ONNX kind, with the reason in its
``why_host`` attribute for the compile report.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from npusim.compiler.interpret import clip_bounds
from npusim.compiler.ir import (
    Node,
    Op,
    add_node,
    inputs_of,
    make_attrs,
    node,
    remove_dead,
    set_inputs,
    set_node,
    topo_order,
)
from npusim.compiler.options import CompileOptions
from npusim.compiler.passes import add_const, rewire
from npusim.compiler.placement import ALU_OPS, alu_form

MOVE_DIMS = 6
"""Dimensions the vector unit's strided address generator walks (``V_MOVE``)."""

UNARY: dict[Op, tuple[str, float, float]] = {
    Op.SIGMOID: ("sigmoid", 0.0, 0.0), Op.TANH: ("tanh", 0.0, 0.0),
    Op.LEAKY_RELU: ("leaky_relu", 0.01, 0.0), Op.HARD_SIGMOID: ("hard_sigmoid", 0.2, 0.5),
    Op.HARD_SWISH: ("hard_swish", 0.0, 0.0), Op.EXP: ("exp", 0.0, 0.0),
    Op.LOG: ("log", 0.0, 0.0), Op.SQRT: ("sqrt", 0.0, 0.0),
    Op.RECIPROCAL: ("reciprocal", 0.0, 0.0), Op.NEG: ("neg", 0.0, 0.0),
    Op.ABS: ("abs", 0.0, 0.0), Op.ERF: ("erf", 0.0, 0.0), Op.GELU: ("gelu", 0.0, 0.0),
    Op.ELU: ("elu", 1.0, 0.0), Op.SOFTPLUS: ("softplus", 0.0, 0.0),
    Op.SELU: ("selu", 1.67326319217681884765625, 1.05070102214813232421875),
    Op.SOFTSIGN: ("softsign", 0.0, 0.0), Op.FLOOR: ("floor", 0.0, 0.0),
    Op.CEIL: ("ceil", 0.0, 0.0), Op.ROUND: ("round", 0.0, 0.0), Op.SIGN: ("sign", 0.0, 0.0),
}
"""ONNX element-wise op -> (``UnaryFn`` name, default alpha, default beta)."""

REDUCE = {Op.REDUCE_MEAN: "mean", Op.REDUCE_SUM: "sum", Op.REDUCE_MAX: "max",
          Op.REDUCE_MIN: "min", Op.REDUCE_SUM_SQUARE: "sum_square", Op.REDUCE_L2: "l2"}
COORD_MODES = ("half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel",
               "tf_half_pixel_for_nn")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
PAD_MODES = ("constant", "reflect", "edge", "wrap")


class NoForm(Exception):
    """The op has no device form for these operands; the message says why."""


def _value(g: nx.DiGraph, name: str | None) -> np.ndarray | None:
    if name is None:
        return None
    n = node(g, name)
    if n.op != Op.CONST:
        raise NoForm(f"operand '{name}' is computed at run time, not a constant")
    return np.asarray(n.value)


def _arg(srcs: list[str], k: int, n: Node | None = None) -> str | None:
    """The IR input that is ONNX input ``k`` (``None`` if left out)."""
    slots = n.attr("slots") if n is not None else None
    if slots is not None:
        return srcs[slots.index(k)] if k in slots else None
    return srcs[k] if k < len(srcs) else None


def _size(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def strides_of(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major element strides."""
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def merge_view(dims: tuple[int, ...], strides: tuple[int, ...]) -> tuple[tuple[int, ...],
                                                                         tuple[int, ...]]:
    """Drop unit dimensions and fuse neighbours that walk memory as one."""
    pairs = [(d, s) for d, s in zip(dims, strides, strict=True) if d != 1]
    out: list[list[int]] = []
    for d, s in pairs:
        if out and out[-1][1] == s * d:
            out[-1] = [out[-1][0] * d, s]
        else:
            out.append([d, s])
    if not out:
        out = [[1, 1]]
    return tuple(d for d, _ in out), tuple(s for _, s in out)


def _move(n: Node, label: str, offset: int, dims, strides) -> Node:
    dims, strides = merge_view(tuple(int(d) for d in dims), tuple(int(s) for s in strides))
    if len(dims) > MOVE_DIMS:
        raise NoForm(f"the copy walks {len(dims)} dimensions; the vector unit walks "
                     f"{MOVE_DIMS}")
    return Node(Op.NPU_MOVE, n.shape, n.dtype, make_attrs(offset=int(offset), dims=dims,
                                                          strides=strides, label=label),
                origin=n.origin, proto=n.proto)


def _transpose(g, name, n, srcs) -> Node:
    shape = node(g, srcs[0]).shape
    perm = n.attr("perm") or tuple(reversed(range(len(shape))))
    st = strides_of(shape)
    return _move(n, "Transpose", 0, n.shape, [st[p] for p in perm])


def _slice(g, name, n, srcs) -> Node:
    shape = node(g, srcs[0]).shape
    if len(srcs) > 1:
        starts, ends = _value(g, srcs[1]), _value(g, srcs[2])
        axes = _value(g, _arg(srcs, 3))
        steps = _value(g, _arg(srcs, 4))
    else:  # opset < 10: attributes
        starts, ends = np.array(n.attr("starts")), np.array(n.attr("ends"))
        axes = None if n.attr("axes") is None else np.array(n.attr("axes"))
        steps = None
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes.reshape(-1)]
    steps = [1] * len(axes) if steps is None else [int(s) for s in steps.reshape(-1)]
    first = [0] * len(shape)
    step = [1] * len(shape)
    for a, s, e, k in zip(axes, starts.reshape(-1), ends.reshape(-1), steps, strict=True):
        a = a + len(shape) if a < 0 else a
        dim = shape[a]
        s, e = int(s), int(e)
        s = s + dim if s < 0 else s
        if k > 0:
            first[a] = min(max(s, 0), dim)
        else:
            first[a] = min(max(s, -1), dim - 1)
        step[a] = k
    st = strides_of(shape)
    offset = sum(f * t for f, t in zip(first, st, strict=True))
    return _move(n, "Slice", offset, n.shape, [k * t for k, t in zip(step, st, strict=True)])


def _gather(g, name, n, srcs) -> tuple[Node, np.ndarray | None]:
    shape = node(g, srcs[0]).shape
    idx = _value(g, srcs[1]).astype(np.int64)
    axis = n.attr("axis", 0)
    axis = axis + len(shape) if axis < 0 else axis
    idx = np.where(idx < 0, idx + shape[axis], idx)
    if idx.size and (idx.min() < 0 or idx.max() >= shape[axis]):
        raise NoForm(f"index {int(idx.max())} out of range for a dimension of {shape[axis]}")
    st = strides_of(shape)
    if idx.ndim == 0:
        dims = shape[:axis] + shape[axis + 1:]
        return _move(n, "Gather", int(idx) * st[axis], dims, st[:axis] + st[axis + 1:]), None
    outer, inner = _size(shape[:axis]), _size(shape[axis + 1:])
    new = Node(Op.NPU_GATHER, n.shape, n.dtype,
               make_attrs(outer=outer, axis_len=shape[axis], inner=inner, label="Gather"),
               origin=n.origin, proto=n.proto)
    return new, idx.reshape(-1).astype(np.int32)


def _expand(g, name, n, srcs) -> Node:
    shape = node(g, srcs[0]).shape
    padded = (1,) * (len(n.shape) - len(shape)) + tuple(shape)
    st = strides_of(padded)
    return _move(n, "Expand", 0, n.shape,
                 [0 if d == 1 and o != 1 else s for d, o, s in zip(padded, n.shape, st,
                                                                   strict=True)])


def _depth_space(g, name, n, srcs) -> Node:
    b_, c, h, w = node(g, srcs[0]).shape
    b = int(n.attr("blocksize"))
    if n.op == Op.DEPTH_TO_SPACE:
        if n.attr("mode", "DCR") == "CRD":
            view, perm = (b_, c // (b * b), b, b, h, w), (0, 1, 4, 2, 5, 3)
        else:
            view, perm = (b_, b, b, c // (b * b), h, w), (0, 3, 4, 1, 5, 2)
    else:
        view, perm = (b_, c, h // b, b, w // b, b), (0, 3, 5, 1, 2, 4)
    st = strides_of(view)
    return _move(n, n.op.value, 0, [view[p] for p in perm], [st[p] for p in perm])


def _unary(g, name, n, srcs) -> Node:
    fn, alpha, beta = UNARY.get(n.op, (n.op.value.lower(), 0.0, 0.0))
    alpha = float(n.attr("alpha", alpha))
    beta = float(n.attr("gamma", n.attr("beta", beta)))
    if n.op == Op.CLIP:
        lo, hi = _value(g, _arg(srcs, 1, n)), _value(g, _arg(srcs, 2, n))
        alpha, beta = clip_bounds(n, [lo, hi] if len(srcs) > 1 else [])
    if n.op == Op.GELU:
        approx = n.attr("approximate", "none")
        if approx not in ("none", "tanh"):
            raise NoForm(f"Gelu approximation '{approx}'")
        alpha = 1.0 if approx == "tanh" else 0.0
    if n.op == Op.POW:
        e = _value(g, srcs[1])
        if e.size != 1:
            raise NoForm("the exponent is not a scalar")
        alpha = float(e.reshape(-1)[0])
    return Node(Op.NPU_UNARY, n.shape, n.dtype,
                make_attrs(fn=fn, alpha=float(np.float32(alpha)), beta=float(np.float32(beta)),
                           label=n.op.value), origin=n.origin, proto=n.proto)


def _reduce(g, name, n, srcs) -> Node:
    shape = node(g, srcs[0]).shape
    axes = n.attr("axes")
    if len(srcs) > 1:
        axes = _value(g, srcs[1]).reshape(-1).tolist()
    if not axes:
        if n.attr("noop_with_empty_axes", 0):
            raise NoForm("an empty reduction (noop_with_empty_axes)")
        axes = list(range(len(shape)))
    axes = sorted({a + len(shape) if a < 0 else a for a in axes})
    kept = [a for a in axes if shape[a] != 1]
    if kept and kept != list(range(kept[0], kept[-1] + 1)):
        raise NoForm("the reduced axes are not contiguous")
    lo, hi = (kept[0], kept[-1] + 1) if kept else (len(shape), len(shape))
    attrs = make_attrs(mode=REDUCE[n.op], outer=_size(shape[:lo]), mid=_size(shape[lo:hi]),
                       inner=_size(shape[hi:]), label=n.op.value)
    return Node(Op.NPU_REDUCE, n.shape, n.dtype, attrs, origin=n.origin, proto=n.proto)


def _norm(g, name, n, srcs) -> tuple[Node, np.ndarray, np.ndarray]:
    shape = node(g, srcs[0]).shape
    scale = _value(g, srcs[1]).astype(np.float32)
    bias = _value(g, _arg(srcs, 2))
    eps = float(np.float32(n.attr("epsilon", 1e-5)))
    if n.op == Op.LAYERNORM:
        axis = n.attr("axis", -1)
        axis = axis + len(shape) if axis < 0 else axis
        inner = tuple(shape[axis:])
        try:
            scale = np.broadcast_to(scale, inner).reshape(-1)
            bias = np.zeros_like(scale) if bias is None \
                else np.broadcast_to(bias.astype(np.float32), inner).reshape(-1)
        except ValueError:
            raise NoForm("scale or bias does not broadcast over the normalized axes") from None
        rows, cols, channels = _size(shape[:axis]), _size(inner), 0
    else:
        if len(shape) < 3:
            raise NoForm("InstanceNormalization of a tensor without spatial axes")
        rows, cols, channels = shape[0] * shape[1], _size(shape[2:]), shape[1]
        scale = scale.reshape(-1)
        bias = bias.astype(np.float32).reshape(-1)
    attrs = make_attrs(rows=rows, cols=cols, channels=channels, epsilon=eps, label=n.op.value)
    return (Node(Op.NPU_NORM, n.shape, n.dtype, attrs, origin=n.origin, proto=n.proto),
            np.ascontiguousarray(scale, np.float32), np.ascontiguousarray(bias, np.float32))


def _resize(g, name, n, srcs) -> Node:
    shape = node(g, srcs[0]).shape
    if len(shape) != 4:
        raise NoForm(f"resize of a {len(shape)}-D tensor (the vector unit resizes NCHW)")
    if n.op == Op.UPSAMPLE:
        scales = _value(g, srcs[1]) if len(srcs) > 1 else np.array(n.attr("scales"))
        mode = n.attr("mode", "nearest")
        coord, nearest = "asymmetric", "floor"
    else:
        if n.attr("antialias", 0) or n.attr("axes") is not None \
                or n.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise NoForm("antialiasing, axes or an aspect-ratio policy")
        sizes = _value(g, _arg(srcs, 3, n))
        scales = _value(g, _arg(srcs, 2, n))
        if scales is None or scales.size == 0:
            if sizes is None:
                raise NoForm("neither scales nor sizes")
            scales = np.asarray(sizes, np.float32) / np.asarray(shape, np.float32)
        mode = n.attr("mode", "nearest")
        coord = n.attr("coordinate_transformation_mode", "half_pixel")
        nearest = n.attr("nearest_mode", "round_prefer_floor")
    scales = np.asarray(scales, np.float32).reshape(-1)
    mode = {"bilinear": "linear"}.get(mode, mode)
    if mode not in ("nearest", "linear"):
        raise NoForm(f"{mode} interpolation")
    if coord not in COORD_MODES:
        raise NoForm(f"coordinate mode {coord}")
    if mode == "nearest" and nearest not in NEAREST_MODES:
        raise NoForm(f"nearest mode {nearest}")
    if scales.size != 4 or scales[0] != 1 or scales[1] != 1:
        raise NoForm("scaling of the batch or channel axis")
    attrs = make_attrs(mode=mode, coord=coord, nearest=nearest if mode == "nearest"
                       else "round_prefer_floor", scales=(float(scales[2]), float(scales[3])),
                       label=n.op.value)
    return Node(Op.NPU_RESIZE, n.shape, n.dtype, attrs, origin=n.origin, proto=n.proto)


def pad_amounts(g: nx.DiGraph, n: Node, srcs: list[str], rank: int) -> tuple[list[int], str,
                                                                             float]:
    """Pad's per-axis (begin..., end...) amounts, mode and constant value."""
    if len(srcs) > 1:
        pads = _value(g, srcs[1]).reshape(-1).astype(np.int64).tolist()
        value = _value(g, _arg(srcs, 2))
        axes = _value(g, _arg(srcs, 3))
    else:  # opset < 11: attributes
        pads, value, axes = list(n.attr("pads")), n.attr("value", 0.0), None
    if axes is not None:
        full = [0] * (2 * rank)
        axes = [int(a) + rank if a < 0 else int(a) for a in axes.reshape(-1)]
        for k, a in enumerate(axes):
            full[a], full[rank + a] = pads[k], pads[len(axes) + k]
        pads = full
    value = 0.0 if value is None or np.asarray(value).size == 0 \
        else float(np.asarray(value).reshape(-1)[0])
    return [int(p) for p in pads], n.attr("mode", "constant"), value


def _pad(g, name, n, srcs) -> Node:
    """Pad as ``V_PAD`` of a 3-D view ``[outer, H, W]`` of the tensor: the two innermost
    axes; or one axis (H) with everything after it as W; or, for a constant pad, two
    neighbouring axes with everything after them folded into W (NHWC's H and W)."""
    shape = node(g, srcs[0]).shape
    rank = len(shape)
    pads, mode, value = pad_amounts(g, n, srcs, rank)
    if min(pads) < 0:
        raise NoForm("negative padding (a crop)")
    if mode not in PAD_MODES:
        raise NoForm(f"pad mode {mode}")
    axes = [a for a in range(rank) if pads[a] or pads[rank + a]]
    if not axes:  # a copy (exporters pad by zero where a window fits exactly)
        return _move(n, "Pad", 0, shape, strides_of(shape))
    if rank < 2:
        raise NoForm("padding of a vector")
    a = min(axes[0], rank - 2)  # the view's H axis; W is the next one with all after it
    if axes[-1] > a + 1:
        raise NoForm("padding of axes that are not neighbours")
    inner = _size(shape[a + 2:])
    if inner > 1 and a + 1 in axes and mode != "constant":
        raise NoForm(f"{mode} padding of an axis that is not innermost")
    h, w = shape[a], shape[a + 1] * inner
    top, bottom = pads[a], pads[rank + a]
    left, right = pads[a + 1] * inner, pads[rank + a + 1] * inner
    if mode == "reflect" and (max(top, bottom) >= h or max(left, right) >= w):
        raise NoForm("reflect padding wider than the input")
    attrs = make_attrs(outer=_size(shape[:a]), height=h, width=w,
                       pads=(top, left, bottom, right), mode=mode,
                       value=float(np.float32(value)), label="Pad")
    return Node(Op.NPU_PAD, n.shape, n.dtype, attrs, origin=n.origin, proto=n.proto)


FORMS = {Op.TRANSPOSE: _transpose, Op.SLICE: _slice, Op.EXPAND: _expand,
         Op.DEPTH_TO_SPACE: _depth_space, Op.SPACE_TO_DEPTH: _depth_space,
         Op.RESIZE: _resize, Op.UPSAMPLE: _resize, Op.PAD: _pad,
         **{op: _reduce for op in REDUCE}, **{op: _unary for op in UNARY}, Op.POW: _unary,
         Op.CLIP: _unary}


def _expand_operands(g: nx.DiGraph, name: str, n: Node) -> None:
    """An element-wise op whose operands broadcast in a way ``VV_ALU`` cannot read (both
    spread, or one spread over axes that are not one run, like a window mask over
    heads) gets each such operand copied to the full shape first (a stride-0 ``V_MOVE``)."""
    srcs = inputs_of(g, name)
    shapes = [node(g, s).shape for s in srcs]
    if len(srcs) != 2 or alu_form(*shapes, n.shape) is not None or -1 in n.shape \
            or any(node(g, s).dtype != "float32" for s in srcs) or n.dtype != "float32":
        return
    try:
        if tuple(np.broadcast_shapes(*shapes)) != tuple(n.shape):
            return
    except ValueError:
        return
    keep = 0 if tuple(shapes[0]) == tuple(n.shape) else 1 if tuple(shapes[1]) == n.shape \
        else None
    new = list(srcs)
    for k, s in enumerate(srcs):
        if k == keep or (keep is None and k == 1 and alu_form(n.shape, shapes[1], n.shape)):
            continue
        src = node(g, s)
        if src.op == Op.CONST:  # a constant is widened at compile time
            full = np.ascontiguousarray(np.broadcast_to(src.value, n.shape), np.float32)
            new[k] = add_const(g, f"{name}.expand{k}", full)
            continue
        padded = (1,) * (len(n.shape) - len(src.shape)) + tuple(src.shape)
        st = strides_of(padded)
        try:
            move = _move(Node(Op.EXPAND, n.shape, "float32", origin=n.origin), "Expand", 0,
                         n.shape, [0 if d == 1 and o != 1 else t
                                   for d, o, t in zip(padded, n.shape, st, strict=True)])
        except NoForm:
            return
        add_node(g, f"{name}.expand{k}", move, [s])
        new[k] = f"{name}.expand{k}"
    set_inputs(g, name, new)


def vector_forms(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """Give every op the vector unit can run its device form (see the module docstring)."""
    g = g.copy()
    for name in topo_order(g):
        n = node(g, name)
        if n.op in ALU_OPS and not n.attr("data_dependent"):
            _expand_operands(g, name, n)
        if n.op not in FORMS and n.op not in (Op.GATHER, Op.LAYERNORM, Op.INSTANCENORM):
            continue
        srcs = inputs_of(g, name)
        try:
            if any(node(g, s).dtype != "float32" for s in srcs[:1]) or n.dtype != "float32":
                raise NoForm("not float32 data")
            if n.attr("data_dependent") or -1 in n.shape:
                raise NoForm("shape depends on data")
            if 0 in n.shape or any(0 in node(g, s).shape for s in srcs[:1]):
                raise NoForm("an empty tensor")
            if n.op == Op.POW and node(g, srcs[1]).op != Op.CONST:
                continue  # both operands at run time: the ALU's pow (placement decides)
            if n.op == Op.GATHER:
                new, table = _gather(g, name, n, srcs)
                args = [srcs[0]] if table is None else [srcs[0], add_const(g, f"{name}.idx", table)]
            elif n.op in (Op.LAYERNORM, Op.INSTANCENORM):
                new, scale, bias = _norm(g, name, n, srcs)
                args = [srcs[0], add_const(g, f"{name}.scale", scale),
                        add_const(g, f"{name}.bias", bias)]
            else:
                new, args = FORMS[n.op](g, name, n, srcs), [srcs[0]]
        except NoForm as why:
            set_node(g, name, n.with_attrs(why_host=str(why)))
            continue
        rewire(g, name, new, args)
    remove_dead(g)
    return g
