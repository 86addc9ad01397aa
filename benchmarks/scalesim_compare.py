# SPDX-License-Identifier: Apache-2.0
"""npusim's per-layer compute cycles beside SCALE-Sim v3's, on one weight-stationary array.

    pip install scalesim          # SCALE-Sim v3 (PyPI), a peer cycle-accurate simulator
    python benchmarks/scalesim_compare.py [MODEL] [--rows 128] [--cols 125] [--json FILE]

MODEL (default ``resnet50``) is compiled for ``brainwave-s10`` reduced to one matrix tile
of ``rows x cols`` (SCALE-Sim models one array) in fp32, so no block-format converter
adds its depth. Every ``MV_MUL`` (a convolution or a dense layer) becomes one row of a
SCALE-Sim topology with the same geometry: the input as padded, the kernel, the channels,
the filters, the stride. SCALE-Sim runs it weight stationary with SRAMs and bandwidth
large enough that it never stalls, and its "Total Cycles" are set beside npusim's
compute cycles for the layer.

Both cut a layer into the same folds: ``ceil(K / rows) * ceil(O / cols)`` array loads of
weights, each streaming the layer's ``N`` output pixels. Per fold npusim counts
``N + rows + cols`` (the pixels, a partial sum running down a column, the skew across
the columns), plus ``cols`` once for the first fold's weights (one column a cycle): the
later folds' weights load into the array's second bank while the fold before runs
(``rtl/systolic_array`` does exactly that). SCALE-Sim counts ``rows`` cycles to load
every fold's weights, then the pixels, the drain (``cols - 1``) and the skew
(``rows - 1``): ``N + 2 rows + cols - 2``. So the model predicts SCALE-Sim = npusim -
``cols + folds * (rows - 2)``: the weight fill of every fold but the first, which npusim
hides in the second bank. The table shows that prediction and what is left over.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import math
import sys
import tempfile
from pathlib import Path

from npusim.compiler import compile_model
from npusim.runtime.analysis.bench import resolve_model
from npusim.simulator import isa, timing
from npusim.simulator.config import load_device
from npusim.simulator.progress import shown

_LAYOUT = ["1"] * 6 + ["0", "1", "2"] * 3 + ["0", "1", "2", "3"] * 2
"""A SCALE-Sim layout row (the default, unused when no custom layout is asked for)."""

_CONFIG = """[general]
run_name = npusim

[architecture_presets]
ArrayHeight: {rows}
ArrayWidth: {cols}
IfmapSramSzkB: 1048576
FilterSramSzkB: 1048576
OfmapSramSzkB: 1048576
IfmapOffset: 0
FilterOffset: 100000000
OfmapOffset: 200000000
Dataflow: ws
Bandwidth: 1000000
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport: false
SparseRep: ellpack_block
OptimizedMapping: false
BlockSize: 8
RandomNumberGeneratorSeed: 40

[run_presets]
InterfaceBandwidth: USER
UseRamulatorTrace: False
"""


def layers(model: str, rows: int, cols: int) -> list[dict]:
    """One entry per ``MV_MUL`` of the compiled program: its geometry and npusim's cycles."""
    cfg = load_device("brainwave-s10").replace(native_dim=rows, array_cols=cols, tiles=1)
    _, proto = resolve_model(model)
    program = compile_model(proto, cfg, numerics="fp32")
    fmt = cfg.format("fp32")
    out = []
    for i in program.instructions:
        if not isinstance(i, isa.MvMul):
            continue
        if i.groups != 1 or (i.in_dil_h, i.in_dil_w) != (1, 1) or i.batch != 1 \
                or (i.dilation_h, i.dilation_w) != (1, 1):
            raise SystemExit(f"layer {len(out)}: grouped, dilated or batched: SCALE-Sim's "
                             "topologies have no such layer")
        oh, ow = timing.conv_output_hw(i)
        k = i.kernel_h * i.kernel_w * i.channels
        folds = math.ceil(k / rows) * math.ceil(i.out_channels / cols)
        cycles = sum(timing.mv_mul_work(i, cfg, fmt, 0).compute)
        out.append({
            "layer": f"L{len(out):02d}", "kernel": f"{i.kernel_h}x{i.kernel_w}/{i.stride_h}",
            "ifmap": (i.height + i.pad_top + i.pad_bottom, i.width + i.pad_left + i.pad_right),
            "filter": (i.kernel_h, i.kernel_w), "channels": i.channels,
            "filters": i.out_channels, "stride": i.stride_h, "pixels": oh * ow,
            "folds": folds, "npusim": cycles,
            "predicted": cycles - cols + folds * (rows - 2)})
    return out


