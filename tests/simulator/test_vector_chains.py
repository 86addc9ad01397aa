# SPDX-License-Identifier: Apache-2.0
"""Runs of element-wise instructions executed in one pass (npusim.simulator.vector_chains
and _chain): the instructions' bits, only the values read again stored, and the runs
whose memory does not allow one pass left to the instructions one by one."""

from __future__ import annotations

import numpy as np
import pytest
from device_bench import TINY, Bench
from onnx import TensorProto, helper, numpy_helper
from vector_cases import inputs

from npusim.compiler import compile_model
from npusim.simulator import _chain, device, isa, kernels, vector_chains
from npusim.simulator.device import Device
from npusim.simulator.timing import Operand, Work

F32 = np.float32
ADD, SUB, MUL, DIV = isa.AluOp.ADD, isa.AluOp.SUB, isa.AluOp.MUL, isa.AluOp.DIV


def _values(seed: int, n: int, scale: float = 4.0) -> np.ndarray:
    """``n`` values, the special ones spread among random ones."""
    v = inputs(seed, n, scale)
    return np.random.default_rng(seed).permutation(v)[:n]


def _bits(a: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(a, F32).view(np.uint32)


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the chains run in one pass."""
    calls: list[int] = []
    run = _chain.run
    monkeypatch.setattr(_chain, "run", lambda *a: calls.append(1) or run(*a))
    return calls


def _apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vector_chains, "chains", lambda *a, **k: {})


def test_a_chain_gives_each_instructions_bits(passes, monkeypatch):
    """Scale, shift, ReLU (a BatchNorm before a convolution), then every operation with
    the operand broadcast per channel, trailing, as a scalar and whole, either side of
    the operator, in place and over the chain's own input; special values everywhere
    (NaN, infinities, signed zeros, subnormals, division by zero)."""
    c, hw = 6, 500
    n = c * hw
    x = _values(3, n, 6.0)
    per_c, trail, whole = _values(4, c, 3.0), _values(5, 20, 3.0), _values(6, n, 3.0)
    per_c[1], trail[2] = 0.0, -0.0
    scalar = np.array([0.75], F32)
    bench = Bench()
    sx, sc, st, sw, ss = (bench.put(v) for v in (x, per_c, trail, whole, scalar))
    t1, t2, y, y2 = (bench.out((n,)) for _ in range(4))
    code = [isa.VvAlu(sx, sc, t1, n, MUL, 0, hw, c), isa.VvAlu(t1, sc, t2, n, ADD, 0, hw, c),
            isa.VRelu(t2, t1, n),
            isa.VvAlu(t1, ss, t1, n, SUB, 1, 1, 1), isa.VvAlu(t1, st, t2, n, DIV, 0, 1, 20),
            isa.VvAlu(t2, sc, t2, n, DIV, 1, hw, c), isa.VvAdd(sw, t2, t1, n, 1),
            isa.VvAlu(t1, sw, y, n, MUL, 1, 1, n),
            isa.VvAlu(sw, y, t2, n, SUB, 0, 1, n),  # the value second: whole - value
            isa.VvAlu(sw, t2, y2, n, DIV, 1, 1, n)]  # and reversed: value / whole
    got = bench.run(*code)
    assert passes == [1]  # one pass of all ten
    want = []
    v = kernels.alu("mul", x.reshape(c, hw), per_c[:, None])
    v = kernels.relu(kernels.alu("add", v, per_c[:, None])).reshape(-1)
    v = kernels.alu("sub", scalar, v)
    v = kernels.alu("div", v.reshape(-1, 20), trail).reshape(-1)
    v = kernels.alu("div", per_c[:, None], v.reshape(c, hw)).reshape(-1)
    v = kernels.relu(kernels.alu("add", whole, v))
    v = kernels.alu("mul", whole, v)
    want = kernels.alu("div", kernels.alu("sub", whole, v), whole)
    assert np.array_equal(np.isnan(got[3]), np.isnan(want))
    ok = ~np.isnan(want)
    assert np.array_equal(_bits(got[3])[ok], _bits(want)[ok])
    _apart(monkeypatch)
    apart = bench.run(*code)
    assert passes == [1]
    for g, a in zip(got, apart, strict=True):
        assert np.array_equal(_bits(g), _bits(a))  # t1, t2, y read at the end: stored


def test_only_values_read_again_are_stored():
    """A result the next instructions overwrite before any reads it is not stored; one a
    later instruction reads, or reads the part a partial write left, is."""
    n = 64
    bench = Bench()
    sx, s = bench.put(_values(1, n)), bench.put(np.array([1.5], F32))
    a, b, keep = bench.out((n,)), bench.out((n,)), bench.out((2 * n,))
    code = [isa.VvAlu(sx, s, a, n, MUL, 0, 1, 1), isa.VvAlu(a, s, b, n, ADD, 0, 1, 1),
            isa.VRelu(b, a, n),  # b is dead: overwritten by the copy below
            isa.VCopy(a, b, 1, n, n, n),
            isa.VvAlu(sx, s, keep, n, MUL, 0, 1, 1), isa.VRelu(keep, keep + 4 * n, n),
            isa.VCopy(sx, keep, 1, n // 2, n, n)]  # half of keep's first half overwritten
    dev = Device(TINY)
    dev.load(bench.program(*code))
    chains = dev._fused.chains
    first, second = (chains[k] for k in sorted(chains))
    assert first.count == 3 and first.outs == (a,)
    assert second.count == 2 and second.outs == (keep, keep + 4 * n)
    works = [Work("vector", reads=(Operand(0, 8),)), Work("vector", writes=(Operand(8, 8),)),
             Work("vector", writes=(Operand(0, 4),)), Work("vector", reads=(Operand(4, 4),))]
    assert vector_chains.read_again(works, 0, Operand(0, 16))
    assert not vector_chains.read_again(works, 1, Operand(8, 8))
    assert vector_chains.read_again(works, 1, Operand(0, 16))  # [4, 8) left live, then read
    assert not vector_chains.read_again(works, 1, Operand(0, 4))


def test_runs_whose_memory_forbids_one_pass_run_apart(passes, monkeypatch):
    """A result that overlaps the input or another result in part, or an operand that is
    a result, keeps the instructions apart; they still give their bits."""
    n = 40
    x = _values(8, n)
    bench = Bench()
    sx, s = bench.put(x), bench.put(np.array([2.0], F32))
    buf = bench.out((2 * n,))
    shifted = [isa.VvAlu(sx, s, buf, n, MUL, 0, 1, 1), isa.VRelu(buf, buf + 8, n)]
    operand = [isa.VvAlu(sx, s, buf, n, MUL, 0, 1, 1),
               isa.VvAlu(buf, buf, buf + 4 * n, n, ADD, 0, 1, n)]
    assert vector_chains.chains(shifted, [Work("vector")] * 2) == {}
    assert vector_chains.chains(operand, [Work("vector")] * 2) == {}
    got = [bench.run(*shifted), bench.run(*operand)]
    assert passes == []
    v = kernels.alu("mul", x, np.array([2.0], F32))
    want = np.concatenate([v[:2], kernels.relu(v)])
    assert np.array_equal(_bits(got[0][0][:n + 2]), _bits(want))
    assert np.array_equal(_bits(got[1][0][n:]), _bits(kernels.alu("add", v, v)))


def _preactivation_model():
    """BatchNorm, ReLU, a 1x1 convolution; a normalization ``(x - m) / s`` before it:
    the compiler's VV_ALU and V_RELU chains with constant operands."""
    rng = np.random.default_rng(0)
    c = 8
    consts = {"m": rng.standard_normal((1, c, 1, 1)), "sd": rng.uniform(0.5, 2, (1, c, 1, 1)),
              "g": rng.standard_normal(c), "b": rng.standard_normal(c),
              "mu": rng.standard_normal(c), "var": rng.uniform(0.5, 2, c),
              "w": rng.standard_normal((4, c, 1, 1))}
    nodes = [helper.make_node("Sub", ["x", "m"], ["t0"]),
             helper.make_node("Div", ["t0", "sd"], ["t1"]),
             helper.make_node("BatchNormalization", ["t1", "g", "b", "mu", "var"], ["t2"]),
             helper.make_node("Relu", ["t2"], ["t3"]),
             helper.make_node("Conv", ["t3", "w"], ["y"])]
    graph = helper.make_graph(
        nodes, "pre", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 12, 12])],
        [numpy_helper.from_array(v.astype(F32), k) for k, v in consts.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("numerics", ["fp32", "msfp16"])
def test_compiled_chains_match_the_instructions_apart(numerics, passes, monkeypatch):
    """A compiled program's chains (constant operands, per-channel broadcasts) give the
    outputs of its instructions run one by one, bit for bit."""
    prog = compile_model(_preactivation_model(), "brainwave-s10", numerics=numerics)
    x = _values(9, 8 * 12 * 12, 3.0).reshape(1, 8, 12, 12)
    x[np.isnan(x) | np.isinf(x)] = 1.0
    dev = device.Device(prog.target)
    dev.load(prog)
    got, _ = dev.run({"x": x})
    assert passes and dev._fused.chains
    _apart(monkeypatch)
    dev.load(prog)
    want, _ = dev.run({"x": x})
    assert np.array_equal(_bits(got["y"]), _bits(want["y"]))
