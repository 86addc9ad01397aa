# SPDX-License-Identifier: Apache-2.0
"""Degenerate attributes and operands of the ops the device lowers, refused by name.

ONNX's own inference catches much (a zero stride, a mismatched Gemm), but not all: a
``group`` that does not divide the channels, weights of the wrong shape for it, a
bias of the wrong length, a pooling window larger than its padded input, a Gather
index out of range. Any of these would compile and then fail (or read the wrong
memory) at run time. :func:`check_node` runs on each ONNX node as the frontend
builds the IR, with its operands' shapes and constant values, and raises a one-line
:class:`CompileError` naming the node and the attribute or operand.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import numpy as np
import onnx
from onnx import numpy_helper

from npusim.compiler.errors import CompileError, shorten
from npusim.compiler.ir import NON_TENSOR, Node, Op
from npusim.compiler.model_check import attr_value

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")
RESIZE_MODES = ("nearest", "linear", "cubic", "bilinear")
COORDS = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
          "asymmetric", "tf_half_pixel_for_nn", "tf_crop_and_resize")
NEAREST = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
ASPECT = ("stretch", "not_larger", "not_smaller")
SMALL = 4096
MAX_WINDOW = 1 << 24
"""Largest kernel, stride, dilation or pad taken: onnxruntime's window arithmetic overflows
(and kills the process with SIGFPE) on values near 2**62."""
"""Initializers up to this many elements are decoded for the checks (indices, sizes...)."""


@dataclass(frozen=True)
class NodeView:
    """One ONNX node as the checks see it: operands by ONNX position (``None`` if left out)."""

    op: str
    label: str
    attrs: dict[str, Any]
    ins: list[Node | None]
    opset: int = 17

    def fail(self, what: str) -> NoReturn:
        raise CompileError(f"{self.op} node '{shorten(self.label)}': {what}")

    def shape(self, k: int) -> tuple[int, ...] | None:
        """Operand ``k``'s static shape, or ``None`` (left out, unknown, not a tensor)."""
        n = self.ins[k] if k < len(self.ins) else None
        if n is None or n.dtype == NON_TENSOR or any(d < 0 for d in n.shape):
            return None
        return tuple(n.shape)

    def value(self, k: int) -> np.ndarray | None:
        n = self.ins[k] if k < len(self.ins) else None
        if n is None or n.op != Op.CONST or not isinstance(n.value, np.ndarray):
            return None
        return n.value

    def int_values(self, k: int) -> list[int] | None:
        """Operand ``k``'s values if it is a constant of integers (sizes, axes, pads...)."""
        v = self.value(k)
        return None if v is None or v.dtype.kind not in "iu" else v.reshape(-1).tolist()

    def ints(self, name: str, count: int | None = None, low: int | None = None,
             default: tuple[int, ...] | None = None,
             high: int | None = None) -> tuple[int, ...] | None:
        """An ints attribute, checked to hold ``count`` values in ``[low, high]``."""
        got = self.attrs.get(name)
        if got is None:
            return default
        vals = tuple(int(x) for x in (got if isinstance(got, tuple) else (got,)))
        if count is not None and len(vals) != count:
            self.fail(f"attribute {name} has {len(vals)} values, expected {count}")
        if low is not None and any(x < low for x in vals):
            if isinstance(got, tuple):
                self.fail(f"attribute {name} is {list(vals)}: each must be at least {low}")
            self.fail(f"attribute {name} is {vals[0]}: it must be at least {low}")
        if high is not None and any(x > high for x in vals):
            self.fail(f"attribute {name} is {list(vals) if isinstance(got, tuple) else vals[0]}"
                      f": each must be at most {high}")
        return vals

    def axis(self, value: int, rank: int, what: str = "attribute axis",
             end: bool = False) -> int:
        """``value`` as a non-negative axis of a rank-``rank`` tensor (``end``: up to rank)."""
        top = rank + 1 if end else rank
        if not -rank <= value < top:
            self.fail(f"{what} is {value}, out of range for rank {rank}")
        return value + rank if value < 0 else value


