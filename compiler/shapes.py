# SPDX-License-Identifier: Apache-2.0
"""Every static shape, known by the compiler itself.

ONNX shape inference stops at shape arithmetic (``Shape -> Gather -> Concat ->
Reshape``, ``Shape -> Cast -> Slice``, ...), which every exporter emits. With the
input shapes fixed, that arithmetic is constant: :func:`resolve_shapes` folds it to
initializers and infers again, to a fixed point. What is left unknown after that
depends on tensor *values* (NonZero, NonMaxSuppression, a TopK whose k is computed,
a Reshape whose target is computed from data): :func:`data_dependent` names those
values, and the compiler places them on the host. A value whose shape is static
but which ONNX inference cannot type (some ``ai.onnx.ml`` ops) is measured once with
onnxruntime on inputs of the fixed shapes (:func:`_probe`).

The model is untrusted: a node that would make a negative size is refused before
ONNX's whole-graph inference sees it (:func:`guard_negative_dims`), the last inference
is strict (a node whose types or shapes disagree is refused by name, as onnxruntime
would refuse it), and a failure is explained by :mod:`npusim.compiler.node_checks` when it can
name the attribute or operand at fault.
"""

from __future__ import annotations

import math
import re

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from npusim.compiler.errors import CompileError, one_line
from npusim.compiler.model_check import MAX_ELEMENTS
from npusim.compiler.node_checks import check_before_folding, check_onnx_nodes

MAX_ROUNDS = 256
"""Fold-and-infer rounds before giving up on a fixed point. A chain can need two rounds
per block when each block's padding depends on the last block's shape (Swin's windows
at opset 11): a few dozen rounds for a deep transformer."""
PROBE_LIMIT = 1 << 24
"""Input elements up to which the compiler runs a model to measure a shape (:func:`_probe`)."""
FOLD_LIMIT = 1 << 24
"""Constant inputs larger than this (elements) are left to the IR's constant folding."""

VALUE_DEPENDENT = frozenset({
    "NonZero", "NonMaxSuppression", "Unique", "Compress", "Loop", "Scan", "If",
    "StringSplit", "RegexFullMatch", "Multinomial"})
"""Ops whose output shape depends on the values of their inputs, whatever they are."""
SHAPE_OPERANDS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,), "Expand": (1,), "Tile": (1,), "ConstantOfShape": (0,),
    "Range": (0, 1, 2), "Resize": (2, 3), "Upsample": (1,), "Slice": (1, 2, 3, 4),
    "Pad": (1, 3), "TopK": (1,), "OneHot": (1,), "Squeeze": (1,), "Unsqueeze": (1,),
    "Split": (1,), "ReduceMean": (1,), "ReduceSum": (1,), "ReduceMax": (1,),
    "ReduceMin": (1,), "ReduceProd": (1,), "ReduceL1": (1,), "ReduceL2": (1,),
    "ReduceLogSum": (1,), "ReduceLogSumExp": (1,), "ReduceSumSquare": (1,),
    "CenterCropPad": (1,), "RoiAlign": (2,), "MaxUnpool": (2,),
}
"""Ops with inputs that say what shape the output has: their values must be constants."""
RANDOM = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike",
                    "RandomUniformLike", "Bernoulli", "Multinomial"})


_NODE_ERROR = re.compile(r"\(op_type:([^,]*), node name: ([^)]*)\): (?:\[\w+\] )?(.*)")


def inference_message(exc: BaseException) -> str:
    """ONNX inference's first complaint on one line, naming its node first."""
    text = str(exc)
    hit = _NODE_ERROR.search(text)
    if hit is None:
        return one_line(text)
    op, name, why = hit.groups()
    who = f"{op} node '{name}'" if name else f"a {op} node"
    return f"{who}: {one_line(why)}"