def run_scalesim(rows_: list[dict], rows: int, cols: int) -> list[int]:
    """SCALE-Sim's total cycles per layer (weight stationary, no stalls)."""
    try:
        from scalesim.scale_sim import scalesim
    except ImportError:
        raise SystemExit("scalesim_compare: SCALE-Sim is not installed (pip install "
                         "scalesim)") from None
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "npusim.cfg").write_text(_CONFIG.format(rows=rows, cols=cols))
        topo = ["Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, "
                "Channels, Num Filter, Strides,"]
        layout = ["Layer name," + ",".join(f"f{k}" for k in range(len(_LAYOUT))) + ","]
        for r in rows_:
            topo.append(f"{r['layer']}, {r['ifmap'][0]}, {r['ifmap'][1]}, {r['filter'][0]}, "
                        f"{r['filter'][1]}, {r['channels']}, {r['filters']}, {r['stride']},")
            layout.append(f"{r['layer']}," + ",".join(_LAYOUT) + ",")
        (d / "topology.csv").write_text("\n".join(topo) + "\n")
        (d / "layout.csv").write_text("\n".join(layout) + "\n")
        with contextlib.redirect_stdout(io.StringIO()):
            sim = scalesim(save_disk_space=True, verbose=False, config=str(d / "npusim.cfg"),
                           topology=str(d / "topology.csv"), layout=str(d / "layout.csv"))
            sim.run_scale(top_path=str(d / "out"))
        report = next((d / "out").glob("*/COMPUTE_REPORT.csv"))
        with report.open() as f:
            table = list(csv.reader(f))
    head = [h.strip() for h in table[0]]
    col = head.index("Total Cycles")
    return [int(float(r[col])) for r in table[1:] if r and r[0].strip()]


def markdown(rows_: list[dict]) -> str:
    """One row per distinct layer shape (identical layers give identical cycles), in the
    order they first appear, with the count; then the totals over every layer."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows_:
        key = (r["kernel"], r["channels"], r["filters"], r["pixels"], r["npusim"],
               r["scalesim"])
        groups.setdefault(key, []).append(r)
    lines = ["| layers | kernel/stride | K | O | pixels | folds | npusim | SCALE-Sim | ratio | "
             "npusim - cols + folds x (rows - 2) | left over |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for same in groups.values():
        r = same[0]
        k = r["filter"][0] * r["filter"][1] * r["channels"]
        names = r["layer"] if len(same) == 1 else f"{r['layer']} (x{len(same)})"
        lines.append(f"| {names} | {r['kernel']} | {k} | {r['filters']} | {r['pixels']} "
                     f"| {r['folds']} | {r['npusim']:,} | {r['scalesim']:,} | "
                     f"{r['scalesim'] / r['npusim']:.3f} | {r['predicted']:,} | "
                     f"{r['scalesim'] - r['predicted']:+,} |")
    tot = {k: sum(r[k] for r in rows_) for k in ("npusim", "scalesim", "predicted")}
    lines.append(f"| **all {len(rows_)}** | | | | | | **{tot['npusim']:,}** | "
                 f"**{tot['scalesim']:,}** | **{tot['scalesim'] / tot['npusim']:.3f}** | "
                 f"**{tot['predicted']:,}** | **{tot['scalesim'] - tot['predicted']:+,}** |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", default="resnet50")
    ap.add_argument("--rows", type=int, default=128, help="array rows (K per fold)")
    ap.add_argument("--cols", type=int, default=125, help="array columns (O per fold)")
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--from-json", type=Path, help="print the table of an earlier --json run")
    args = ap.parse_args(argv)
    if args.from_json:
        print(markdown(json.loads(args.from_json.read_text())))
        return 0
    rows_ = layers(args.model, args.rows, args.cols)
    for r, cycles in zip(rows_, run_scalesim(rows_, args.rows, args.cols), strict=True):
        r["scalesim"] = cycles
    print(markdown(rows_))
    if args.json:
        args.json.write_text(json.dumps(rows_, indent=1))
    return 0


if __name__ == "__main__":
    with shown():  # progress bars on a terminal
        sys.exit(main())
