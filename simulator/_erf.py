# SPDX-License-Identifier: Apache-2.0
"""The vector unit's erf and exact GELU: ``math.erf``'s float64 formulas, rounded once to
fp32, computed on 8-lane float64 vectors from a table of Taylor series held in vector
registers, ``math.erf`` deciding the elements whose rounding the two could disagree on.
Compiled on first call (and cached on disk), never at import.

erf about each center ``c = k / ERF_STEP`` (``k <= ERF_RANGE * ERF_STEP``: 13 centers, a
table column fits two registers) is a polynomial of degree ``ERF_TERMS`` in ``x - c``;
each lane picks its center's coefficients with ``vpermi2pd`` (a gather, the loop
vectorizer's way, is slow since the Gather Data Sampling microcode fix, and LLVM does
not emit one: the scalar loop took 13-15 ns an element) and runs Horner's rule in
``(x - c)**2`` on fused multiply-adds, the even and the odd terms apart: about 2.5 ns an
element on one thread."""

from __future__ import annotations

import math

import numba
import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from npusim.simulator import threads
from npusim.simulator._fast import _fma64, out_like
from npusim.simulator.cpu import host_has

ERF_STEP = 2
"""Centers per unit: ``k / ERF_STEP`` for ``|x| <= ERF_RANGE`` (exact in binary)."""
ERF_RANGE = 6.0
ERF_TERMS = 18
"""Degree of each center's series (even: its even and odd terms run as two chains):
within 2**-52 of erf relative over the range at a center's half-width of 1/4
(``tests/simulator/test_vector_formulas.py`` checks it against ``math.erf``)."""
ERF_MARGIN = 2.0**-44
"""Relative distance from a float32 rounding boundary inside which :func:`erf32` takes
``math.erf`` (and, for the GELU, an absolute one of ``|x| * 2**-47``): the table's
result lies within a few float64 ulps of the exact value, as ``math.erf``'s does."""
GELU_SLACK = 2.0**-47
"""``|x|`` times this bounds the GELU's error from erf's (below 2**-50 absolute, with the
argument ``x * (1/sqrt(2))`` within an ulp of the formula's ``x / sqrt(2)``: erf's relative
change is at most the argument's, erf being concave)."""
_CENTERS = 16  # table rows, the centers padded to two registers of 8 lanes
VECTORS = host_has("avx512f")
"""Whether the 8-lane kernel is compiled (``vpermi2pd`` is AVX-512's): elsewhere each
element runs :func:`erf_table`'s steps, the same numbers, one at a time."""


def _table() -> np.ndarray:
    """``[ERF_TERMS + 1, 16]``: row ``n`` the coefficient of ``(x - c)**n`` of erf about
    each center ``c = k / ERF_STEP``: ``erf(c)``, then ``erf^(n)(c) / n! = 2/sqrt(pi)
    exp(-c**2) (-1)**(n-1) H_(n-1)(c) / n!`` (``H`` the physicists' Hermite polynomials,
    by their recurrence); zeros past the last center."""
    t = np.zeros((ERF_TERMS + 1, _CENTERS), np.float64)
    for k in range(int(ERF_RANGE * ERF_STEP) + 1):
        c = k / ERF_STEP
        t[0, k] = math.erf(c)
        h_prev, h = 0.0, 1.0  # H_(-1) (unused), H_0
        g = 2.0 / math.sqrt(math.pi) * math.exp(-c * c)
        for n in range(1, ERF_TERMS + 1):
            t[n, k] = g * (-1.0) ** (n - 1) * h / math.factorial(n)
            h_prev, h = h, 2.0 * c * h - 2.0 * (n - 1) * h_prev
    return t


TABLE = _table()


@numba.njit(cache=True)
def erf_table(v):  # pragma: no cover - compiled
    """The kernel's float64 erf of ``|v| <= ERF_RANGE`` by the same steps, one value at a
    time (for the tests)."""
    a = abs(v)
    k = np.int64(a * ERF_STEP + 0.5)
    d = a - k * (1.0 / ERF_STEP)
    u = d * d
    even, odd = TABLE[ERF_TERMS, k], TABLE[ERF_TERMS - 1, k]
    for n in range(ERF_TERMS - 2, 0, -2):
        even = _fma64(even, u, TABLE[n, k])
        odd = _fma64(odd, u, TABLE[n - 1, k])
    p = _fma64(d, odd, _fma64(even, u, TABLE[0, k]))
    return v if v == 0 else (p if v > 0 else -p)