def _window(c: NodeView, x: tuple[int, ...] | None, kernel: tuple[int, ...] | None,
            pool: bool) -> None:
    """strides, dilations, pads and auto_pad of a Conv or pooling window over ``x``."""
    spatial = len(kernel) if kernel is not None else (
        len(x) - 2 if x is not None and len(x) > 2 else None)
    if c.attrs.get("auto_pad", "NOTSET") not in AUTO_PADS:
        c.fail(f"attribute auto_pad is '{c.attrs['auto_pad']}', not one of {AUTO_PADS}")
    c.ints("strides", spatial, 1, high=MAX_WINDOW)
    dil = c.ints("dilations", spatial, 1, high=MAX_WINDOW)
    pads = c.ints("pads", None if spatial is None else 2 * spatial, 0, high=MAX_WINDOW)
    if kernel is None or spatial is None:
        return
    if any(k < 1 for k in kernel):
        c.fail(f"kernel {list(kernel)} has an empty axis")
    pads = pads or (0,) * 2 * spatial
    if pool and any(p >= k for p, k in zip(pads, kernel * 2, strict=True)):
        c.fail(f"attribute pads {list(pads)} must be smaller than the kernel {list(kernel)}")
    if x is None or c.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return
    if len(x) != spatial + 2:
        c.fail(f"input X has rank {len(x)}; a {spatial}-D window needs rank {spatial + 2}")
    dil = dil or (1,) * spatial
    for i in range(spatial):
        eff, room = (kernel[i] - 1) * dil[i] + 1, x[2 + i] + pads[i] + pads[spatial + i]
        if eff > room:
            c.fail(f"the window of {eff} (kernel_shape {list(kernel)}, dilations "
                   f"{list(dil)}) is larger than the padded input ({room}) on spatial axis {i}")


def _conv(c: NodeView) -> None:
    x, w, b = c.shape(0), c.shape(1), c.shape(2)
    group = c.ints("group", low=1, default=(1,))[0]
    if w is not None and (len(w) < 3 or 0 in w):
        c.fail(f"weight W is {list(w)}: expected [M, C/group, k...] with no empty axis")
    kernel = c.ints("kernel_shape", None if w is None else len(w) - 2, 1, high=MAX_WINDOW)
    if w is not None:
        if kernel is not None and kernel != w[2:]:
            c.fail(f"attribute kernel_shape {list(kernel)} does not match W {list(w)}")
        kernel = w[2:]
    _window(c, x, kernel, pool=False)
    if x is not None and w is not None:
        if len(x) != len(w):
            c.fail(f"input X has rank {len(x)} and W rank {len(w)}")
        if x[1] % group or w[0] % group:
            c.fail(f"attribute group {group} does not divide the {x[1]} input and {w[0]} "
                   "output channels")
        if w[1] * group != x[1]:
            c.fail(f"weight W is {list(w)}: {w[1]} channels per group times group {group} "
                   f"is not the input's {x[1]} channels")
    if b is not None and w is not None and b != (w[0],):
        c.fail(f"bias B is {list(b)}, expected [{w[0]}] (one per output channel)")


def _conv_transpose(c: NodeView) -> None:
    x, w, b = c.shape(0), c.shape(1), c.shape(2)
    group = c.ints("group", low=1, default=(1,))[0]
    if w is not None and (len(w) < 3 or 0 in w):
        c.fail(f"weight W is {list(w)}: expected [C, M/group, k...] with no empty axis")
    spatial = None if w is None else len(w) - 2
    kernel = c.ints("kernel_shape", spatial, 1, high=MAX_WINDOW)
    if w is not None and kernel is not None and kernel != w[2:]:
        c.fail(f"attribute kernel_shape {list(kernel)} does not match W {list(w)}")
    _window(c, None, None if w is None else w[2:], pool=False)
    c.ints("output_padding", spatial, 0)
    c.ints("output_shape", low=1)
    if x is not None and w is not None and (x[1] != w[0] or x[1] % group):
        c.fail(f"weight W is {list(w)}: its first axis must be the input's {x[1]} channels, "
               f"divisible by group {group}")
    if b is not None and w is not None and b != (w[1] * group,):
        c.fail(f"bias B is {list(b)}, expected [{w[1] * group}] (one per output channel)")


