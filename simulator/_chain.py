# SPDX-License-Identifier: Apache-2.0
"""A chain of element-wise fp32 steps in one pass: each piece of the input runs through
every step in a buffer that stays in L1, and only the results that are read again are
stored. The steps are :func:`npusim.simulator.vector.alu`'s ``add``, ``sub``, ``mul``,
``div`` (the second operand broadcast by ``div`` and ``mod``, as ``VV_ALU`` reads it) and
:func:`npusim.simulator.kernels.relu`, with their bits: one fp32 operation each, no
contraction into fused multiply-adds, IEEE division (``error_model="numpy"``: by zero an
infinity or NaN, never an exception)."""

from __future__ import annotations

import numba
import numpy as np

ADD, SUB, MUL, DIV, RELU = 0, 1, 2, 3, 4
"""Step operations (the first four are ``AluOp``'s values)."""

OP, REV, DIV_, MOD, OPERAND, OUT = range(6)
"""Columns of a step's row: the operation, whether the operand comes first, the operand's
``div`` and ``mod``, its index in ``operands`` and the index in ``outs`` the step's result
is stored to (-1: not stored)."""

PIECE = 4096
"""Elements a piece (16 KiB of fp32: the buffer stays in L1)."""


@numba.njit(cache=True, inline="always", error_model="numpy")
def _apply(op, rev, buf, j, b, r, n, scalar):  # pragma: no cover - compiled
    """``buf[j + t] = buf[j + t] <op> b[r + t]`` for ``t < n`` (``b[r]`` for every ``t``
    when ``scalar``), the operand first when ``rev``: one loop a case, so that each
    vectorizes."""
    y = buf[j:j + n]
    if scalar:
        v = b[r]
        if op == ADD:
            if rev:
                for t in range(n):
                    y[t] = v + y[t]
            else:
                for t in range(n):
                    y[t] = y[t] + v
        elif op == SUB:
            if rev:
                for t in range(n):
                    y[t] = v - y[t]
            else:
                for t in range(n):
                    y[t] = y[t] - v
        elif op == MUL:
            if rev:
                for t in range(n):
                    y[t] = v * y[t]
            else:
                for t in range(n):
                    y[t] = y[t] * v
        elif rev:
            for t in range(n):
                y[t] = v / y[t]
        else:
            for t in range(n):
                y[t] = y[t] / v
        return
    c = b[r:r + n]
    if op == ADD:
        if rev:
            for t in range(n):
                y[t] = c[t] + y[t]
        else:
            for t in range(n):
                y[t] = y[t] + c[t]
    elif op == SUB:
        if rev:
            for t in range(n):
                y[t] = c[t] - y[t]
        else:
            for t in range(n):
                y[t] = y[t] - c[t]
    elif op == MUL:
        if rev:
            for t in range(n):
                y[t] = c[t] * y[t]
        else:
            for t in range(n):
                y[t] = y[t] * c[t]
    elif rev:
        for t in range(n):
            y[t] = c[t] / y[t]
    else:
        for t in range(n):
            y[t] = y[t] / c[t]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def run(x, steps, operands, outs, n0, n1):  # pragma: no cover - compiled
    """Elements ``n0 <= i < n1`` of the chain ``steps`` (int64 ``[S, 6]``, see
    :data:`OP`) on ``x``: step ``s`` makes ``v = v <op> operands[k][(i // div) % mod]``
    (or ReLU of ``v``) and stores ``v`` to ``outs[w][i]`` when ``w >= 0``. ``x``, the
    operands and the outputs are float32 vectors (tuples of them); an output may be ``x``
    itself, no operand may be an output."""
    buf = np.empty(PIECE, np.float32)
    zero = np.float32(0)
    for a in range(n0, n1, PIECE):
        m = min(PIECE, n1 - a)
        xs = x[a:a + m]  # slices: an index a + j would keep the loops from vectorizing
        for j in range(m):
            buf[j] = xs[j]
        for s in range(steps.shape[0]):
            op, rev = steps[s, OP], steps[s, REV]
            if op == RELU:
                for j in range(m):
                    v = buf[j]
                    buf[j] = v if (v > zero or v != v) else zero
            else:
                b, div, mod = operands[steps[s, OPERAND]], steps[s, DIV_], steps[s, MOD]
                j = m if mod == 1 else 0
                if mod == 1:  # a scalar
                    _apply(op, rev, buf, 0, b, 0, m, True)
                while j < m:  # runs of one operand value, or of consecutive ones
                    i = a + j
                    if div == 1:
                        r = i % mod
                        n = min(m - j, mod - r)
                        _apply(op, rev, buf, j, b, r, n, False)
                    else:
                        r = (i // div) % mod
                        n = min(m - j, div - i % div)
                        _apply(op, rev, buf, j, b, r, n, True)
                    j += n
            w = steps[s, OUT]
            if w >= 0:
                o = outs[w][a:a + m]
                for j in range(m):
                    o[j] = buf[j]