def fix_inputs(proto: onnx.ModelProto, input_shapes: dict | None) -> None:
    """Give every model input a static shape: its own, or the one the user names."""
    inits = {t.name for t in proto.graph.initializer}
    given = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    names = [vi.name for vi in proto.graph.input if vi.name not in inits]
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise CompileError(f"--input-shape names '{unknown[0]}', which is not a model input "
                           f"(inputs: {', '.join(names)})")
    for vi in proto.graph.input:
        if vi.name in inits or vi.type.WhichOneof("value") != "tensor_type":
            continue
        t = vi.type.tensor_type
        want = given.get(vi.name)
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value >= 0 else 1
                for d in t.shape.dim] if t.HasField("shape") else [1]
        hint = (f"give its size with --input-shape {vi.name}={'x'.join(map(str, dims))} "
                "(input_shapes= in compile_model)")
        if want is None:
            if not t.HasField("shape"):
                raise CompileError(f"model input '{vi.name}' has no shape; {hint}")
            for i, d in enumerate(t.shape.dim):
                if d.HasField("dim_value") and d.dim_value < 0:
                    raise CompileError(f"model input '{vi.name}' has size {d.dim_value} in "
                                       f"dimension {i}: sizes cannot be negative")
                if not d.HasField("dim_value"):
                    raise CompileError(f"model input '{vi.name}' has a symbolic dimension "
                                       f"'{d.dim_param or '?'}'; {hint}")
            continue
        if any(d <= 0 for d in want):
            raise CompileError(f"input shape for '{vi.name}' must be positive: "
                               f"{'x'.join(map(str, want))}")
        if t.HasField("shape") and len(t.shape.dim) != len(want):
            raise CompileError(f"model input '{vi.name}' has rank {len(t.shape.dim)}; the "
                               f"shape given has rank {len(want)}")
        if t.HasField("shape"):
            for i, (d, w) in enumerate(zip(t.shape.dim, want, strict=True)):
                if d.HasField("dim_value") and d.dim_value >= 0 and d.dim_value != w:
                    raise CompileError(f"model input '{vi.name}' has size {d.dim_value} in "
                                       f"dimension {i}; the shape given says {w}")
        t.ClearField("shape")
        for w in want:
            t.shape.dim.add().dim_value = w
    for vi in proto.graph.input:
        dims = static_dims(vi.type)
        if vi.name not in inits and dims is not None and math.prod(dims) > MAX_ELEMENTS:
            raise CompileError(f"model input '{vi.name}' has shape {list(dims)}: more than "
                               f"the {MAX_ELEMENTS} elements npusim takes")


def _light_copy(proto: onnx.ModelProto) -> onnx.ModelProto:
    """The model without its large float initializers, for fast shape inference.

    Inference needs constant *values* only for small integer tensors; the weights
    become typed graph inputs, so their shapes still flow.
    """
    light = onnx.ModelProto()
    light.CopyFrom(proto)
    keep, moved = [], []
    for t in light.graph.initializer:
        n = math.prod(t.dims)
        if n > 64 and t.data_type not in (onnx.TensorProto.INT64, onnx.TensorProto.INT32):
            moved.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            keep.append(t)
    del light.graph.initializer[:]
    light.graph.initializer.extend(keep)
    names = {vi.name for vi in light.graph.input}
    light.graph.input.extend(vi for vi in moved if vi.name not in names)
    return light


def _dims_of(tp: onnx.TypeProto) -> list[int]:
    if tp.WhichOneof("value") != "tensor_type" or not tp.tensor_type.HasField("shape"):
        return []
    return [d.dim_value for d in tp.tensor_type.shape.dim if d.HasField("dim_value")]


