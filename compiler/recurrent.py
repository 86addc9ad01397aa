# SPDX-License-Identifier: Apache-2.0
"""ONNX LSTM, GRU and RNN unrolled into the ops the device runs, the way Brainwave runs
them: per time step, the gate products on the matrix unit, then a chain of vector ops.

The input products of every time step do not depend on the recurrence, so they are one
``Gemm`` over all ``T x batch`` rows (the input weights and both biases folded in; for a
matrix-vector unit, one ``Gemm`` per step); each step then multiplies the previous
hidden state by the recurrent weights (one more ``Gemm``), adds the two, slices out the
gates and runs their element-wise arithmetic.
Both weight matrices are constants, so the compiler pins them like any layer's weights;
step ``t + 1``'s product reads step ``t``'s hidden state, so the timing model serializes
the recurrence by itself. The rounding order of every step is the order of these ONNX
ops, which the golden model and the simulator both follow; in fp32 the result matches
onnxruntime's to rounding.

Supported: every direction (forward, reverse, bidirectional), every output
(``Y``, ``Y_h``, ``Y_c``), initial states, peepholes, ``clip``, ``input_forget``, both
layouts, GRU's ``linear_before_reset``, and the activations with an ONNX op of their
own (plus ``ScaledTanh`` and ``Affine``). A node whose weights are not constants, whose
``sequence_lens`` is not the full length for every sequence, or whose shapes are not
static is left as it is (the host runs it).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"),
                       "RNN": ("Tanh",)}
_ALPHA = {"LeakyRelu": 0.01, "ThresholdedRelu": 1.0, "ScaledTanh": 1.0, "HardSigmoid": 0.2,
          "Elu": 1.0, "Affine": 1.0}
_BETA = {"ScaledTanh": 1.0, "HardSigmoid": 0.5, "Affine": 0.0}
_PLAIN = {"Sigmoid", "Tanh", "Relu", "Softsign", "Softplus"}


class _Unsupported(Exception):
    """This node keeps its ONNX form."""


def _static(types: dict, name: str) -> tuple[int, ...]:
    t = types.get(name)
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        raise _Unsupported
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                 for d in t.tensor_type.shape.dim)
    if any(d < 0 for d in dims):
        raise _Unsupported
    return dims


class _Builder:
    """Emits the nodes and initializers of one unrolled node, under unique names."""

    def __init__(self, prefix: str, taken: set[str], opset: int) -> None:
        self.prefix, self.taken, self.opset = prefix, taken, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._suffix: dict[str, int] = {}  # the next suffix to try for a name
        self._small: dict[tuple, str] = {}  # small constants (bounds, shapes, scalars)

    def name(self, hint: str) -> str:
        base = f"{self.prefix}/{hint}"
        name, k = base, self._suffix.get(base, 1)
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self._suffix[base] = k
        self.taken.add(name)
        return name

    def const(self, hint: str, value) -> str:
        """An initializer; a small one (a slice bound, a shape, a scalar) made once."""
        arr = np.array(value)
        key = (arr.dtype.str, arr.shape, arr.tobytes()) if arr.size <= 8 else None
        if key in self._small:
            return self._small[key]
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._small[key] = name
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, out: str | None = None,
           **attrs) -> str:
        out = out or self.name(hint)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.name(hint + "_op"),
                                           **attrs))
        return out

    def rows(self, x: str, start: int, stop: int, axis: int, hint: str) -> str:
        """``x[start:stop]`` along ``axis`` (Slice takes its bounds as inputs from opset 10)."""
        if self.opset < 10:
            return self.op("Slice", [x], hint, starts=[start], ends=[stop], axes=[axis])
        return self.op("Slice", [x, self.const("starts", np.array([start], np.int64)),
                                 self.const("ends", np.array([stop], np.int64)),
                                 self.const("axes", np.array([axis], np.int64))], hint)

    def unsqueeze(self, x: str, axes: list[int], hint: str) -> str:
        if self.opset < 13:
            return self.op("Unsqueeze", [x], hint, axes=axes)
        return self.op("Unsqueeze", [x, self.const("axes", np.array(axes, np.int64))], hint)

    def clip(self, x: str, bound: float, hint: str) -> str:
        if self.opset < 11:
            return self.op("Clip", [x], hint, min=-bound, max=bound)
        return self.op("Clip", [x, self.const("lo", np.array(-bound, np.float32)),
                                self.const("hi", np.array(bound, np.float32))], hint)


class _Activations:
    """The node's activation functions in order, with their alpha and beta, as ORT reads
    ``activations``/``activation_alpha``/``activation_beta`` (each function takes the
    next alpha and beta if it has such a parameter, else its ONNX default)."""

    def __init__(self, names: list[str], alphas: list[float], betas: list[float]) -> None:
        self.funcs: list[tuple[str, float, float]] = []
        a, b = list(alphas), list(betas)
        for raw in names:
            name = next((k for k in (*_PLAIN, *_ALPHA) if k.lower() == raw.lower()), None)
            if name is None:
                raise _Unsupported
            alpha = (a.pop(0) if a else _ALPHA[name]) if name in _ALPHA else 0.0
            beta = (b.pop(0) if b else _BETA[name]) if name in _BETA else 0.0
            self.funcs.append((name, alpha, beta))

    def apply(self, bld: _Builder, k: int, x: str, clip: float | None, hint: str) -> str:
        name, alpha, beta = self.funcs[k]
        if clip is not None:
            x = bld.clip(x, clip, hint + "_clip")
        if name in _PLAIN:
            return bld.op(name, [x], hint)
        if name in ("LeakyRelu", "ThresholdedRelu", "Elu"):
            return bld.op(name, [x], hint, alpha=alpha)
        if name == "HardSigmoid":
            return bld.op(name, [x], hint, alpha=alpha, beta=beta)
        if name == "ScaledTanh":  # alpha * tanh(beta * x)
            t = bld.op("Tanh", [bld.op("Mul", [x, bld.const("beta", np.float32(beta))], hint)],
                       hint)
            return bld.op("Mul", [t, bld.const("alpha", np.float32(alpha))], hint)
        # Affine: alpha * x + beta
        y = bld.op("Mul", [x, bld.const("alpha", np.float32(alpha))], hint)
        return bld.op("Add", [y, bld.const("beta", np.float32(beta))], hint)


def _unroll(n: onnx.NodeProto, consts: dict[str, np.ndarray], types: dict,
            bld: _Builder, wanted: set[str], per_step: bool) -> tuple[int, int]:
    """Emit ``n``'s steps into ``bld``; return (time steps, directions)."""
    op = n.op_type
    gates = GATES[op]
    attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
    inputs = list(n.input) + [""] * (8 - len(n.input))
    x_name, w_name, r_name, b_name, lens_name, h0_name = inputs[:6]
    layout = int(attrs.get("layout", 0))
    xs = _static(types, x_name)
    if len(xs) != 3:
        raise _Unsupported
    steps, batch, _ = (xs[1], xs[0], xs[2]) if layout else xs
    ws, rs = _static(types, w_name), _static(types, r_name)
    if len(ws) != 3 or len(rs) != 3:
        raise _Unsupported
    dirs, hidden = ws[0], rs[2]
    if lens_name:
        lens = consts.get(lens_name)
        if lens is None or lens.shape != (batch,) or np.any(lens != steps):
            raise _Unsupported
    direction = attrs.get("direction", b"forward")
    direction = direction.decode() if isinstance(direction, bytes) else direction
    if direction not in ("forward", "reverse", "bidirectional") or \
            dirs != (2 if direction == "bidirectional" else 1):
        raise _Unsupported
    names = [s.decode() if isinstance(s, bytes) else s for s in attrs.get("activations", [])]
    per_dir = len(DEFAULT_ACTIVATIONS[op])
    names = names or list(DEFAULT_ACTIVATIONS[op]) * dirs
    if len(names) != per_dir * dirs:
        raise _Unsupported
    acts = _Activations(names, list(attrs.get("activation_alpha", [])),
                        list(attrs.get("activation_beta", [])))
    clip = float(attrs["clip"]) if "clip" in attrs else None
    lbr = int(attrs.get("linear_before_reset", 0))
    coupled = int(attrs.get("input_forget", 0))
    extra = {}  # initial states and peepholes: constants, or graph values
    for k, key in ((5, "h0"), (6, "c0"), (7, "p")):
        if inputs[k]:
            extra[key] = inputs[k]

    x = x_name
    if layout:  # [batch, T, I] -> [T, batch, I]
        x = bld.op("Transpose", [x], "x_tbi", perm=[1, 0, 2])
    x2 = bld.op("Reshape", [x, bld.const("rows", np.array([steps * batch, -1], np.int64))],
                "x_rows")
    ys, last_h, last_c = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        tag = f"d{d}"
        gh = gates * hidden

        def part(src, rows, shape, hint, d=d):  # src[d] (rows of it), as a 2D or 1D value
            v = bld.op("Reshape", [bld.rows(src, d, d + 1, 0, hint),
                                   bld.const("shape", np.array(shape, np.int64))], hint)
            return bld.rows(v, *rows, 0, hint) if rows else v

        w_d = part(w_name, None, [gh, -1], f"W_{tag}")
        r_d = part(r_name, None, [gh, hidden], f"R_{tag}")
        if b_name:
            b = part(b_name, None, [2 * gh], f"b_{tag}")
        zero = bld.const(f"nobias_{tag}", np.zeros(hidden, np.float32))
        # one weight matrix per gate, as Brainwave keeps them: x W_g for every step at once
        # (rows t*batch... of xw[g] are step t's), h R_g + Rb_g per step
        xw, rec, rbias = [], [], []
        for g in range(gates):
            def bias(k, g=g, tag=tag):  # Wb_g (k = 0) or Rb_g (k = 1)
                if not b_name:
                    return zero
                return bld.rows(b, (k * gates + g) * hidden, (k * gates + g + 1) * hidden, 0,
                                f"{'wr'[k]}b{g}_{tag}")
            # the input product takes both biases, except where ONNX adds Rb_g inside the
            # reset (GRU's h gate, either form) or after the recurrent product (GRU with
            # linear_before_reset, every gate)
            own = op == "GRU" and (lbr or g == 2)
            in_bias = bias(0) if own else (bld.op("Add", [bias(0), bias(1)], f"bias{g}_{tag}")
                                           if b_name else zero)
            w_g = bld.rows(w_d, g * hidden, (g + 1) * hidden, 0, f"W{g}_{tag}")
            xw.append((w_g, in_bias) if per_step else
                      bld.op("Gemm", [x2, w_g, in_bias], f"xw{g}_{tag}", transB=1))
            rec.append(bld.rows(r_d, g * hidden, (g + 1) * hidden, 0, f"R{g}_{tag}"))
            rbias.append(bias(1) if own else zero)

        def state(key, tag=tag, d=d):
            if key in extra:
                return bld.rows(extra[key], d, d + 1, 0, f"{key}_{tag}_3d")
            return None

        h = state("h0")
        h = (bld.op("Reshape", [h, bld.const("bh", np.array([batch, hidden], np.int64))],
                    f"h0_{tag}") if h else bld.const(f"h0_{tag}", np.zeros((batch, hidden),
                                                                           np.float32)))
        c = None
        if op == "LSTM":
            c = state("c0")
            c = (bld.op("Reshape", [c, bld.const("bc", np.array([batch, hidden], np.int64))],
                        f"c0_{tag}") if c else
                 bld.const(f"c0_{tag}", np.zeros((batch, hidden), np.float32)))
        peep = None
        if op == "LSTM" and "p" in extra:
            p = bld.op("Reshape", [bld.rows(extra["p"], d, d + 1, 0, f"p_{tag}"),
                                   bld.const("p3", np.array([3, hidden], np.int64))],
                       f"p_{tag}_rows")
            peep = [bld.rows(p, k, k + 1, 0, f"p{k}_{tag}") for k in range(3)]  # i, o, f
        f0 = d * per_dir
        out_h: list[str | None] = [None] * steps
        for step in range(steps):
            t = steps - 1 - step if reverse else step
            s = f"{tag}_t{t}"
            if per_step:  # x_t W_g: rows t*batch... of x, read in place
                x_t = bld.rows(x2, t * batch, (t + 1) * batch, 0, f"x_{s}")
                xw_t = [bld.op("Gemm", [x_t, w_g, b_g], f"xw{g}_{s}", transB=1)
                        for g, (w_g, b_g) in enumerate(xw)]
            else:
                xw_t = [bld.rows(v, t * batch, (t + 1) * batch, 0, f"xw{g}_{s}")
                        for g, v in enumerate(xw)]

            def product(g, v, s=s):  # v R_g^T + Rb_g on the matrix unit
                return bld.op("Gemm", [v, rec[g], rbias[g]], f"hr{g}_{s}", transB=1)

            if op == "GRU":
                h = _gru_step(bld, acts, f0, clip, lbr, xw_t, h, product, s)
            else:
                pre = [bld.op("Add", [product(g, h), xw_t[g]], f"pre{g}_{s}")
                       for g in range(gates)]
                if op == "RNN":
                    h = acts.apply(bld, f0, pre[0], clip, f"h_{s}")
                else:
                    h, c = _lstm_step(bld, acts, f0, clip, coupled, pre, c, peep, s)
            out_h[t] = h
        ys.append(out_h)
        last_h.append(h)
        last_c.append(c)

    y_name, yh_name, yc_name = (list(n.output) + ["", "", ""])[:3]
    if y_name and y_name in wanted:
        per_dir_y = [bld.op("Concat", [bld.unsqueeze(hs, [0, 1], "y_step") for hs in out],
                            "y_dir", axis=0) for out in ys]
        y = per_dir_y[0] if dirs == 1 else bld.op("Concat", per_dir_y, "y", axis=1)
        if layout:  # [T, dirs, batch, H] -> [batch, T, dirs, H]
            bld.op("Transpose", [y], "y", out=y_name, perm=[2, 0, 1, 3])
        else:
            bld.op("Identity", [y], "y", out=y_name)
    for out_name, last in ((yh_name, last_h), (yc_name, last_c)):
        if not out_name or out_name not in wanted:
            continue
        per = [bld.unsqueeze(v, [0], "last") for v in last]
        v = per[0] if dirs == 1 else bld.op("Concat", per, "last", axis=0)
        if layout:  # [dirs, batch, H] -> [batch, dirs, H]
            bld.op("Transpose", [v], "last", out=out_name, perm=[1, 0, 2])
        else:
            bld.op("Identity", [v], "last", out=out_name)
    return steps, dirs


