# SPDX-License-Identifier: Apache-2.0
"""Graph passes. Each is a plain function ``(graph, options) -> graph`` on a copy.

The order they run in is listed once, in :mod:`npusim.compiler.pipeline`.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import onnx
from onnx import helper

from npusim.compiler.errors import CompileError
from npusim.compiler.interpret import conv_geometry, conv_weight_rows, evaluate_node
from npusim.compiler.ir import (
    Node,
    Op,
    add_node,
    consumers,
    inputs_of,
    make_attrs,
    node,
    remove_dead,
    replace_uses,
    set_inputs,
    set_node,
    topo_order,
)
from npusim.compiler.options import CompileOptions
from npusim.compiler.placement import is_identity, on_device
from npusim.simulator.host import HostOpError
from npusim.simulator.numerics import quantize

_ADD = helper.make_node("Add", ["a", "b"], ["y"]).SerializeToString()
_MUL = helper.make_node("Mul", ["a", "b"], ["y"]).SerializeToString()


def add_const(g: nx.DiGraph, name: str, value: np.ndarray) -> str:
    value = np.ascontiguousarray(value)
    add_node(g, name, Node(Op.CONST, tuple(value.shape), str(value.dtype), value=value))
    return name


def _is_const(g: nx.DiGraph, name: str) -> bool:
    return node(g, name).op == Op.CONST


def rewire(g: nx.DiGraph, name: str, new: Node, inputs: list[str]) -> None:
    """Give value ``name`` a new node and new inputs, keeping its consumers."""
    set_inputs(g, name, inputs)
    set_node(g, name, new)


def _sole_consumer(g: nx.DiGraph, name: str, user: str) -> bool:
    return consumers(g, name) == [user] and name not in g.graph["outputs"]


def fold_constants(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """Evaluate every node whose inputs are all constants (``ConstantOfShape`` weights too)."""
    g = g.copy()
    values: dict[str, np.ndarray] = {}
    for name in topo_order(g):
        n = node(g, name)
        if n.op == Op.CONST:
            values[name] = n.value
            continue
        srcs = inputs_of(g, name)
        if n.op == Op.OUTPUT or n.attr("outputs") or n.attr("data_dependent"):
            continue  # multi-output host ops were folded by the frontend if they could be
        if n.op == Op.ONNX and n.attr("onnx_op") in ("Shape", "Size") and srcs \
                and -1 not in node(g, srcs[0]).shape:
            value = _static_shape_value(n, node(g, srcs[0]).shape)  # shapes are all static
            rewire(g, name, Node(Op.CONST, tuple(value.shape), str(value.dtype), value=value,
                                  origin=n.origin), [])
            values[name] = value
            continue
        if n.op == Op.INPUT or not srcs or not all(_is_const(g, s) for s in srcs):
            continue
        try:
            value = np.asarray(evaluate_node(g, name, values, folding=True))
        except HostOpError as exc:  # constant operands onnxruntime refuses: a bad model
            raise CompileError(f"node '{n.origin[0] if n.origin else name}' cannot be "
                               f"folded: {exc}") from None
        values[name] = value
        rewire(g, name, Node(Op.CONST, tuple(value.shape), str(value.dtype), value=value,
                              origin=n.origin), [])
    remove_dead(g)
    return g


def _static_shape_value(n: Node, shape: tuple[int, ...]) -> np.ndarray:
    if n.attr("onnx_op") == "Size":
        return np.array(int(np.prod(shape, dtype=np.int64)), np.int64)
    start, end = n.attr("start", 0), n.attr("end", None)
    return np.array(shape[slice(start, end)], np.int64)


def remove_identities(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """Drop Identity, (inference-mode) Dropout and a Cast to the type its input already has,
    unless they name a graph output."""
    g = g.copy()
    for name in topo_order(g):
        n = node(g, name)
        noop_cast = n.op == Op.CAST and node(g, inputs_of(g, name)[0]).dtype == n.dtype
        read_by_subgraph = any(node(g, u).attr("implicit") for u in consumers(g, name))
        if (n.op in (Op.IDENTITY, Op.DROPOUT) or noop_cast) and name not in g.graph["outputs"] \
                and (noop_cast or is_identity(g, name)) and not read_by_subgraph:
            replace_uses(g, name, inputs_of(g, name)[0])
    remove_dead(g)
    return g


def _per_channel(g: nx.DiGraph, n: Node, srcs: list[str], channels: int
                 ) -> tuple[str, np.ndarray] | None:
    """``(x, k)`` when ``n`` (a Mul or Add) is ``x <op> k`` with ``k`` a finite float32
    constant, one value per channel (axis 1) or one in all, that leaves ``x``'s shape
    as it is."""
    if n.op not in (Op.MUL, Op.ADD) or len(srcs) != 2 or n.dtype != "float32":
        return None
    for x, c in (srcs, srcs[::-1]):
        if not _is_const(g, c) or _is_const(g, x) or node(g, x).shape != n.shape:
            continue
        k = node(g, c).value
        rank = len(n.shape)
        if k.dtype != np.float32 or k.ndim > rank or rank < 2 or not np.isfinite(k).all():
            return None
        aligned = (1,) * (rank - k.ndim) + tuple(k.shape)
        if k.size == 1 or (aligned[1] == channels == k.size):
            return x, np.broadcast_to(k.reshape(-1).astype(np.float64), (channels,))
        return None
    return None


def fold_scale_shift(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """Fold a per-channel constant Mul or Add into the BatchNormalization or the Conv
    (constant weights) that feeds it, as exporters write a BN's affine part (Caffe2's
    SpatialBN with a scale layer): ``bn(x) * m + a`` is a BN with scale ``scale * m`` and
    shift ``shift * m + a``; ``conv(x) * m + a`` a Conv with weights ``w * m`` and bias
    ``b * m + a`` (each rounded once to fp32, as BN folding does). A chain folds link by
    link, so the whole affine ends in one BN (then in its Conv) or one Conv."""
    g = g.copy()
    changed = True
    while changed:
        changed = False
        for name in topo_order(g):
            if name not in g:
                continue
            n = node(g, name)
            if n.op not in (Op.MUL, Op.ADD):
                continue
            srcs = inputs_of(g, name)
            src = next((s for s in srcs if not _is_const(g, s)), None)
            if src is None or not _sole_consumer(g, src, name):
                continue
            p = node(g, src)
            params = inputs_of(g, src)
            if p.op == Op.BATCHNORM and len(p.shape) >= 2 and len(params) == 5 \
                    and all(_is_const(g, q) for q in params[1:]):
                found = _per_channel(g, n, srcs, p.shape[1])
                if found is None:
                    continue
                k = found[1]
                scale, shift = (node(g, q).value.astype(np.float64) for q in params[1:3])
                if n.op == Op.MUL:
                    scale, shift = scale * k, shift * k
                else:
                    shift = shift + k
                new_params = [add_const(g, f"{name}.scale", scale.astype(np.float32)),
                              add_const(g, f"{name}.shift", shift.astype(np.float32)),
                              *params[3:]]
            elif p.op == Op.CONV and len(p.shape) == 4 and len(params) >= 2 \
                    and all(_is_const(g, q) for q in params[1:]):
                found = _per_channel(g, n, srcs, p.shape[1])
                if found is None:
                    continue
                k = found[1]
                w = node(g, params[1]).value.astype(np.float64)
                b = (node(g, params[2]).value.astype(np.float64) if len(params) > 2
                     else np.zeros(p.shape[1]))
                if n.op == Op.MUL:
                    w, b = w * k[:, None, None, None], b * k
                else:
                    b = b + k
                new_params = [add_const(g, f"{name}.weight", w.astype(np.float32)),
                              add_const(g, f"{name}.bias", b.astype(np.float32))]
            else:
                continue
            new = Node(p.op, n.shape, n.dtype, p.attrs, origin=p.origin + n.origin,
                       proto=p.proto)
            rewire(g, name, new, [params[0], *new_params])
            remove_dead(g)
            changed = True
    return g


def fold_batchnorm(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """Fold an inference BatchNormalization into the Conv that feeds it."""
    g = g.copy()
    for name in topo_order(g):
        bn = node(g, name)
        if bn.op != Op.BATCHNORM:
            continue
        src, *params = inputs_of(g, name)
        conv = node(g, src)
        conv_in = inputs_of(g, src)
        if conv.op != Op.CONV or not _sole_consumer(g, src, name) \
                or not all(_is_const(g, p) for p in params + conv_in[1:]):
            continue
        scale, shift, mean, var = (node(g, p).value.astype(np.float64) for p in params)
        k = scale / np.sqrt(var + bn.attr("epsilon", 1e-5))
        w = node(g, conv_in[1]).value.astype(np.float64)
        b = node(g, conv_in[2]).value.astype(np.float64) if len(conv_in) > 2 else 0.0
        wf = add_const(g, f"{name}.weight", (w * k[:, None, None, None]).astype(np.float32))
        bf = add_const(g, f"{name}.bias", ((b - mean) * k + shift).astype(np.float32))
        new = Node(Op.CONV, bn.shape, bn.dtype, conv.attrs, origin=conv.origin + bn.origin,
                   proto=conv.proto)
        rewire(g, name, new, [conv_in[0], wf, bf])
    remove_dead(g)
    return g


def canonicalize(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """Conv/Gemm/MatMul with constant weights -> NpuConv/NpuDense; Sum -> Adds.

    A BatchNormalization that no Conv absorbed becomes a per-channel Mul and Add.
    """
    g = g.copy()
    shared: dict = {}
    for name in topo_order(g):
        n = node(g, name)
        srcs = inputs_of(g, name)
        if n.attr("data_dependent") or 0 in n.shape \
                or any(0 in node(g, s).shape for s in srcs):
            continue  # runs on the host as it is (an empty tensor: onnxruntime's business)
        if n.op == Op.CONV and all(_is_const(g, s) for s in srcs[1:]) \
                and -1 not in node(g, srcs[0]).shape and len(node(g, srcs[0]).shape) == 4 \
                and node(g, srcs[1]).value.ndim == 4:
            w = node(g, srcs[1]).value
            geom = conv_geometry(n, node(g, srcs[0]).shape, w.shape[2:])
            x, pads, origin = _absorb_pad(g, srcs[0], name, geom.pads)
            bias = node(g, srcs[2]).value if len(srcs) > 2 else np.zeros(w.shape[0], np.float32)
            attrs = make_attrs(kernel=geom.kernel, strides=geom.strides, pads=pads,
                               dilations=geom.dilations, groups=geom.groups, relu=False,
                               input_dilation=(1, 1))
            wn = add_const(g, f"{name}.w", conv_weight_rows(w))
            bn = add_const(g, f"{name}.b", bias.astype(np.float32))
            rewire(g, name, Node(Op.NPU_CONV, n.shape, n.dtype, attrs, origin=origin + n.origin),
                   [x, wn, bn])
        elif n.op == Op.CONV_TRANSPOSE and all(_is_const(g, s) for s in srcs[1:]) \
                and n.dtype == "float32" and len(n.shape) == 4 and -1 not in n.shape:
            _conv_transpose(g, name, n, srcs)
        elif n.op in (Op.GEMM, Op.MATMUL) and _dense_form(g, n, srcs):
            _dense(g, name, n, srcs, shared)
        elif n.op == Op.MATMUL:
            _activation_matmul(g, name, n, srcs)  # leaves any other MatMul to the host
        elif n.op == Op.ONNX and n.attr("onnx_op") == "Einsum":
            from npusim.compiler.einsum import einsum_as_matmul

            einsum_as_matmul(g, name, n, srcs)
        elif n.op == Op.BATCHNORM and len(n.shape) >= 2 \
                and all(_is_const(g, s) for s in srcs[1:]):
            _batchnorm_as_scale_shift(g, name, n, srcs)
        elif n.op in (Op.SUM, Op.MAX, Op.MIN) and len(srcs) != 2:
            _split_sum(g, name, n, srcs)
        elif n.op == Op.SUM:
            rewire(g, name, Node(Op.ADD, n.shape, n.dtype, n.attrs, origin=n.origin,
                                 proto=_ADD), srcs)
    remove_dead(g)
    return g


def _dense_form(g: nx.DiGraph, n: Node, srcs: list[str]) -> bool:
    """Whether a Gemm/MatMul is ``x @ W + b`` with a constant 2-D W and a per-column b.

    Anything else (activation times activation, batched or 1-D weights, a full C,
    transposed A) stays as it is and runs on the host.
    """
    if len(srcs) < 2 or not _is_const(g, srcs[1]) or n.attr("transA", 0):
        return False
    b = node(g, srcs[1]).value
    if b.ndim != 2 or len(node(g, srcs[0]).shape) < 2 or -1 in node(g, srcs[0]).shape:
        return False
    if len(srcs) > 2:
        c = node(g, srcs[2]).value if _is_const(g, srcs[2]) else None
        cols = n.shape[-1]
        if c is None or c.ndim > 2 or not (c.size == 1 or c.shape[-1] == cols == c.size):
            return False
    return True


def _activation_matmul(g: nx.DiGraph, name: str, n: Node, srcs: list[str]) -> bool:
    """``a @ b`` of two fp32 activations (attention's Q.K^T, scores.V) as ``NpuMatMul``:
    batched over the leading axes, ``b`` shared by every batch or one per batch."""
    a, b = node(g, srcs[0]), node(g, srcs[1])
    if len(srcs) != 2 or a.dtype != "float32" or b.dtype != "float32" or len(a.shape) < 2 \
            or len(b.shape) < 2 or -1 in a.shape + b.shape + n.shape:
        return False
    a_lead, b_lead = tuple(a.shape[:-2]), tuple(b.shape[:-2])
    if len(b_lead) > len(a_lead):
        return False
    batch = int(np.prod(a_lead, dtype=np.int64))
    b_batch = int(np.prod(b_lead, dtype=np.int64))
    if b_batch != 1 and (1,) * (len(a_lead) - len(b_lead)) + b_lead != a_lead:
        return False
    m, k, cols = a.shape[-2], a.shape[-1], b.shape[-1]
    if b.shape[-2] != k or n.shape != tuple(a.shape[:-2]) + (m, cols):
        return False
    attrs = make_attrs(batch=batch, m=m, k=k, n=cols, b_shared=b_batch == 1 and batch > 1,
                       relu=False)
    rewire(g, name, Node(Op.NPU_MATMUL, n.shape, n.dtype, attrs, origin=n.origin,
                         proto=n.proto), srcs)
    return True


def _dense(g: nx.DiGraph, name: str, n: Node, srcs: list[str], shared: dict) -> None:
    """``x @ W + b`` as ``NpuDense``. Layers that read the same weight constant the same
    way (an unrolled RNN's steps, tied weights) share one weight tensor (``shared``: the
    canonical weights made so far), so the program holds and pins it once."""
    key = (srcs[1], bool(n.attr("transB", 0)), float(n.attr("alpha", 1.0)))
    wn = shared.get(key)
    if wn is None:
        b = node(g, srcs[1]).value
        w = (b if n.attr("transB", 0) else b.T) * np.float32(n.attr("alpha", 1.0))
        wn = shared[key] = add_const(g, f"{name}.w", np.ascontiguousarray(w, np.float32))
    bias = np.zeros(node(g, wn).shape[0], np.float32)
    if len(srcs) > 2:
        c = node(g, srcs[2]).value.reshape(-1).astype(np.float32)
        bias = bias + np.float32(n.attr("beta", 1.0)) * c
    bn = add_const(g, f"{name}.b", bias.astype(np.float32))
    rewire(g, name, Node(Op.NPU_DENSE, n.shape, n.dtype, make_attrs(relu=False),
                          origin=n.origin), [srcs[0], wn, bn])


def _batchnorm_as_scale_shift(g: nx.DiGraph, name: str, n: Node, srcs: list[str]) -> None:
    """A BatchNormalization no Conv absorbed: a per-channel multiply and add on the vector
    unit (Brainwave's vv_mul and vv_add), in fp32."""
    scale, shift, mean, var = (node(g, p).value.astype(np.float64) for p in srcs[1:])
    k = scale / np.sqrt(var + n.attr("epsilon", 1e-5))
    shape = (len(k),) + (1,) * (len(n.shape) - 2)
    kn = add_const(g, f"{name}.k", k.astype(np.float32).reshape(shape))
    bn = add_const(g, f"{name}.b", (shift - mean * k).astype(np.float32).reshape(shape))
    scaled = f"{name}.scaled"
    add_node(g, scaled, Node(Op.MUL, n.shape, n.dtype, origin=n.origin, proto=_MUL),
             [srcs[0], kn])
    rewire(g, name, Node(Op.ADD, n.shape, n.dtype, origin=n.origin, proto=_ADD), [scaled, bn])


def _split_sum(g: nx.DiGraph, name: str, n: Node, srcs: list[str]) -> None:
    """A variadic Sum, Max or Min as a chain of two-operand ones (broadcast as it goes)."""
    if len(srcs) == 1:
        rewire(g, name, Node(Op.IDENTITY, n.shape, n.dtype, origin=n.origin), srcs)
        return
    op = Op.ADD if n.op == Op.SUM else n.op
    proto = helper.make_node(op.value, ["a", "b"], ["y"]).SerializeToString()
    acc = srcs[0]
    for i, s in enumerate(srcs[1:-1]):
        part = f"{name}.partial{i}"
        shape = tuple(np.broadcast_shapes(node(g, acc).shape, node(g, s).shape))
        add_node(g, part, Node(op, shape, n.dtype, origin=n.origin, proto=proto), [acc, s])
        acc = part
    rewire(g, name, Node(op, n.shape, n.dtype, origin=n.origin, proto=proto), [acc, srcs[-1]])


def _absorb_pad(g: nx.DiGraph, x: str, conv: str,
                pads: tuple[int, ...]) -> tuple[str, tuple[int, ...], tuple[str, ...]]:
    """A zero Pad of the spatial axes in front of a Conv becomes the Conv's own padding
    (the matrix unit's address generator makes the zeros): ``(input, pads, origin)``."""
    from npusim.compiler.vector_forms import NoForm, pad_amounts

    p = node(g, x)
    srcs = inputs_of(g, x)
    if p.op != Op.PAD or not _sole_consumer(g, x, conv) or len(p.shape) != 4:
        return x, pads, ()
    try:
        amounts, mode, value = pad_amounts(g, p, srcs, 4)
    except NoForm:
        return x, pads, ()
    if mode != "constant" or value != 0.0 or any(amounts[a] or amounts[4 + a] for a in (0, 1)) \
            or min(amounts) < 0:
        return x, pads, ()
    add = (amounts[2], amounts[3], amounts[6], amounts[7])
    return srcs[0], tuple(a + b for a, b in zip(pads, add, strict=True)), p.origin


def _conv_transpose(g: nx.DiGraph, name: str, n: Node, srcs: list[str]) -> None:
    """ConvTranspose as a Conv of the input dilated by the stride (the matrix unit reads
    zeros between pixels): kernel flipped and transposed per group, padded by
    ``dilation * (k - 1) - pad`` each side (plus output_padding at the end)."""
    x = node(g, srcs[0])
    w = node(g, srcs[1]).value.astype(np.float32)
    if x.shape[-1] < 0 or w.ndim != 4 or n.attr("auto_pad", "NOTSET") not in ("NOTSET",) \
            and n.attr("output_shape") is None:
        return
    grp = int(n.attr("group", 1))
    k = w.shape[2:]
    s = tuple(n.attr("strides", (1, 1)))
    d = tuple(n.attr("dilations", (1, 1)))
    op = tuple(n.attr("output_padding", (0, 0)))
    pads = list(n.attr("pads", (0, 0, 0, 0)))
    if n.attr("output_shape") is not None:
        want = tuple(n.attr("output_shape"))[-2:]
        for i in range(2):
            total = s[i] * (x.shape[2 + i] - 1) + op[i] + (k[i] - 1) * d[i] + 1 - want[i]
            lo = total // 2 if n.attr("auto_pad", "NOTSET") == "SAME_UPPER" \
                else total - total // 2
            pads[i], pads[2 + i] = lo, total - lo
    conv_pads = tuple(d[i % 2] * (k[i % 2] - 1) - pads[i] + (op[i % 2] if i >= 2 else 0)
                      for i in range(4))
    if min(conv_pads) < 0 or max(conv_pads) > 255:
        set_node(g, name, n.with_attrs(why_host="padding beyond the kernel's reach (a crop)"))
        return
    cin_g, cout_g = w.shape[0] // grp, w.shape[1]
    wc = w.reshape(grp, cin_g, cout_g, *k).transpose(0, 2, 1, 3, 4)[..., ::-1, ::-1]
    wc = wc.reshape(grp * cout_g, cin_g, *k)
    bias = node(g, srcs[2]).value if len(srcs) > 2 else np.zeros(grp * cout_g, np.float32)
    attrs = make_attrs(kernel=tuple(k), strides=(1, 1), pads=conv_pads, dilations=d,
                       groups=grp, relu=False, input_dilation=s)
    wn = add_const(g, f"{name}.w", conv_weight_rows(np.ascontiguousarray(wc)))
    bn = add_const(g, f"{name}.b", bias.astype(np.float32))
    rewire(g, name, Node(Op.NPU_CONV, n.shape, n.dtype, attrs, origin=n.origin),
           [srcs[0], wn, bn])


def fuse_residual(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """Add(matrix-op, x) -> the matrix op with ``x`` as its residual input (the epilogue adds)."""
    g = g.copy()
    for name in topo_order(g):
        n = node(g, name)
        if n.op != Op.ADD or n.attr("relu"):
            continue
        srcs = inputs_of(g, name)
        for i in (0, 1):
            src, other = srcs[i], srcs[1 - i]
            p = node(g, src)
            if p.op in (Op.NPU_CONV, Op.NPU_DENSE) and not p.attr("relu") \
                    and len(inputs_of(g, src)) == 3 and _sole_consumer(g, src, name) \
                    and node(g, other).shape == n.shape == p.shape and src != other:
                new = Node(p.op, n.shape, n.dtype, p.attrs, origin=p.origin + n.origin)
                rewire(g, name, new, inputs_of(g, src) + [other])
                g.remove_node(src)
                break
    return g


def fuse_relu(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """Relu after a matrix op or an add becomes that op's epilogue, and so does a Clip
    (ReLU6 and the like) after a matrix op."""
    g = g.copy()
    for name in topo_order(g):
        n = node(g, name)
        if n.op == Op.NPU_UNARY and n.attr("fn") == "clip":
            _fuse_clip(g, name, n)
            continue
        if n.op != Op.RELU:
            continue
        src = inputs_of(g, name)[0]
        p = node(g, src)
        if p.op in (Op.NPU_CONV, Op.NPU_DENSE, Op.ADD) and not p.attr("relu") \
                and _sole_consumer(g, src, name) and on_device(g, src) \
                and (p.op != Op.ADD or all(node(g, s).shape == p.shape
                                           for s in inputs_of(g, src))):
            new = p.with_attrs(relu=True)
            new = Node(new.op, n.shape, n.dtype, new.attrs, origin=p.origin + n.origin)
            rewire(g, name, new, inputs_of(g, src))
            g.remove_node(src)
    return g


def _fuse_clip(g: nx.DiGraph, name: str, n: Node) -> None:
    src = inputs_of(g, name)[0]
    p = node(g, src)
    if p.op in (Op.NPU_CONV, Op.NPU_DENSE) and p.attr("clip") is None \
            and _sole_consumer(g, src, name) and on_device(g, src) and on_device(g, name):
        new = p.with_attrs(clip=(float(n.attr("alpha")), float(n.attr("beta"))))
        new = Node(new.op, n.shape, n.dtype, new.attrs, origin=p.origin + n.origin)
        rewire(g, name, new, inputs_of(g, src))
        g.remove_node(src)


def keep_host_work_together(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """A vector or layout op between host ops runs on the host too.

    Its data is on the host already and goes back there: on the device it would cost
    two host-link transfers (and split one host call into two) to save the host a few
    element-wise operations. Matrix-unit work always stays on the device.
    """
    g = g.copy()
    changed = True
    while changed:
        changed = False
        for name in topo_order(g):
            n = node(g, name)
            srcs = [s for s in inputs_of(g, name) if not _is_const(g, s)]
            users = consumers(g, name)
            if n.op in (Op.NPU_CONV, Op.NPU_DENSE, Op.NPU_MATMUL) or n.attr("relu") \
                    or not on_device(g, name) \
                    or not srcs \
                    or not users or n.proto is None or not _same_operands(g, name, n):
                continue
            if all(not on_device(g, s) and node(g, s).op != Op.INPUT for s in srcs) \
                    and all(not on_device(g, u) for u in users):
                set_node(g, name, n.with_attrs(host_pin="between host ops: kept on the host "
                                                         "to save two host-link transfers"))
                changed = True
    return g


def _same_operands(g: nx.DiGraph, name: str, n: Node) -> bool:
    """Whether the IR node still reads what its ONNX node reads (so the host can run it)."""
    proto = onnx.NodeProto()
    proto.ParseFromString(n.proto)
    return sum(bool(i) for i in proto.input) == len(inputs_of(g, name))


def quantize_weights(g: nx.DiGraph, opts: CompileOptions) -> nx.DiGraph:
    """Quantize every matrix-unit weight with the golden quantizer, to its layer's format
    (``opts.layer_formats``, else the target's). A layer whose format is not the target's
    is marked with it (``format``), so that an fp32 layer of a block-format program is
    known as one; a quantized layer's format is its weights'."""
    g = g.copy()
    unused = set(dict(opts.layer_formats))
    for name in topo_order(g):
        n = node(g, name)
        if n.op not in (Op.NPU_CONV, Op.NPU_DENSE):
            continue
        fmt = opts.layer_format(n.origin)
        unused -= set(n.origin)
        if fmt != opts.format:
            set_node(g, name, n.with_attrs(format=fmt.name))
        wname = inputs_of(g, name)[1]
        w = node(g, wname)
        if isinstance(w.value, np.ndarray) and not fmt.is_fp32:
            q = quantize(w.value.astype(np.float32), fmt, opts.rounding, opts.seed)
            set_node(g, wname, Node(Op.CONST, w.shape, fmt.name, value=q, origin=w.origin))
    if unused:
        layers = sorted({o for v in g if node(g, v).op in (Op.NPU_CONV, Op.NPU_DENSE)
                         for o in node(g, v).origin[:1]})
        raise CompileError(f"--layer-format: no matrix-unit layer named "
                           f"{', '.join(map(repr, sorted(unused)))}; the layers are "
                           f"{', '.join(layers[:20])}{' ...' if len(layers) > 20 else ''}")
    return g