def guard_negative_dims(proto: onnx.ModelProto) -> None:
    """Refuse, naming it, a node whose inferred output has a negative size.

    ONNX computes a negative size for a window larger than its input (Conv, pooling) or a
    negative resize scale, and its Slice inference then fails an assertion that aborts
    the whole process. So the graph is inferred here node by node first (cheap, no data
    propagation), and the first node to make a negative size is refused before the
    whole-graph inference (or onnxruntime) sees one.
    """
    g = proto.graph
    opsets = {("" if o.domain == "ai.onnx" else o.domain): o.version for o in proto.opset_import}
    types = {vi.name: vi.type for vi in g.input}
    data = {}
    for t in g.initializer:
        types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
        if math.prod(t.dims) <= 64:
            data[t.name] = t
    for n in g.node:
        try:
            schema = onnx.defs.get_schema(n.op_type, opsets.get(n.domain, 1), n.domain)
            outs = shape_inference.infer_node_outputs(
                schema, n, {i: types[i] for i in n.input if i in types},
                {i: data[i] for i in n.input if i in data})
        except Exception:  # no schema, or the node is broken: the full inference says so
            continue
        for name, tp in outs.items():
            dims = _dims_of(tp)
            if min(dims, default=0) < 0:
                _diagnose(proto, types)  # a bad attribute or operand is the likelier cause
                shape = [d.dim_value if d.HasField("dim_value") else "?"
                         for d in tp.tensor_type.shape.dim]
                raise CompileError(f"{n.op_type} node '{n.name or n.output[0]}' makes "
                                   f"'{name}' of shape {shape}: a negative size (a window "
                                   "larger than its input, a negative scale, ...)")
            types[name] = tp


def infer(proto: onnx.ModelProto, strict: bool = False) -> dict[str, onnx.TypeProto]:
    """Types of every value ONNX inference can type (graph inputs and outputs too).

    ``strict`` refuses a node whose types or shapes are inconsistent (as onnxruntime
    would when it loads the model), naming it.
    """
    light = _light_copy(proto)
    guard_negative_dims(light)
    try:
        inferred = shape_inference.infer_shapes(light, check_type=strict,
                                                strict_mode=strict, data_prop=True)
    except Exception as exc:  # onnx raises several types for bad models
        raise CompileError(f"invalid model: {inference_message(exc)}") from None
    g = inferred.graph
    # declared graph outputs first: what inference derived is at least as precise
    types = {vi.name: vi.type for vi in list(g.output) + list(g.input) + list(g.value_info)}
    for t in proto.graph.initializer:
        types[t.name] = helper.make_tensor_type_proto(t.data_type, list(t.dims))
    return types


def static_dims(tp: onnx.TypeProto | None) -> tuple[int, ...] | None:
    """The shape of a tensor type if every dimension is known, else ``None``."""
    if tp is None or tp.WhichOneof("value") != "tensor_type":
        return None
    t = tp.tensor_type
    if not t.HasField("shape") or any(not d.HasField("dim_value") or d.dim_value < 0
                                      for d in t.shape.dim):
        return None
    return tuple(d.dim_value for d in t.shape.dim)


def _evaluate(n: onnx.NodeProto, args: list, opsets) -> list[np.ndarray] | None:
    """Run one node on constants with onnx's reference evaluator, or ``None``."""
    from onnx.reference import ReferenceEvaluator

    names = [f"i{k}" if a is not None else "" for k, a in enumerate(args)]
    node = onnx.NodeProto()
    node.CopyFrom(n)
    del node.input[:]
    node.input.extend(names)
    outs = [f"o{k}" if o else "" for k, o in enumerate(n.output)]
    del node.output[:]
    node.output.extend(outs)
    inputs = [helper.make_tensor_value_info(nm, helper.np_dtype_to_tensor_dtype(a.dtype),
                                            list(a.shape))
              for nm, a in zip(names, args, strict=True) if a is not None]
    graph = helper.make_graph([node], "fold", inputs,
                              [helper.make_empty_tensor_value_info(o) for o in outs if o])
    model = helper.make_model(graph, opset_imports=opsets)
    try:
        with np.errstate(all="ignore"):
            got = ReferenceEvaluator(model).run(
                None, {nm: a for nm, a in zip(names, args, strict=True) if a is not None})
    except Exception:  # an op the reference evaluator lacks: leave it to later stages
        return None
    if any(not isinstance(v, np.ndarray) for v in got):
        return None
    return [np.asarray(v) for v in got]