def _lstm_step(bld, acts, f0, clip, coupled, pre, c_prev, peep, s):
    """ONNX LSTM: gates i, o, f, c in that order of W; C = f * C' + i * g(c);
    H = o * h(C); peepholes add P * C' to i and f, and P * C to o."""
    gi, go, gf, gc = pre
    if peep:
        gi = bld.op("Add", [gi, bld.op("Mul", [peep[0], c_prev], f"pi_{s}")], f"gi_{s}")
        gf = bld.op("Add", [gf, bld.op("Mul", [peep[2], c_prev], f"pf_{s}")], f"gf_{s}")
    i = acts.apply(bld, f0, gi, clip, f"i_{s}")
    if coupled:
        f = bld.op("Sub", [bld.const("one", np.float32(1.0)), i], f"f_{s}")
    else:
        f = acts.apply(bld, f0, gf, clip, f"f_{s}")
    g = acts.apply(bld, f0 + 1, gc, clip, f"g_{s}")
    c = bld.op("Add", [bld.op("Mul", [f, c_prev], f"fc_{s}"),
                       bld.op("Mul", [i, g], f"ig_{s}")], f"c_{s}")
    if peep:
        go = bld.op("Add", [go, bld.op("Mul", [peep[1], c], f"po_{s}")], f"go_{s}")
    o = acts.apply(bld, f0, go, clip, f"o_{s}")
    h = bld.op("Mul", [o, acts.apply(bld, f0 + 2, c, None, f"hc_{s}")], f"h_{s}")
    return h, c