def _pool(c: NodeView) -> None:
    x = c.shape(0)
    if x is not None and len(x) < 3:
        c.fail(f"input X has rank {len(x)}: pooling needs [N, C, spatial...]")
    if c.op.startswith("Global"):
        return
    for flag in ("ceil_mode", "count_include_pad", "storage_order"):
        if c.attrs.get(flag, 0) not in (0, 1):
            c.fail(f"attribute {flag} is {c.attrs[flag]}: it must be 0 or 1")
    kernel = c.ints("kernel_shape", None if x is None else len(x) - 2, 1, high=MAX_WINDOW)
    if kernel is None:
        c.fail("attribute kernel_shape is missing")
    _window(c, x, kernel, pool=True)


def _gemm(c: NodeView) -> None:
    a, b, bias = c.shape(0), c.shape(1), c.shape(2)
    if a is None or b is None:
        return
    if not a or not b:
        c.fail(f"inputs {list(a)} and {list(b)} must not be scalars")
    if c.op == "MatMul":
        k_a, k_b = a[-1], (b[0] if len(b) == 1 else b[-2])
        if k_a != k_b:
            c.fail(f"inputs {list(a)} and {list(b)} do not multiply ({k_a} != {k_b})")
        try:
            np.broadcast_shapes(a[:-2], b[:-2])
        except ValueError:
            c.fail(f"the batch axes of {list(a)} and {list(b)} do not broadcast")
        return
    if len(a) != 2 or len(b) != 2:
        c.fail(f"inputs A {list(a)} and B {list(b)} must be matrices")
    m, k = a[::-1] if c.attrs.get("transA", 0) else a
    k2, n = b[::-1] if c.attrs.get("transB", 0) else b
    if k != k2:
        c.fail(f"A {list(a)} and B {list(b)} do not multiply (transA, transB give {k} != {k2})")
    if bias is not None:
        try:
            if np.broadcast_shapes(bias, (m, n)) != (m, n):
                raise ValueError
        except ValueError:
            c.fail(f"bias C {list(bias)} does not broadcast to the output [{m}, {n}]")


def _batchnorm(c: NodeView) -> None:
    x = c.shape(0)
    if x is None:
        return
    if len(x) < 2:
        c.fail(f"input X has rank {len(x)}: BatchNormalization needs [N, C, ...]")
    _per_channel(c, x, ("scale", "B", "mean", "var"))


def _per_channel(c: NodeView, x: tuple[int, ...], params: tuple[str, ...]) -> None:
    """Operands 1, 2, ... named ``params`` each hold one value per channel of ``x``."""
    for k, what in enumerate(params, start=1):
        s = c.shape(k)
        if s is not None and s != (x[1],):
            c.fail(f"{what} is {list(s)}, expected [{x[1]}] (one per channel)")


def _layernorm(c: NodeView) -> None:
    x = c.shape(0)
    if x is None:
        return
    axis = c.axis(c.attrs.get("axis", -1), len(x))
    for k, what in ((1, "Scale"), (2, "B")):
        s = c.shape(k)
        try:
            if s is not None and np.broadcast_shapes(s, x[axis:]) != x[axis:]:
                raise ValueError
        except ValueError:
            c.fail(f"{what} {list(s)} does not broadcast over the normalized axes "
                   f"{list(x[axis:])}")


def _instancenorm(c: NodeView) -> None:
    x = c.shape(0)
    if x is None:
        return
    if len(x) < 3:
        c.fail(f"input has rank {len(x)}: InstanceNormalization needs [N, C, spatial...]")
    _per_channel(c, x, ("scale", "B"))


