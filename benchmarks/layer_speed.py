# SPDX-License-Identifier: Apache-2.0
"""Single layers of the graphs users bring, simulated beside onnxruntime in one run.

    python benchmarks/layer_speed.py [--rounds 20] [--only NAME ...]

Each case is a one-node ONNX graph with seeded weights (a mobile network's 1x1
convolutions on large planes, an RGB stem, a transformer's dense layer, LayerNorm, erf,
softmax, a squeeze-excite pooling), compiled for ``brainwave-s10`` in the formats it
lists and timed as ``benchmarks/sim_speed.py`` times whole models: the best of
``--rounds`` interleaved runs of the simulator (the whole device run: its instructions'
set-up included) and of onnxruntime (CPU, 2 threads). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sim_speed  # noqa: E402


def _graph(name: str, nodes, x: list[int], y: list[int], consts: dict) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), k)
             for k, (shape, scale) in consts.items()]
    graph = helper.make_graph(nodes, name,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _conv(c: int, o: int, hw: int, k: int, stride: int) -> onnx.ModelProto:
    oh = -(-hw // stride)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t"], kernel_shape=[k, k],
                              strides=[stride, stride], pads=[k // 2] * 4),
             helper.make_node("Relu", ["t"], ["y"])]
    return _graph("conv", nodes, [1, c, hw, hw], [1, o, oh, oh],
                  {"w": ((o, c, k, k), (2.0 / (c * k * k)) ** 0.5), "b": ((o,), 0.1)})


def _one(op: str, shape: list[int], out: list[int], **attrs) -> onnx.ModelProto:
    return _graph(op.lower(), [helper.make_node(op, ["x"], ["y"], **attrs)], shape, out, {})


CASES = {
    # name: (model, formats)
    "1x1 16->96 112x112": (lambda: _conv(16, 96, 112, 1, 1), ("fp32", "msfp16")),
    "1x1 32->144 56x56": (lambda: _conv(32, 144, 56, 1, 1), ("fp32", "msfp16")),
    "1x1 144->32 56x56": (lambda: _conv(144, 32, 56, 1, 1), ("fp32",)),
    "stem 3->32 s2 224x224": (lambda: _conv(3, 32, 224, 3, 2), ("fp32", "msfp16", "mxint8")),
    "stem 3->24 s2 224x224": (lambda: _conv(3, 24, 224, 3, 2), ("fp32", "msfp16")),
    "dense 3136x96->384": (lambda: _graph(
        "dense", [helper.make_node("MatMul", ["x", "w"], ["y"])], [1, 3136, 96],
        [1, 3136, 384], {"w": ((96, 384), 0.1)}), ("fp32",)),
    "LayerNorm 3136x96": (lambda: _graph(
        "ln", [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y"], axis=-1)],
        [1, 3136, 96], [1, 3136, 96], {"s": ((96,), 1.0), "b": ((96,), 1.0)}), ("fp32",)),
    "Erf 3136x384": (lambda: _one("Erf", [1, 3136, 384], [1, 3136, 384]), ("fp32",)),
    "Softmax 12x197x197": (lambda: _one("Softmax", [1, 12, 197, 197], [1, 12, 197, 197],
                                        axis=-1), ("fp32",)),
    "GlobalAveragePool 96x112x112": (lambda: _one("GlobalAveragePool", [1, 96, 112, 112],
                                                  [1, 96, 1, 1]), ("fp32",)),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--only", nargs="*", choices=list(CASES), default=None)
    args = ap.parse_args(argv)
    print("| layer | format | simulator (µs) | onnxruntime (µs) | sim / ort |")
    print("|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.only or CASES:
            make, formats = CASES[name]
            path = Path(tmp) / "layer.onnx"
            onnx.save(make(), path)
            row = sim_speed.measure(str(path), formats, rounds=args.rounds)
            for fmt in formats:
                print(f"| {name} | {fmt} | {row[f'{fmt}_ms'] * 1e3:.0f} | "
                      f"{row['ort_ms'] * 1e3:.0f} | {row[f'{fmt}_ratio']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