GENERATORS = frozenset({"ConstantOfShape", "Range", "Tile", "Expand", "Resize", "Upsample",
                        "Pad", "OneHot", "CenterCropPad", "Col2Im"})
"""Ops whose output can be far larger than their inputs."""


def _small_enough(n: onnx.NodeProto, types: dict[str, onnx.TypeProto]) -> bool:
    """Whether folding ``n`` makes at most ``FOLD_LIMIT`` elements per output: a model must
    not make the compiler allocate what it says (a generator of unknown size is left)."""
    for o in n.output:
        dims = static_dims(types.get(o)) if o else ()
        if dims is None and n.op_type in GENERATORS:
            return False
        if dims is not None and math.prod(dims) > FOLD_LIMIT:
            return False
    return True


def _fold_round(proto: onnx.ModelProto, types: dict[str, onnx.TypeProto],
                folded_nodes: list[tuple[str, str]]) -> bool:
    """Fold, in one topological sweep, every node whose outputs are now constants."""
    g = proto.graph
    consts: dict[str, np.ndarray] = {}
    for t in g.initializer:
        if math.prod(t.dims) <= FOLD_LIMIT:
            consts[t.name] = t
    values: dict[str, np.ndarray] = {}

    def value(name: str) -> np.ndarray:
        if name not in values:
            values[name] = numpy_helper.to_array(consts[name])
        return values[name]

    opsets = list(proto.opset_import)
    opset = next((o.version for o in opsets if o.domain in ("", "ai.onnx")), 1)
    kept, folded = [], False
    for n in g.node:
        result = None
        if n.domain in ("", "ai.onnx") and n.op_type not in RANDOM \
                and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                            for a in n.attribute):
            if n.op_type in ("Shape", "Size") and n.input:
                dims = static_dims(types.get(n.input[0]))
                if dims is not None:
                    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
                    if n.op_type == "Size":
                        result = [np.array(int(np.prod(dims, dtype=np.int64)), np.int64)]
                    else:
                        result = [np.array(dims[slice(attrs.get("start", 0),
                                                      attrs.get("end"))], np.int64)]
            elif n.op_type == "Constant":
                result = _evaluate(n, [], opsets)
            elif n.input and all(not i or i in consts for i in n.input) \
                    and _small_enough(n, types):
                args = [value(i) if i else None for i in n.input]
                check_before_folding(n, args, opset)
                result = _evaluate(n, args, opsets)
        if result is None or len(result) != len([o for o in n.output if o]):
            kept.append(n)
            continue
        folded |= n.op_type != "Constant"
        folded_nodes.append((n.name or n.output[0], n.op_type))
        for name, arr in zip([o for o in n.output if o], result, strict=True):
            t = numpy_helper.from_array(np.asarray(arr).copy(order="C"), name)
            g.initializer.append(t)
            consts[name], values[name] = t, arr
    if folded or len(kept) != len(g.node):
        del g.node[:]
        g.node.extend(kept)
    return folded


def _diagnose(model: onnx.ModelProto, types: dict[str, onnx.TypeProto]) -> None:
    """Raise the node checks' precise reason for a failure, if they find one; a check that
    trips on the broken model itself leaves the failure's own reason standing."""
    try:
        check_onnx_nodes(model, lambda name: static_dims(types.get(name)))
    except CompileError:
        raise
    except Exception:  # the caller re-raises the original error
        pass


