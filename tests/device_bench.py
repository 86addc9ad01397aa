# SPDX-License-Identifier: Apache-2.0
"""A device without the compiler: tensors laid out in an activation arena, instructions
wrapped in ``V_RD``/``V_WR``, run through the program encoding."""

from __future__ import annotations

import math

import numpy as np

from npusim.simulator import isa
from npusim.simulator.config import load_device
from npusim.simulator.device import Device
from npusim.simulator.program import Program, TensorDesc

TINY = load_device("tiny")


class Bench:
    """Lays tensors out in an activation arena, wraps instructions in ``V_RD``/``V_WR`` and
    runs them on a :class:`Device`, without the compiler."""

    def __init__(self, cfg=TINY, weights: bytes = b"", weight_tensors=()) -> None:
        self.cfg, self.weights, self.weight_tensors = cfg, weights, tuple(weight_tensors)
        self.abase = -(-len(weights) // 64) * 64
        self.top = 0
        self.ins: list[tuple[TensorDesc, np.ndarray]] = []
        self.outs: list[TensorDesc] = []

    def _take(self, nbytes: int) -> int:
        addr = self.abase + self.top
        self.top += -(-max(nbytes, 1) // 64) * 64
        return addr

    def put(self, a: np.ndarray) -> int:
        addr = self._take(a.nbytes)
        self.ins.append((TensorDesc(f"in{len(self.ins)}", a.shape, a.dtype.name, addr, a.nbytes),
                         a))
        return addr

    def out(self, shape: tuple[int, ...]) -> int:
        n = 4 * math.prod(shape)
        addr = self._take(n)
        self.outs.append(TensorDesc(f"out{len(self.outs)}", tuple(shape), "float32", addr, n))
        return addr

    def program(self, *instrs: isa.Instruction) -> Program:
        """The program of ``instrs``, through its encoding."""
        code = ([isa.VRd(k, t.addr, t.nbytes) for k, (t, _) in enumerate(self.ins)] + list(instrs)
                + [isa.VWr(k, t.addr, t.nbytes) for k, t in enumerate(self.outs)]
                + [isa.EndChain()])
        prog = Program(self.cfg, tuple(code), self.weights, b"", tuple(t for t, _ in self.ins),
                       tuple(self.outs), self.weight_tensors,
                       tuple({"name": f"#{k}", "op": type(i).__name__} for k, i in enumerate(code)),
                       {"weights": (0, len(self.weights)), "constants": (self.abase, 0),
                        "activations": (self.abase, self.top)})
        return Program.from_bytes(prog.to_bytes())

    def run(self, *instrs: isa.Instruction) -> list[np.ndarray]:
        dev = Device(self.cfg)
        dev.load(self.program(*instrs))
        outs, _ = dev.run({t.name: a for t, a in self.ins})
        return [outs[t.name] for t in self.outs]


def same_bits_nan(got: list[np.ndarray], want: list[np.ndarray]) -> bool:
    """Equal bits, NaN where NaN."""
    return all(np.array_equal(np.isnan(g), np.isnan(w))
               and np.array_equal(g[~np.isnan(w)].view(np.int32), w[~np.isnan(w)].view(np.int32))
               for g, w in zip(got, want, strict=True))


