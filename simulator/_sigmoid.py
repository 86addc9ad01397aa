# SPDX-License-Identifier: Apache-2.0
"""The vector unit's sigmoid: numpy's float64 formula, rounded once to fp32, computed on
8-lane float64 vectors with an exp of its own, numpy's formula deciding the elements
whose rounding the two could disagree on; and a SiLU's sigmoid and product in one pass.
Compiled on first call (and cached on disk), never at import."""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from npusim.simulator import threads
from npusim.simulator._fast import out_like
from npusim.simulator.cpu import host_has

_DQ = host_has("avx512f", "avx512dq")  # vrangepd clamps the inputs in one instruction

_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # 32 significant bits: k * _LN2_HI is exact for |k| < 2**21
_LN2_LO = 1.9082149292705877e-10
_ROUND = 6755399441055744.0  # 1.5 * 2**52: x + _ROUND - _ROUND rounds x (|x| < 2**51)
_EXP_RANGE = 80.0  # |t| up to here: exp(t) and 1 / (1 + exp(t)) are normal float32 numbers
SIGMOID_MARGIN = 2.0**-42
"""Relative distance from a float32 rounding boundary inside which :func:`sigmoid` takes
numpy's formula: the kernel's float64 result lies within about 2**-48 of the exact value
(an exp within 2**-49, then two rounded operations) and numpy's within about 2**-51, so
outside this margin both round to the same float32. About one element in 2**17 is that
close."""


_V8D, _V8F = ir.VectorType(ir.DoubleType(), 8), ir.VectorType(ir.FloatType(), 8)
_V8Q, _V8I = ir.VectorType(ir.IntType(64), 8), ir.VectorType(ir.IntType(32), 8)
EXP_POLY = (2.6291527660381203e-07, 2.7634590960408026e-06, 2.4805246959454023e-05,
            0.00019841184237262462, 0.0013888885302319254, 0.008333333374176605,
            0.04166666668081372, 0.16666666666589103, 0.4999999999998011,
            1.0000000000000038, 1.0000000000000007)
"""exp(r) for ``|r| <= ln2 / 2`` as a polynomial of degree 10, highest power first: the
interpolant at Chebyshev nodes (``numpy.polynomial.chebyshev.chebinterpolate``), within
``2**-49`` of exp relative (``tests/simulator/test_vector_formulas.py`` checks it)."""


def _logistic_vectors(silu: bool):
    """The intrinsic ``(x, out, prod, mask, n, near) -> count``: ``1 / (1 + exp(-x))`` in
    float64 of ``n`` vectors of 8 float32 from byte address ``x`` into ``out``, 8 lanes at
    a time (numba's loop vectorizer took 4).
    Each element whose float32 rounding is not certain (within ``near`` float64 ulps of a
    float32 rounding boundary, past ``_EXP_RANGE``, not finite) gets ``x`` instead, and a
    bit in its vector's byte at ``mask``; ``count`` is how many. With ``silu``, ``prod``
    also gets ``fp32(x * out)`` (``x`` for those elements), stored after ``out``."""
    def body(context, builder, signature, args):
        x, out, prod, mask, n, near = args
        intp, i8, i32 = x.type, ir.IntType(8), ir.IntType(32)

        def function(name, ret, *params):
            return cgutils.get_or_insert_function(builder.module,
                                                  ir.FunctionType(ret, params), name)

        def splat(vt, value):
            if isinstance(value, ir.Constant) or not isinstance(value, ir.Value):
                return ir.Constant(vt, [value] * 8)
            one = builder.insert_element(ir.Constant(vt, None), value, ir.Constant(i32, 0))
            return builder.shuffle_vector(one, ir.Constant(vt, None), ir.Constant(_V8I, [0] * 8))

        def vector(addr, j):
            return builder.inttoptr(builder.add(addr, builder.mul(j, ir.Constant(intp, 32))),
                                    _V8F.as_pointer())

        fma = function("llvm.fma.v8f64", _V8D, _V8D, _V8D, _V8D)
        fabs = function("llvm.fabs.v8f64", _V8D, _V8D)
        ctpop = function("llvm.ctpop.i8", i8, i8)
        near32 = builder.trunc(near, i32)  # lo - (2**28 - near) <= 2 near, unsigned
        low = splat(_V8I, builder.sub(ir.Constant(i32, 0x10000000), near32))
        span = splat(_V8I, builder.add(near32, near32))
        count = cgutils.alloca_once_value(builder, ir.Constant(intp, 0))
        with cgutils.for_range(builder, n) as loop:
            j = loop.index
            xf = builder.load(vector(x, j), align=4)
            v = builder.fpext(xf, _V8D)
            # u: v where |v| <= _EXP_RANGE, else a number of at most that size (those lanes
            # go to the formula): AVX-512 DQ's vrangepd (v's sign, the smaller magnitude;
            # a NaN becomes the bound) where there is one
            if _DQ:
                vrange = function("llvm.x86.avx512.mask.range.pd.512", _V8D, _V8D, _V8D, i32,
                                  _V8D, i8, i32)
                u = builder.call(vrange, [v, splat(_V8D, _EXP_RANGE), ir.Constant(i32, 0b0010),
                                          v, ir.Constant(i8, -1), ir.Constant(i32, 4)])
                ok = builder.fcmp_ordered("==", u, v)
            else:
                ok = builder.fcmp_ordered("<=", builder.call(fabs, [v]), splat(_V8D, _EXP_RANGE))
                u = builder.select(ok, v, splat(_V8D, 0.0))
            # exp(-u): -u = k ln2 + r (Cody-Waite on fused multiply-adds, |r| <= ln2 / 2),
            # with r = -(u + k ln2); exp(r) by EXP_POLY in powers of -r; times 2**k; k to
            # the nearest integer, ties to even
            kr = builder.call(fma, [u, splat(_V8D, -_LOG2E), splat(_V8D, _ROUND)])
            k = builder.fsub(kr, splat(_V8D, _ROUND))
            rn = builder.call(fma, [k, splat(_V8D, _LN2_HI), u])
            rn = builder.call(fma, [k, splat(_V8D, _LN2_LO), rn])
            p = splat(_V8D, EXP_POLY[0])
            for i, c in enumerate(EXP_POLY[1:], 1):  # the coefficient of rn**(10 - i)
                p = builder.call(fma, [p, rn, splat(_V8D, c if i % 2 == 0 else -c)])
            # kr's low bits are k's (|k| < 2**51 below 1.5 * 2**52): 2**k without a convert
            scale = builder.shl(builder.add(builder.bitcast(kr, _V8Q), splat(_V8Q, 1023)),
                                splat(_V8Q, 52))
            e = builder.fmul(p, builder.bitcast(scale, _V8D))
            s = builder.fdiv(splat(_V8D, 1.0), builder.fadd(splat(_V8D, 1.0), e))
            lo = builder.and_(builder.trunc(builder.bitcast(s, _V8Q), _V8I),
                              splat(_V8I, 0x1FFFFFFF))
            bad = builder.or_(builder.icmp_unsigned("<=", builder.sub(lo, low), span),
                              builder.not_(ok))
            sf = builder.fptrunc(s, _V8F)
            builder.store(builder.select(bad, xf, sf), vector(out, j), align=4)
            if silu:
                builder.store(builder.select(bad, xf, builder.fmul(xf, sf)), vector(prod, j),
                              align=4)
            bits = builder.bitcast(bad, i8)
            builder.store(bits, builder.inttoptr(builder.add(mask, j), i8.as_pointer()))
            builder.store(builder.add(builder.load(count),
                                      builder.zext(builder.call(ctpop, [bits]), intp)), count)
        return builder.load(count)

    @intrinsic
    def logistic(typingctx, x, out, prod, mask, n, near):
        return types.intp(*([types.intp] * 6)), body
    return logistic