def _axis_op(c: NodeView) -> None:
    """Softmax, LogSoftmax, Flatten, Concat, Gather, Split: the ``axis`` attribute."""
    x = c.shape(0)
    if x is None:
        return
    default = {"Softmax": -1, "LogSoftmax": -1, "Flatten": 1}.get(c.op, 0)
    axis = c.axis(c.attrs.get("axis", default), len(x), end=c.op == "Flatten")
    if c.op == "Concat":
        for k in range(1, len(c.ins)):
            s = c.shape(k)
            if s is not None and (len(s) != len(x) or any(
                    d != e for i, (d, e) in enumerate(zip(s, x, strict=True)) if i != axis)):
                c.fail(f"input {k} is {list(s)} and input 0 {list(x)}: they must agree "
                       f"except on axis {axis}")
    if c.op == "Gather":
        idx = c.value(1)
        if idx is not None and idx.size and idx.dtype.kind in "iu" and (
                idx.min() < -x[axis] or idx.max() >= x[axis]):
            c.fail(f"index {int(idx.max()) if idx.max() >= x[axis] else int(idx.min())} is "
                   f"out of range for axis {axis} of size {x[axis]}")
    if c.op == "Split" and c.attrs.get("num_outputs") is not None \
            and c.attrs["num_outputs"] < 1:
        c.fail(f"attribute num_outputs is {c.attrs['num_outputs']}: it must be positive")


def _transpose(c: NodeView) -> None:
    x, perm = c.shape(0), c.ints("perm")
    if x is not None and perm is not None and sorted(perm) != list(range(len(x))):
        c.fail(f"attribute perm {list(perm)} is not a permutation of the {len(x)} axes")


def _reduce(c: NodeView) -> None:
    x = c.shape(0)
    axes = c.int_values(1) if len(c.ins) > 1 else c.ints("axes")
    if x is None or not axes:
        return
    fixed = [c.axis(a, len(x), "axes") for a in axes]
    if len(set(fixed)) != len(fixed):
        c.fail(f"axes {list(axes)} name an axis twice")


