# SPDX-License-Identifier: Apache-2.0
"""One model's simulation time with a fast kernel on and off, interleaved in one
process (the machine's drift hits both alike), with the largest difference of the outputs.

    python benchmarks/kernel_ab.py tv/mobilenet_v2.onnx --kernel depthwise-rows --rounds 15

Kernels: ``depthwise-rows`` (:func:`npusim.simulator._fma_rows.depthwise`; off, depthwise
layers take the phase layout or the channel-last kernel), ``block-depthwise-rows``
(:func:`npusim.simulator._bfp_rows.depthwise`, with a block ``--format``; off, the phase
layout or the channel-last kernel), ``block-stem`` (:func:`npusim.simulator._bfp_stem.conv`,
with a block ``--format``; off, im2col and the 8-bit dot products), ``maxpool-rows``
(:func:`npusim.simulator._fma_rows.maxpool`; off, the phase layout), ``grouped`` (the grouped
convolutions of :func:`npusim.simulator.gemm._conv_grouped_fma`; off, a group at a time
or the portable direct kernel) and ``fused-vector-passes`` (the device's element-wise
chains and sigmoid-multiply pairs, :attr:`npusim.simulator.device.Device.fuse`; off, one
instruction at a time). Models as ``benchmarks/sim_speed.py`` takes them.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sim_speed  # noqa: E402

from npusim.compiler import compile_model  # noqa: E402
from npusim.compiler.shapes import seeded_inputs  # noqa: E402
from npusim.runtime.session import Session  # noqa: E402
from npusim.simulator import _bfp_rows, _bfp_stem, _fma_rows, gemm  # noqa: E402


def _never(*_) -> bool:
    return False


_REAL = {"depthwise-rows": (_fma_rows, "depthwise_fits", _fma_rows.depthwise_fits, _never),
         "block-depthwise-rows": (_bfp_rows, "fits", _bfp_rows.fits, _never),
         "block-stem": (_bfp_stem, "fits", _bfp_stem.fits, _never),
         "maxpool-rows": (_fma_rows, "maxpool_fits", _fma_rows.maxpool_fits, _never),
         "grouped": (gemm, "GROUPED_FMA_OUTPUTS", gemm.GROUPED_FMA_OUTPUTS, 0)}
"""Each kernel's switch: the module, the name, and its value with the kernel on and off."""


def _switch(kernel: str, on: bool, sess: Session) -> None:
    if kernel == "fused-vector-passes":  # the device's own switch
        sess.device.fuse = on
        return
    module, name, value, off = _REAL[kernel]
    setattr(module, name, value if on else off)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="zoo name, light:NAME or ONNX file")
    ap.add_argument("--kernel", choices=[*_REAL, "fused-vector-passes"], required=True)
    ap.add_argument("--format", default="fp32")
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args(argv)
    (name, shapes), = sim_speed._expand([args.model])
    _, proto = sim_speed.resolve_model(name)
    sess = Session(compile_model(proto, "brainwave-s10", numerics=args.format,
                                 input_shapes=shapes))
    feeds = seeded_inputs(proto, shapes)
    outs, times = {}, {True: [], False: []}
    for on in (True, False):  # compiles both ways first
        _switch(args.kernel, on, sess)
        outs[on] = sess.run(None, feeds)
    for r in range(args.rounds):
        for on in ((True, False) if r % 2 else (False, True)):
            _switch(args.kernel, on, sess)
            t0 = time.perf_counter()
            sess.run(None, feeds)
            times[on].append(time.perf_counter() - t0)
    _switch(args.kernel, True, sess)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(outs[True], outs[False]))
    best = {on: min(t) * 1e3 for on, t in times.items()}
    median = {on: statistics.median(t) * 1e3 for on, t in times.items()}
    print(f"{args.model} {args.format} {args.kernel}: on {best[True]:.2f} ms "
          f"(median {median[True]:.2f}), off {best[False]:.2f} ms "
          f"(median {median[False]:.2f}); off / on {best[False] / best[True]:.2f} "
          f"(best), {median[False] / median[True]:.2f} (median); "
          f"outputs differ by at most {diff:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