def _gru_step(bld, acts, f0, clip, lbr, xw_t, h_prev, product, s):
    """ONNX GRU: gates z, r, h in that order of W; H = (1 - z) * h~ + z * H'. With
    ``linear_before_reset`` h~ = g(x W_h + Wb_h + r * (H' R_h + Rb_h)), else
    h~ = g(x W_h + Wb_h + (r * H') R_h + Rb_h)."""
    z = acts.apply(bld, f0, bld.op("Add", [product(0, h_prev), xw_t[0]], f"gz_{s}"), clip,
                   f"z_{s}")
    r = acts.apply(bld, f0, bld.op("Add", [product(1, h_prev), xw_t[1]], f"gr_{s}"), clip,
                   f"r_{s}")
    if lbr:
        hh = bld.op("Mul", [r, product(2, h_prev)], f"rh_{s}")
    else:
        hh = product(2, bld.op("Mul", [r, h_prev], f"rh_{s}"))
    cand = acts.apply(bld, f0 + 1, bld.op("Add", [hh, xw_t[2]], f"gh_{s}"), clip, f"hc_{s}")
    keep = bld.op("Mul", [bld.op("Sub", [bld.const("one", np.float32(1.0)), z], f"nz_{s}"),
                          cand], f"a_{s}")
    return bld.op("Add", [keep, bld.op("Mul", [z, h_prev], f"b_{s}")], f"h_{s}")