def _slice(c: NodeView) -> None:
    x = c.shape(0)
    if len(c.ins) > 1:  # opset 10 on: inputs
        vals: list[list[int] | None] = []
        for k in range(1, 5):
            if k < len(c.ins) and c.ins[k] is not None:
                v = c.int_values(k)
                if v is None:
                    return  # computed at run time: the host checks
                vals.append(v)
            else:
                vals.append(None)
        starts, ends, axes, steps = vals
    else:
        starts, ends = c.ints("starts"), c.ints("ends")
        axes, steps = c.ints("axes"), None
    if starts is None or ends is None:
        c.fail("starts and ends are required")
    axes = list(range(len(starts))) if axes is None else list(axes)
    steps = [1] * len(starts) if steps is None else list(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        c.fail(f"starts, ends, axes and steps have {len(starts)}, {len(ends)}, {len(axes)} "
               f"and {len(steps)} values: they must match")
    if 0 in steps:
        c.fail(f"steps {steps} has a zero step")
    if x is not None:
        fixed = [c.axis(a, len(x), "axes") for a in axes]
        if len(set(fixed)) != len(fixed):
            c.fail(f"axes {axes} name an axis twice")


def _pad(c: NodeView) -> None:
    x = c.shape(0)
    mode = c.attrs.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        c.fail(f"attribute mode is '{mode}', not constant, reflect, edge or wrap")
    pads = c.ints("pads") if len(c.ins) < 2 else c.int_values(1)
    if x is None or pads is None:
        return
    axes = c.int_values(3)
    if axes is None and len(c.ins) > 3 and c.ins[3] is not None:
        return
    axes = list(range(len(x))) if axes is None else axes
    if len(pads) != 2 * len(axes):
        c.fail(f"pads has {len(pads)} values for {len(axes)} axes: it needs {2 * len(axes)}")
    for k, a in enumerate(axes):
        a = c.axis(a, len(x), "axes")
        lo, hi = pads[k], pads[len(axes) + k]
        if x[a] + lo + hi < 0:
            c.fail(f"pads {list(pads)} crop axis {a} of size {x[a]} below nothing")
        if mode == "reflect" and max(lo, hi) >= x[a] > 0:
            c.fail(f"reflect pads {list(pads)} are wider than axis {a} of size {x[a]}")


def _resize(c: NodeView) -> None:
    x = c.shape(0)
    for attr, default, allowed in (("mode", "nearest", RESIZE_MODES),
                                   ("coordinate_transformation_mode", "half_pixel", COORDS),
                                   ("nearest_mode", "round_prefer_floor", NEAREST),
                                   ("keep_aspect_ratio_policy", "stretch", ASPECT)):
        if c.attrs.get(attr, default) not in allowed:
            c.fail(f"attribute {attr} is '{c.attrs[attr]}', not one of {', '.join(allowed)}")
    k_scales, k_sizes = (1, None) if c.op == "Upsample" or c.opset < 11 else (2, 3)
    scales, sizes = c.value(k_scales), None if k_sizes is None else c.value(k_sizes)
    if scales is None and c.op == "Upsample":
        scales = c.attrs.get("scales")
        scales = None if scales is None else np.asarray(scales, np.float32)
    rank = len(x) if x is not None else None
    n_axes = len(c.attrs["axes"]) if c.attrs.get("axes") is not None else rank
    for what, vals in (("scales", scales), ("sizes", sizes)):
        if vals is None or vals.size == 0:
            continue
        if n_axes is not None and vals.size != n_axes:
            c.fail(f"{what} has {vals.size} values for {n_axes} axes")
        if not np.all(np.asarray(vals, np.float64) > 0):
            c.fail(f"{what} {vals.reshape(-1).tolist()} must all be positive")


def _reshape(c: NodeView) -> None:
    x, dims = c.shape(0), c.int_values(1)
    if dims is None:
        return
    allowzero = c.attrs.get("allowzero", 0)
    if sum(d == -1 for d in dims) > 1 or any(d < -1 for d in dims):
        c.fail(f"target shape {dims} may hold one -1 and no other negative size")
    if x is None:
        return
    if not allowzero:
        if any(d == 0 and i >= len(x) for i, d in enumerate(dims)):
            c.fail(f"target shape {dims} copies (0) an axis the input {list(x)} lacks")
        dims = [x[i] if d == 0 else d for i, d in enumerate(dims)]
    size, known = int(np.prod(x, dtype=np.int64)), int(np.prod([d for d in dims if d != -1],
                                                               dtype=np.int64))
    if (-1 not in dims and known != size) or (-1 in dims and (
            known == 0 and size or known and size % known)):
        c.fail(f"cannot reshape {list(x)} ({size} elements) to {dims}")


def _depth_space(c: NodeView) -> None:
    x = c.shape(0)
    b = c.ints("blocksize", low=1, default=(0,))[0]
    if b < 1:
        c.fail("attribute blocksize is required and must be positive")
    if x is None:
        return
    if len(x) != 4:
        c.fail(f"input has rank {len(x)}, expected 4")
    if c.op == "DepthToSpace" and x[1] % (b * b):
        c.fail(f"blocksize {b}: its square does not divide the {x[1]} channels")
    if c.op == "SpaceToDepth" and (x[2] % b or x[3] % b):
        c.fail(f"blocksize {b} does not divide the spatial size {list(x[2:])}")


def _einsum(c: NodeView) -> None:
    """Every index names one size across the operands. (ONNX's inference takes the first
    operand's size where onnxruntime broadcasts a 1, so the program would expect the wrong
    shape; and onnxruntime divides by zero on 0 against 1, killing the process.)"""
    eq = c.attrs.get("equation")
    if not isinstance(eq, str) or "..." in eq:
        return
    terms = eq.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, set[int]] = {}
    for k, term in enumerate(terms):
        s = c.shape(k)
        if s is None:
            continue
        if len(s) != len(term):
            c.fail(f"input {k} has rank {len(s)}; the equation gives it {len(term)} indices")
        for label, d in zip(term, s, strict=True):
            sizes.setdefault(label, set()).add(d)
    for label, ds in sizes.items():
        if len(ds) > 1:
            c.fail(f"index {label} has sizes {sorted(ds)} in the inputs")