_sigmoid_vectors = _logistic_vectors(False)
_silu_vectors = _logistic_vectors(True)


@numba.njit(cache=True, inline="always")
def _vectors(silu, x, out, prod, mask, n, near):  # pragma: no cover - compiled
    if silu:
        return _silu_vectors(x, out, prod, mask, n, near)
    return _sigmoid_vectors(x, out, prod, mask, n, near)


@numba.njit(cache=True, nogil=True)
def _logistic(x, out, prod, silu, near, mask, idx):  # pragma: no cover - compiled
    # the whole vectors, then the last x.size % 8 elements in a vector of copies; the
    # elements for the formula into idx: returns how many
    n = x.size // 8
    ma = mask.ctypes.data
    count = _vectors(silu, x.ctypes.data, out.ctypes.data, prod.ctypes.data, ma, n, near)
    rest = x.size - 8 * n
    if rest:
        tx, to, tp = np.zeros(8, np.float32), np.zeros(8, np.float32), np.zeros(8, np.float32)
        tx[:rest] = x[8 * n:]
        _vectors(silu, tx.ctypes.data, to.ctypes.data, tp.ctypes.data, ma + n, 1, near)
        mask[n] &= (1 << rest) - 1
        count += 1 if mask[n] else 0
        out[8 * n:] = to[:rest]
        if silu:
            prod[8 * n:] = tp[:rest]
    found = 0
    if count:
        for j in range(n + (1 if rest else 0)):
            for b in range(8):
                if mask[j] >> b & 1:
                    idx[found] = 8 * j + b
                    found += 1
    return found


def sigmoid(x: np.ndarray, out: np.ndarray | None = None, reference=None,
            product: np.ndarray | None = None) -> np.ndarray:
    """fp32 ``1 / (1 + exp(-x))`` computed in float64 and rounded once, the bits of numpy's
    formula (``reference(x)``, for the elements within ``SIGMOID_MARGIN`` of a float32
    rounding boundary, about one in 2**17, and those past the kernel's exp); into ``out``
    as :func:`hard_sigmoid` does.

    With ``product`` (a C-contiguous float32 array of ``x``'s shape that is ``x``, ``out``
    or shares no memory with either), it also gets ``fp32(x * sigmoid(x))`` in the same
    pass: a SiLU's two fp32 steps, with their bits."""
    x = np.ascontiguousarray(x, np.float32)
    out = out_like(x, out)
    flat, res = x.reshape(-1), out.reshape(-1)
    prod = res if product is None else product.reshape(-1)
    near = min(int(SIGMOID_MARGIN * 2.0**53), 1 << 29)  # in float64 ulps of [1, 2)

    def share(a: int, b: int) -> None:
        idx = np.empty(b - a, np.int64)
        n = _logistic(flat[a:b], res[a:b], prod[a:b], product is not None, near,
                      np.empty((b - a) // 8 + 1, np.uint8), idx)
        if n:  # those elements hold x, in prod (written last): the formula's, in this
            idx = idx[:n] + a  # share while it is in cache (a block format's outputs,
            xv = prod[idx]  # integers times a power of two, put 1-2% of the elements of
            sv = reference(xv)  # EfficientNet-B0's sigmoids within the margin)
            res[idx] = sv
            if product is not None:
                with np.errstate(all="ignore"):  # inf * 0 is NaN, as the device's
                    prod[idx] = np.multiply(xv, sv, dtype=np.float32)

    threads.run(share, flat.size, grain=1 << 14)
    return out