_V8D, _V8F = ir.VectorType(ir.DoubleType(), 8), ir.VectorType(ir.FloatType(), 8)
_V8Q, _V8I = ir.VectorType(ir.IntType(64), 8), ir.VectorType(ir.IntType(32), 8)


def _erf_vectors(gelu: bool):
    """The intrinsic ``(x, out, mask, n) -> count``: fp32 erf (or the GELU) in float64 of
    ``n`` vectors of 8 float32 from byte address ``x`` into ``out``. Each element whose
    float32 rounding is not certain (within ``ERF_MARGIN`` of a boundary, past
    ``ERF_RANGE``, not finite) gets ``x`` instead, and a bit in its vector's byte at
    ``mask``; ``count`` is how many."""
    def body(context, builder, signature, args):
        x, out, mask, n = args
        b = builder
        intp, i8 = x.type, ir.IntType(8)

        def function(name, ret, *params):
            return cgutils.get_or_insert_function(b.module, ir.FunctionType(ret, params), name)

        def splat(value):
            return ir.Constant(_V8D, [value] * 8)

        def vector(addr, j):
            return b.inttoptr(b.add(addr, b.mul(j, ir.Constant(intp, 32))), _V8F.as_pointer())

        fma = function("llvm.fma.v8f64", _V8D, _V8D, _V8D, _V8D)
        fabs = function("llvm.fabs.v8f64", _V8D, _V8D)
        perm = function("llvm.x86.avx512.vpermi2var.pd.512", _V8D, _V8D, _V8Q, _V8D)
        ctpop = function("llvm.ctpop.i8", i8, i8)
        halves = [(ir.Constant(_V8D, [float(c) for c in row[:8]]),
                   ir.Constant(_V8D, [float(c) for c in row[8:]])) for row in TABLE]
        count = cgutils.alloca_once_value(b, ir.Constant(intp, 0))
        with cgutils.for_range(b, n) as loop:
            j = loop.index
            xf = b.load(vector(x, j), align=4)
            v = b.fpext(xf, _V8D)
            t = b.fmul(v, splat(1.0 / math.sqrt(2.0))) if gelu else v
            a = b.call(fabs, [t])
            ok = b.fcmp_ordered("<=", a, splat(ERF_RANGE))  # false for NaN
            a = b.select(ok, a, splat(0.0))
            k = b.fptosi(b.fadd(b.fmul(a, splat(float(ERF_STEP))), splat(0.5)), _V8Q)
            d = b.fsub(a, b.fmul(b.sitofp(k, _V8D), splat(1.0 / ERF_STEP)))  # exact

            def coefficient(row):
                lo, hi = halves[row]
                return b.call(perm, [lo, k, hi])

            # Horner in d**2 on the even and the odd terms: two chains of half the length
            u = b.fmul(d, d)
            even, odd = coefficient(ERF_TERMS), coefficient(ERF_TERMS - 1)
            for row in range(ERF_TERMS - 2, 0, -2):
                even = b.call(fma, [even, u, coefficient(row)])
                odd = b.call(fma, [odd, u, coefficient(row - 1)])
            p = b.call(fma, [d, odd, b.call(fma, [even, u, coefficient(0)])])
            e = b.select(b.fcmp_ordered("==", t, splat(0.0)), t,
                         b.select(b.fcmp_ordered(">", t, splat(0.0)), p, b.fneg(p)))
            if gelu:  # 0.5 * x * (1 + erf), the formula's order
                r = b.fmul(b.fmul(splat(0.5), v), b.fadd(splat(1.0), e))
                slack = b.fadd(b.fmul(b.call(fabs, [v]), splat(GELU_SLACK)),
                               b.fmul(b.call(fabs, [r]), splat(ERF_MARGIN)))
            else:
                r = e
                slack = b.fmul(b.call(fabs, [r]), splat(ERF_MARGIN))
            f = b.fptrunc(r, _V8F)
            bad = b.or_(b.not_(ok),
                        b.or_(b.fcmp_unordered("!=", b.fptrunc(b.fsub(r, slack), _V8F), f),
                              b.fcmp_unordered("!=", b.fptrunc(b.fadd(r, slack), _V8F), f)))
            b.store(b.select(bad, xf, f), vector(out, j), align=4)
            bits = b.bitcast(bad, i8)
            b.store(bits, b.inttoptr(b.add(mask, j), i8.as_pointer()))
            b.store(b.add(b.load(count), b.zext(b.call(ctpop, [bits]), intp)), count)
        return b.load(count)

    @intrinsic
    def kernel(typingctx, x, out, mask, n):
        return types.intp(*([types.intp] * 4)), body
    return kernel