def resolve_shapes(proto: onnx.ModelProto,
                   input_shapes: dict | None = None) -> tuple[onnx.ModelProto,
                                                              dict[str, onnx.TypeProto],
                                                              list[tuple[str, str]]]:
    """Fix the input shapes, fold shape arithmetic and infer, to a fixed point.

    Returns the folded model, the type of every value it could type and the
    ``(name, op type)`` of every node folded away.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    fix_inputs(model, input_shapes)
    folded: list[tuple[str, str]] = []
    for _ in range(MAX_ROUNDS):
        types = infer(model)
        if not _fold_round(model, types, folded):
            break
    try:
        types = infer(model, strict=True)
    except CompileError:  # name the operand or attribute, for the ops the checks know
        _diagnose(model, infer(model))
        raise
    missing = [o for n in model.graph.node for o in n.output
               if o and static_dims(types.get(o)) is None]
    dynamic = data_dependent(model, types)
    unknown = [o for o in missing if o not in dynamic]
    if unknown:
        _diagnose(model, types)  # the probe runs the model: refuse a degenerate node first
        try:
            types.update(_probe(model, unknown, types))
        except CompileError:  # a degenerate node is the likely cause: name it if so
            _diagnose(model, types)
            raise
    return model, types, folded


def data_dependent(proto: onnx.ModelProto,
                   types: dict[str, onnx.TypeProto] | None = None) -> dict[str, str]:
    """Values whose shape depends on tensor values, each with the node that makes it so.

    A node whose shape operand is computed at run time but whose output shapes
    inference still knows (``types``) is not a source: its shape is static.
    """
    consts = {t.name for t in proto.graph.initializer}
    reason: dict[str, str] = {}
    for n in proto.graph.node:
        label = n.name or n.output[0]
        why = next((reason[i] for i in n.input if i in reason), None)
        if why is None and n.op_type in VALUE_DEPENDENT:
            why = f"{n.op_type} '{label}'"
        if why is None and n.op_type == "Constant":
            consts.update(o for o in n.output if o)
            continue
        known = types is not None and all(static_dims(types.get(o)) is not None
                                          for o in n.output if o)
        if why is None and not known:
            for k in SHAPE_OPERANDS.get(n.op_type, ()):
                if k < len(n.input) and n.input[k] and n.input[k] not in consts:
                    why = f"{n.op_type} '{label}' (its shape input is computed from data)"
                    break
        if why is not None:
            for o in n.output:
                if o:
                    reason[o] = why
    return reason


def seeded_inputs(model: onnx.ModelProto,
                  shapes: dict[str, tuple[int, ...]] | None = None) -> dict[str, np.ndarray]:
    """One seeded input per graph input, at its static shape or the one in ``shapes``:
    standard normal for floats, zeros otherwise."""
    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        shape = (shapes or {}).get(vi.name) or static_dims(vi.type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" \
            else np.zeros(shape, dtype)
    return feeds


def _probe(model: onnx.ModelProto, names: list[str],
           types: dict[str, onnx.TypeProto]) -> dict[str, onnx.TypeProto]:
    """Measure the shapes of ``names`` with one onnxruntime run on inputs of the fixed shapes.

    Only values whose shape cannot depend on data get here, so one run tells.
    """
    import onnxruntime as ort

    from npusim.simulator.host import ort_reason, quiet_run

    inits = {t.name for t in model.graph.initializer}
    size = sum(math.prod(static_dims(vi.type) or ()) for vi in model.graph.input
               if vi.name not in inits)
    if size > PROBE_LIMIT:
        raise CompileError(f"value '{names[0]}' has no known shape, and measuring it means "
                           f"running the model on {size} input elements (npusim does that "
                           f"for up to {PROBE_LIMIT})")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    for name in names:
        if name not in have:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
    feeds = seeded_inputs(model)
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # a failure is in the exception; no log on stderr
        sess = ort.InferenceSession(probe.SerializeToString(), opts,
                                    providers=["CPUExecutionProvider"])
        got = sess.run(names, feeds, quiet_run())
    except Exception as exc:  # onnxruntime's own exception types
        raise CompileError(f"value '{names[0]}' has no known shape and onnxruntime cannot "
                           f"run the model to measure it: {ort_reason(exc)}") from None
    out = {}
    for name, arr in zip(names, got, strict=True):
        if isinstance(arr, np.ndarray):
            out[name] = helper.make_tensor_type_proto(
                helper.np_dtype_to_tensor_dtype(arr.dtype), list(arr.shape))
        else:  # a sequence or map (e.g. ZipMap): the host keeps it
            out[name] = types.get(name, onnx.TypeProto())
    return out
