# SPDX-License-Identifier: Apache-2.0
"""Print the README's "where the numbers diverge" table for the bundled ResNet-50.

    python benchmarks/compare_report.py

For every block format: the relative L2 error against fp32 after conv1 and at the
end of each stage, the cosine similarity of the features, and the layer whose own
error is largest. ``npusim compare MODEL --numerics FORMAT`` prints every layer.
"""

from __future__ import annotations

from npusim.runtime.analysis.compare import compare_layers, default_inputs
from npusim.runtime.zoo import build_resnet50
from npusim.simulator.numerics import FORMAT_NAMES
from npusim.simulator.progress import shown


def main() -> None:
    model = build_resnet50(seed=0)
    feeds = default_inputs(model)
    print("| format | conv1 | layer1 | layer2 | layer3 | layer4 | features (after pool) "
          "| features cosine | worst layer |")
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for fmt in FORMAT_NAMES[1:]:
        rows = compare_layers(model, fmt, feeds)
        by_stage = {}
        for r in rows:
            stage = r["layer"].split(".")[0]
            by_stage[stage] = r  # the last layer of each stage
        worst = max(rows, key=lambda r: r["rel_error"])
        cells = [f"{by_stage[s]['rel_error']:.2%}" for s in
                 ("conv1", "layer1", "layer2", "layer3", "layer4")]
        last = rows[-1]
        print(f"| {fmt} | {' | '.join(cells)} | {last['rel_error']:.2%} | "
              f"{last['cosine']:.5f} | {worst['layer']} ({worst['rel_error']:.1%}) |", flush=True)


if __name__ == "__main__":
    with shown():  # progress bars on a terminal
        main()