_erf_v, _gelu_v = _erf_vectors(False), _erf_vectors(True)


@numba.njit(cache=True, inline="always")
def _vectors(gelu, x, out, mask, n):  # pragma: no cover - compiled
    if gelu:
        return _gelu_v(x, out, mask, n)
    return _erf_v(x, out, mask, n)


@numba.njit(cache=True, nogil=True)
def _one_by_one(x, gelu, out, mask):  # pragma: no cover - compiled
    # the kernel's steps per element, where it is not compiled; returns how many are marked
    count = 0
    mask[:] = 0
    for i in range(x.size):
        v = np.float64(x[i])
        t = v * (1.0 / math.sqrt(2.0)) if gelu else v
        ok = abs(t) <= ERF_RANGE
        e = erf_table(t if ok else 0.0)
        if gelu:
            r = 0.5 * v * (1.0 + e)
            slack = abs(v) * GELU_SLACK + abs(r) * ERF_MARGIN
        else:
            r = e
            slack = abs(r) * ERF_MARGIN
        f = np.float32(r)
        if not ok or np.float32(r - slack) != f or np.float32(r + slack) != f:
            mask[i // 8] |= 1 << (i % 8)
            out[i] = x[i]
            count += 1
        else:
            out[i] = f
    return count


@numba.njit(cache=True, nogil=True)
def _erf32_vectors(x, gelu, out, mask):  # pragma: no cover - compiled
    # the whole vectors, then the last x.size % 8 elements in a vector of copies
    n = x.size // 8
    ma = mask.ctypes.data
    count = _vectors(gelu, x.ctypes.data, out.ctypes.data, ma, n)
    rest = x.size - 8 * n
    if rest:
        tx, to = np.zeros(8, np.float32), np.zeros(8, np.float32)
        tx[:rest] = x[8 * n:]
        _vectors(gelu, tx.ctypes.data, to.ctypes.data, ma + n, 1)
        mask[n] &= (1 << rest) - 1
        count += 1 if mask[n] else 0
        out[8 * n:] = to[:rest]
    return count


@numba.njit(cache=True, nogil=True)
def _formula(gelu, out, mask, count):  # pragma: no cover - compiled
    # math.erf's formula for the marked elements (they hold x)
    n = -(-out.size // 8)
    if count:
        for j in range(n):
            if mask[j]:
                for lane in range(8):
                    if mask[j] >> lane & 1:
                        i = 8 * j + lane
                        v = np.float64(out[i])
                        if gelu:
                            out[i] = np.float32(0.5 * v * (1.0 + math.erf(v / math.sqrt(2.0))))
                        else:
                            out[i] = np.float32(math.erf(v))


def erf32(x: np.ndarray, gelu: bool, out: np.ndarray | None = None) -> np.ndarray:
    """fp32 ``erf(x)``, or the exact GELU ``0.5 * x * (1 + erf(x / sqrt(2)))``, computed in
    float64 and rounded once: the bits of the formulas of
    :data:`npusim.simulator.vector._WIDE` (``math.erf``), by the table with ``math.erf``
    for the elements within ``ERF_MARGIN`` of a float32 rounding boundary; shared between
    the threads; into ``out`` (``x`` or memory of its own)."""
    x = np.ascontiguousarray(x, np.float32)
    out = out_like(x, out)
    flat, res = x.reshape(-1), out.reshape(-1)

    def share(a: int, b: int) -> None:
        mask = np.empty((b - a) // 8 + 1, np.uint8)
        count = (_erf32_vectors if VECTORS else _one_by_one)(flat[a:b], gelu, res[a:b], mask)
        _formula(gelu, res[a:b], mask, count)

    threads.run(share, flat.size, grain=1 << 14)
    return out