CHECKS: dict[str, Callable[[NodeView], None]] = {
    "Conv": _conv, "ConvTranspose": _conv_transpose, "Gemm": _gemm, "MatMul": _gemm,
    "MaxPool": _pool, "AveragePool": _pool, "LpPool": _pool, "GlobalAveragePool": _pool,
    "GlobalMaxPool": _pool, "BatchNormalization": _batchnorm,
    "LayerNormalization": _layernorm, "InstanceNormalization": _instancenorm,
    "Softmax": _axis_op, "LogSoftmax": _axis_op, "Flatten": _axis_op, "Concat": _axis_op,
    "Gather": _axis_op, "Split": _axis_op, "Transpose": _transpose, "Slice": _slice,
    "Pad": _pad, "Resize": _resize, "Upsample": _resize, "Reshape": _reshape,
    "DepthToSpace": _depth_space, "SpaceToDepth": _depth_space, "Einsum": _einsum,
    **{f"Reduce{k}": _reduce for k in ("Mean", "Sum", "Max", "Min", "SumSquare", "L2", "L1",
                                       "Prod", "LogSum", "LogSumExp")},
}
"""ONNX op type -> its check (default domain only)."""


def check_onnx_nodes(proto: onnx.ModelProto,
                     shape_of: Callable[[str], tuple[int, ...] | None]) -> None:
    """:func:`check_node` on every node of ``proto`` with what is known before the IR
    exists: ``shape_of`` a value's static shape, small initializers' values. It tells why
    a model that inference could not type is broken."""
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    inits = {t.name: t for t in proto.graph.initializer}

    def operand(name: str) -> Node | None:
        if not name:
            return None
        t = inits.get(name)
        if t is not None and math.prod(t.dims) <= SMALL and t.data_type != t.STRING:
            value = numpy_helper.to_array(t)
            return Node(Op.CONST, tuple(value.shape), str(value.dtype), value=value)
        shape = tuple(t.dims) if t is not None else shape_of(name)
        return Node(Op.INPUT, (-1,) if shape is None else shape)

    for n in proto.graph.node:
        if n.domain in ("", "ai.onnx") and n.op_type in CHECKS:
            label = n.name or n.output[0]
            attrs = {a.name: attr_value(a, label) for a in n.attribute}
            check_node(n.op_type, label, attrs, [operand(i) for i in n.input], opset)


def check_before_folding(n: onnx.NodeProto, args: list[np.ndarray | None],
                         opset: int) -> None:
    """:func:`check_node` on a node about to be evaluated on constants ``args``: the
    reference evaluator trusts its attributes (a Concat axis of 2**31 would make it build
    a shape of two billion ones)."""
    if n.domain not in ("", "ai.onnx") or n.op_type not in CHECKS:
        return
    label = n.name or n.output[0]
    attrs = {a.name: attr_value(a, label) for a in n.attribute}
    ins = [None if a is None else Node(Op.CONST, tuple(a.shape), str(a.dtype), value=a)
           for a in args]
    check_node(n.op_type, label, attrs, ins, opset)


def check_node(op: str, label: str, attrs: dict[str, Any], ins: list[Node | None],
               opset: int) -> None:
    """Refuse a degenerate node of type ``op`` (see the module docstring)."""
    fn = CHECKS.get(op)
    if fn is not None:
        fn(NodeView(op, label, attrs, ins, opset))
