# SPDX-License-Identifier: Apache-2.0
"""Instructions the device runs as one pass: a sigmoid and the product of its input and
its result (a SiLU exported as two ops), and runs of element-wise instructions
(:mod:`npusim.simulator.vector_chains`). Each writes what its instructions would, except
the values no later instruction reads; the same bits either way."""

from __future__ import annotations

import itertools

import numpy as np

from npusim.simulator import _chain, isa, kernels, threads, vector_chains
from npusim.simulator.timing import Operand, Work

ELEMENTWISE_GRAIN = 1 << 18
"""Elements of an element-wise instruction worth a thread of their own."""


def silu_pairs(instructions: list[isa.Instruction]) -> dict[int, isa.VvAlu]:
    """The sigmoids that the next instruction multiplies by their own input, element for
    element, with the sigmoid's input, its result and the product each in memory of its
    own or exactly the same as another's: by the sigmoid's index, that VV_ALU. The device
    runs each pair as one pass (:func:`npusim.simulator.vector.sigmoid_and_product`),
    which writes what the two would."""
    pairs = {}
    for k, (i, j) in enumerate(itertools.pairwise(instructions)):
        if not (isinstance(i, isa.VUnary) and i.fn == isa.UnaryFn.SIGMOID
                and isinstance(j, isa.VvAlu) and j.op == isa.AluOp.MUL
                and j.length == i.length and j.div == 1 and j.mod == i.length
                and i.src != i.dst and {j.src0, j.src1} == {i.src, i.dst}):
            continue
        n = 4 * i.length
        if all(a == b or a + n <= b or b + n <= a
               for a, b in itertools.combinations((i.src, i.dst, j.dst), 2)):
            pairs[k] = j
    return pairs


class FusedPasses:
    """A loaded program's sigmoid-multiply pairs (by the sigmoid's index; ``bare``: those
    whose sigmoid no later instruction reads, so it is not stored) and element-wise
    chains (by their first index), from its instructions and their
    :class:`~npusim.simulator.timing.Work`."""

    def __init__(self, code, works: list[Work]) -> None:
        self.pairs = silu_pairs(code)
        self.bare = {k for k, j in self.pairs.items() if code[k].dst != j.dst
                     and not vector_chains.read_again(
                         works, k + 2, Operand(code[k].dst, 4 * code[k].length))}
        self.chains = vector_chains.chains(code, works,
                                           frozenset(self.pairs) | {k + 1 for k in self.pairs})
        self.code = code

    def run(self, k: int, device) -> int:
        """Run the pass that starts at instruction ``k`` on ``device``'s memory; how many
        instructions it ran, 0 when none starts there or its memory is not all in place
        (the instructions then run one by one, and say what is wrong)."""
        if k in self.pairs and self._pair(k, self.pairs[k], device):
            return 2
        c = self.chains.get(k)
        if c is not None and self._chain(k, c, device):
            return c.count
        return 0

    def _pair(self, k: int, j: isa.VvAlu, device) -> bool:
        i = self.code[k]
        key = ("silu", i.src, i.dst, j.dst, i.length)
        views = device.prepared(key, lambda: self._pair_views(i, j, device))
        if not views:
            return False
        bare = k in self.bare
        for x, s, p in zip(*views, strict=True):  # each image
            kernels.sigmoid_and_product(x, p if bare else s, p)
        return True

    @staticmethod
    def _pair_views(i: isa.VUnary, j: isa.VvAlu, device):
        """The sigmoid's input, its result and the product, per image; ``()`` when a
        result is not in the arena."""
        shape, n = (i.length,), 4 * i.length
        if not (device.in_arena(i.dst, n) and device.in_arena(j.dst, n)):
            return ()
        return (device.view(i.src, shape), device.view(i.dst, shape, "write"),
                device.view(j.dst, shape, "write"))

    @staticmethod
    def _chain(k: int, c: vector_chains.Chain, device) -> bool:
        plan = device.prepared(("chain", k), lambda: FusedPasses._chain_views(c, device))
        if not plan:
            return False
        xs, operands, outs = plan
        for m in range(len(xs)):  # each image
            ops = tuple(a[min(m, len(a) - 1)] for a in operands)
            dst = tuple(o[m] for o in outs)
            threads.run(lambda a, b, m=m, ops=ops, dst=dst: _chain.run(
                xs[m], c.steps, ops, dst, a, b), c.length, grain=ELEMENTWISE_GRAIN)
        return True

    @staticmethod
    def _chain_views(c: vector_chains.Chain, device):
        """``x`` per image, each operand per image (one copy of a constant), each result
        per image; ``()`` when a result is not in the arena."""
        n = c.length
        if not all(device.in_arena(d, 4 * n) for d in c.outs):
            return ()
        operands = []
        for addr, m in c.operands:
            view = device.view(addr, (m,))
            operands.append(view if device.in_arena(addr, 4 * m)
                            else np.array(view[:1]))  # the one copy all images share
        x = device.view(c.x, (n,))
        if not device.in_arena(c.x, 4 * n):
            x = np.array(x)
        return x, operands, [device.view(d, (n,), "write") for d in c.outs]