def expand(proto: onnx.ModelProto, types: dict, per_step: bool = False
           ) -> tuple[onnx.ModelProto, dict[str, dict]] | None:
    """``proto`` with every LSTM, GRU and RNN of the main graph that the device can run
    unrolled (``types``: every value's type, as :func:`npusim.compiler.shapes.resolve_shapes`
    gives them), or None when there is none.

    ``per_step`` makes each step's input products its own, as a matrix-vector unit runs
    them: they then fill the matrix unit while the recurrence waits for the previous
    step's state, instead of running all at once before the first step. (The rows are
    independent, so the result is the same to the bit.) Either way the recurrent product
    comes first in each gate's sum, so that it takes the input product as its residual:
    the input product, free of the recurrence, is ready by then.

    Also returns, per unrolled node, the prefix of its new nodes' names: ``{prefix:
    {"node": its name, "op": "LSTM", "steps": T, "directions": 1 or 2}}`` (the
    placement report folds the steps back into one row).
    """
    g = proto.graph
    if not any(n.op_type in GATES and n.domain in ("", "ai.onnx") for n in g.node):
        return None
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    taken = {v for n in g.node for v in (*n.input, *n.output, n.name)} | set(consts) | {
        v.name for v in (*g.input, *g.output)}
    wanted = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 1)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    unrolled: dict[str, dict] = {}
    for n in g.node:
        if n.op_type in GATES and n.domain in ("", "ai.onnx"):
            label = n.name or n.output[0] or n.op_type
            prefix, k = f"{label}/unrolled", 1
            while prefix in unrolled or any(v.startswith(prefix + "/") for v in taken):
                prefix, k = f"{label}/unrolled{k}", k + 1
            bld = _Builder(prefix, taken, opset)
            try:
                steps, dirs = _unroll(n, consts, types, bld, wanted, per_step)
            except _Unsupported:
                nodes.append(n)
                continue
            nodes += bld.nodes
            inits += bld.inits
            unrolled[prefix] = {"node": label, "op": n.op_type, "steps": steps,
                                "directions": dirs}
        else:
            nodes.append(n)
    if not unrolled:
        return None
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    return out, unrolled
