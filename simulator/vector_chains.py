# SPDX-License-Identifier: Apache-2.0
"""Runs of element-wise instructions the device executes in one pass, and which of the
values they write are read again.

A pre-activation network normalizes each layer's input apart from the layer before it:
DenseNet-121's 62 BatchNorm + ReLU pairs compile to ``VV_ALU`` mul, ``VV_ALU`` add,
``V_RELU``, each a pass over a tensor of up to 2.4 MB (about 17 ms of 75 ms, where
onnxruntime makes each one depthwise 1x1 convolution). Run as a :class:`Chain`, each piece
of the input goes through every step in L1 (:func:`npusim.simulator._chain.run`) and only
the values some later instruction reads are stored: there, the last step's.

What an instruction reads and writes is its :class:`npusim.simulator.timing.Work`'s
operands (the timing model's own account of the program's activation traffic)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from npusim.simulator import _chain, isa
from npusim.simulator.timing import Operand, Work

_ALU = {isa.AluOp.ADD: _chain.ADD, isa.AluOp.SUB: _chain.SUB, isa.AluOp.MUL: _chain.MUL,
        isa.AluOp.DIV: _chain.DIV}


@dataclass(frozen=True)
class Chain:
    """Instructions ``count`` in a row, each taking the one before's result, over
    ``length`` elements from ``x``: :func:`npusim.simulator._chain.run`'s ``steps``,
    with its ``operands`` as ``(address, elements)`` and its ``outs`` as addresses."""

    count: int
    length: int
    x: int
    steps: np.ndarray
    operands: tuple[tuple[int, int], ...]
    outs: tuple[int, ...]


def _steps(i: isa.Instruction, value: int, length: int):
    """``(steps, operands)`` of instruction ``i`` applied to the chain's value at address
    ``value`` (``length`` elements): rows ``(op, rev, div, mod, operand)`` and the
    operands' ``(address, elements)``; None when ``i`` does not go on with it."""
    if isinstance(i, isa.VRelu) and i.src == value and i.length == length:
        return [(_chain.RELU, 0, 1, 1, -1)], []
    if isinstance(i, isa.VvAlu) and i.length == length and i.op in _ALU:
        if i.src0 == value and i.div >= 1 and i.mod >= 1 and i.length % (i.div * i.mod) == 0:
            return [(_ALU[i.op], int(bool(i.rev)), i.div, i.mod, 0)], [(i.src1, i.mod)]
        if i.src1 == value and i.src0 != value and i.div == 1 and i.mod == length:
            # the value is the same-shape second operand: src0 goes before it unless rev
            return [(_ALU[i.op], int(not i.rev), 1, length, 0)], [(i.src0, length)]
    if isinstance(i, isa.VvAdd) and value in (i.src0, i.src1) and i.length == length:
        other, rev = (i.src1, 0) if i.src0 == value else (i.src0, 1)
        steps = [(_chain.ADD, rev, 1, length, 0)]
        return steps + [(_chain.RELU, 0, 1, 1, -1)] * bool(i.relu), [(other, length)]
    return None


def _first_value(i: isa.Instruction) -> int | None:
    """The address a chain that starts at ``i`` reads its input from."""
    if isinstance(i, isa.VRelu):
        return i.src
    if isinstance(i, (isa.VvAlu, isa.VvAdd)):
        return i.src0
    return None


def _overlap(a: Operand, b: Operand) -> bool:
    return a.addr < b.addr + b.nbytes and b.addr < a.addr + a.nbytes


def read_again(works: list[Work], start: int, region: Operand) -> bool:
    """Whether an instruction from ``start`` on reads a byte of ``region`` before one
    writes it (what a write covers is dead, the rest of the region still live)."""
    live = [(region.addr, region.addr + region.nbytes)]
    for w in works[start:]:
        if any(r.addr < b and a < r.addr + r.nbytes for r in w.reads for a, b in live):
            return True
        for o in w.writes:
            lo, hi = o.addr, o.addr + o.nbytes
            live = [piece for a, b in live
                    for piece in ((a, min(b, lo)), (max(a, hi), b)) if piece[0] < piece[1]]
        if not live:
            return False
    return False


def _make(code: list[isa.Instruction], works: list[Work], end: int) -> Chain | None:
    """The :class:`Chain` of instructions ``code`` (ending before ``end``), or None when
    their memory does not allow one pass: the input and the results must each be the same
    bytes as another or apart from it, and no operand may be a result."""
    x = _first_value(code[0])
    n = code[0].length
    rows, operands, dsts = [], [], []
    value = x
    for i in code:
        steps, ops = _steps(i, value, n)
        base = len(operands)
        rows += [(*s[:4], s[4] + base if s[4] >= 0 else -1, len(dsts) if k == len(steps) - 1
                  else -1) for k, s in enumerate(steps)]
        operands += ops
        dsts.append(i.dst)
        value = i.dst
    whole = [Operand(a, 4 * n) for a in [x, *dsts]]
    if any(a != b and _overlap(a, b) for a in whole for b in whole):
        return None
    if any(_overlap(Operand(a, 4 * m), Operand(d, 4 * n)) for a, m in operands for d in dsts):
        return None
    outs, index = [], {}
    for k, d in enumerate(dsts):  # stored: the last result, and those read again
        if k == len(dsts) - 1 or (d not in dsts[k + 1:]
                                  and read_again(works, end, Operand(d, 4 * n))):
            index[k] = len(outs)
            outs.append(d)
    table = np.array([(*r[:5], index.get(r[5], -1) if r[5] >= 0 else -1) for r in rows],
                     np.int64).reshape(-1, 6)
    return Chain(len(code), n, x, table, tuple(operands), tuple(outs))


def chains(instructions, works: list[Work], taken=frozenset()) -> dict[int, Chain]:
    """The chains of at least two instructions in ``instructions``, by the index of their
    first; none starts or runs through an index of ``taken`` (instructions the device
    already runs another way)."""
    found = {}
    k = 0
    while k < len(instructions):
        value = None if k in taken else _first_value(instructions[k])
        end = k
        if value is not None:
            n = instructions[k].length
            while (end < len(instructions) and end not in taken
                   and _steps(instructions[end], value, n) is not None):
                value = instructions[end].dst
                end += 1
        while end - k >= 2:  # the longest that one pass can run
            c = _make(list(instructions[k:end]), works, end)
            if c is not None:
                found[k] = c
                break
            end -= 1
        k = max(end, k + 1)
    return found
