# SPDX-License-Identifier: Apache-2.0
"""Export torchvision models to ONNX as users do, for validating the compiler on real graphs.

    python benchmarks/export_torchvision.py --out DIR [--exporter legacy|dynamo]
        [--models NAME ...] [--timeout SECONDS] [--list]

Needs torch and torchvision installed (with onnx, and onnxscript for ``--exporter dynamo``);
npusim itself does not depend on them, so run it from a separate environment. Nothing is
downloaded: every model is built with ``weights=None`` (and ``weights_backbone=None``) and
random weights seeded by ``torch.manual_seed(0)``, in eval mode, batch 1, at a fixed input
size.

Writes ``DIR/<name>.onnx`` for each model, plus ``DIR/export_results.json`` with, per
model, the status (``ok``, or ``failed`` with the exception's lines, the full log in
``DIR/logs/``), export seconds, file size, input name and shape, symbolic dims, and output
names. ``legacy`` is the TorchScript
exporter (``dynamo=False``, opset 17), which gives the Shape->Gather->Concat patterns of
most ONNX files in the wild; ``dynamo`` is ``dynamo=True``, opset 18. Each model is exported
in its own process with a time limit, so one that fails, hangs or crashes is recorded and
the rest go on. Detection models take a list of images in torchvision; they are wrapped in
a module that takes one ``[1, 3, H, W]`` tensor and returns boxes, scores and labels.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision


@dataclass(frozen=True)
class Spec:
    """One model to export: the torchvision builder, its arguments and the input it takes."""

    builder: str
    kind: str  # classification | segmentation | detection
    size: tuple[int, int] = (224, 224)
    kwargs: dict[str, Any] = field(default_factory=dict)
    dynamic: dict[int, str] = field(default_factory=dict)  # input axis -> symbolic name


NO_BACKBONE: dict[str, Any] = {"weights_backbone": None}

SPECS: dict[str, Spec] = {
    # classification, 224x224 unless said
    "resnet18": Spec("resnet18", "classification"),
    "resnet50": Spec("resnet50", "classification"),
    "resnext50_32x4d": Spec("resnext50_32x4d", "classification"),
    "wide_resnet50_2": Spec("wide_resnet50_2", "classification"),
    "mobilenet_v2": Spec("mobilenet_v2", "classification"),
    "mobilenet_v3_large": Spec("mobilenet_v3_large", "classification"),
    "mobilenet_v3_small": Spec("mobilenet_v3_small", "classification"),
    "shufflenet_v2_x1_0": Spec("shufflenet_v2_x1_0", "classification"),
    "squeezenet1_1": Spec("squeezenet1_1", "classification"),
    "mnasnet1_0": Spec("mnasnet1_0", "classification"),
    "efficientnet_b0": Spec("efficientnet_b0", "classification"),
    "regnet_y_400mf": Spec("regnet_y_400mf", "classification"),
    # as the pretrained weights configure them: no auxiliary heads, input transform on
    "googlenet": Spec("googlenet", "classification",
                      kwargs={"aux_logits": False, "transform_input": True,
                              "init_weights": True}),
    "inception_v3": Spec("inception_v3", "classification", size=(299, 299),
                         kwargs={"aux_logits": False, "transform_input": True,
                                 "init_weights": True}),
    "densenet121": Spec("densenet121", "classification"),
    "convnext_tiny": Spec("convnext_tiny", "classification"),
    "swin_t": Spec("swin_t", "classification"),
    "vit_b_16": Spec("vit_b_16", "classification"),
    "vgg11_bn": Spec("vgg11_bn", "classification"),
    "alexnet": Spec("alexnet", "classification"),
    # a symbolic batch (and, for one, symbolic height and width) for --input-shape
    "resnet18_dynbatch": Spec("resnet18", "classification", dynamic={0: "N"}),
    "mobilenet_v3_small_dynbatch": Spec("mobilenet_v3_small", "classification",
                                        dynamic={0: "N"}),
    "resnet18_dynhw": Spec("resnet18", "classification", dynamic={0: "N", 2: "H", 3: "W"}),
    # its channel shuffle reshapes by x.size(): Shape->Gather->Concat on the symbolic batch
    "shufflenet_v2_x1_0_dynbatch": Spec("shufflenet_v2_x1_0", "classification",
                                        dynamic={0: "N"}),
    # segmentation, 224x224 to keep it quick (torchvision's reference size is 520)
    "fcn_resnet50": Spec("segmentation.fcn_resnet50", "segmentation",
                         kwargs={**NO_BACKBONE, "aux_loss": False}),
    "deeplabv3_mobilenet_v3_large": Spec("segmentation.deeplabv3_mobilenet_v3_large",
                                         "segmentation",
                                         kwargs={**NO_BACKBONE, "aux_loss": False}),
    "lraspp_mobilenet_v3_large": Spec("segmentation.lraspp_mobilenet_v3_large",
                                      "segmentation", kwargs=NO_BACKBONE),
    # detection: one [1, 3, H, W] image in; boxes, scores, labels out
    "ssdlite320_mobilenet_v3_large": Spec("detection.ssdlite320_mobilenet_v3_large",
                                          "detection", size=(320, 320), kwargs=NO_BACKBONE),
    "ssd300_vgg16": Spec("detection.ssd300_vgg16", "detection", size=(300, 300),
                         kwargs=NO_BACKBONE),
    "fasterrcnn_mobilenet_v3_large_320_fpn": Spec(
        "detection.fasterrcnn_mobilenet_v3_large_320_fpn", "detection", size=(320, 320),
        kwargs=NO_BACKBONE),
    # min_size/max_size 320 rather than the default 800/1333, to keep it quick
    "retinanet_resnet50_fpn": Spec("detection.retinanet_resnet50_fpn", "detection",
                                   size=(320, 320),
                                   kwargs={**NO_BACKBONE, "min_size": 320, "max_size": 320}),
    "fcos_resnet50_fpn": Spec("detection.fcos_resnet50_fpn", "detection", size=(320, 320),
                              kwargs={**NO_BACKBONE, "min_size": 320, "max_size": 320}),
    "maskrcnn_resnet50_fpn": Spec("detection.maskrcnn_resnet50_fpn", "detection",
                                  size=(320, 320),
                                  kwargs={**NO_BACKBONE, "min_size": 320, "max_size": 320}),
    "keypointrcnn_resnet50_fpn": Spec("detection.keypointrcnn_resnet50_fpn", "detection",
                                      size=(320, 320),
                                      kwargs={**NO_BACKBONE, "min_size": 320, "max_size": 320}),
    # more backbones: newer families and the smaller variants
    "resnet34": Spec("resnet34", "classification"),
    "squeezenet1_0": Spec("squeezenet1_0", "classification"),
    "shufflenet_v2_x0_5": Spec("shufflenet_v2_x0_5", "classification"),
    "mnasnet0_5": Spec("mnasnet0_5", "classification"),
    "regnet_x_400mf": Spec("regnet_x_400mf", "classification"),
    "efficientnet_v2_s": Spec("efficientnet_v2_s", "classification"),
    "swin_v2_t": Spec("swin_v2_t", "classification", size=(256, 256)),
    "maxvit_t": Spec("maxvit_t", "classification"),
    "vit_b_32": Spec("vit_b_32", "classification"),
    "deeplabv3_resnet50": Spec("segmentation.deeplabv3_resnet50", "segmentation",
                               kwargs={**NO_BACKBONE, "aux_loss": False}),
}

OUTPUT_NAMES = {
    "classification": ["output"],
    "segmentation": ["out"],
    "detection": ["boxes", "scores", "labels"],
}


class DetectionWrapper(torch.nn.Module):
    """Takes one ``[1, 3, H, W]`` tensor; returns the first image's boxes, scores, labels."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([x[0]])[0]
        return out["boxes"], out["scores"], out["labels"]


class SegmentationWrapper(torch.nn.Module):
    """Returns the ``out`` entry of the model's dict of outputs."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def build(spec: Spec) -> torch.nn.Module:
    """The model in eval mode, with weights drawn after ``torch.manual_seed(0)``."""
    torch.manual_seed(0)
    namespace: Any = torchvision.models
    *packages, fn_name = spec.builder.split(".")
    for package in packages:
        namespace = getattr(namespace, package)
    model = getattr(namespace, fn_name)(weights=None, **spec.kwargs).eval()
    if spec.kind == "detection":
        return DetectionWrapper(model).eval()
    if spec.kind == "segmentation":
        return SegmentationWrapper(model).eval()
    return model


def export_one(name: str, exporter: str, out_dir: Path) -> dict[str, Any]:
    """Export one model to ``out_dir/<name>.onnx``; return what export_results.json keeps."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    spec = SPECS[name]
    path = out_dir / f"{name}.onnx"
    shape = [1, 3, *spec.size]
    record: dict[str, Any] = {
        "name": name, "builder": spec.builder, "kind": spec.kind, "exporter": exporter,
        "path": str(path), "input_names": ["input"], "input_shapes": [shape],
        "symbolic_dims": {"input": {str(k): v for k, v in spec.dynamic.items()}},
        "output_names": OUTPUT_NAMES[spec.kind], "kwargs": repr(spec.kwargs),
    }
    model = build(spec)
    torch.manual_seed(0)
    x = torch.rand(*shape)
    dynamic_axes = {"input": dict(spec.dynamic)} if spec.dynamic else None
    start = time.perf_counter()
    # no torch.no_grad(), as in torch's own examples: under no_grad nn.MultiheadAttention
    # takes its fast path, aten::_native_multi_head_attention, which the legacy exporter
    # cannot export (vit_b_16)
    if exporter == "legacy":
        torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=OUTPUT_NAMES[spec.kind],
                          dynamic_axes=dynamic_axes, do_constant_folding=True)
    else:
        torch.onnx.export(model, (x,), str(path), dynamo=True, opset_version=18,
                          input_names=["input"], output_names=OUTPUT_NAMES[spec.kind],
                          dynamic_axes=dynamic_axes, external_data=False)
    record["export_seconds"] = round(time.perf_counter() - start, 2)
    record["file_bytes"] = path.stat().st_size
    record["status"] = "ok"
    return record


def run_in_child(name: str, exporter: str, out_dir: Path, timeout: float) -> dict[str, Any]:
    """Export in a child process, so a crash or a hang costs only this model."""
    cmd = [sys.executable, __file__, "--child", name, "--exporter", exporter,
           "--out", str(out_dir)]
    start = time.perf_counter()
    failed: dict[str, Any] = {"name": name, "exporter": exporter, "status": "failed",
                              "path": str(out_dir / f"{name}.onnx")}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**failed, "error": f"timed out after {timeout:.0f} s",
                "wall_seconds": round(time.perf_counter() - start, 1)}
    wall = round(time.perf_counter() - start, 1)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return {**json.loads(line[len("RESULT "):]), "wall_seconds": wall}
    log = out_dir / "logs" / f"{name}.{exporter}.log"
    log.parent.mkdir(exist_ok=True)
    log.write_text(proc.stdout + proc.stderr)
    lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
    # the exception lines say more than the tail, which is often advice on debugging;
    # the dynamo exporter names the root cause under "## Exception summary"
    raised = [ln for ln in lines if re.match(r"^[\w.]*(Error|Exception)\b.*:", ln)]
    if "## Exception summary" in lines:
        after = lines[lines.index("## Exception summary") + 1:]
        raised += after[:1] + [ln for ln in after if ln.startswith("Caused by:")][:1]
    error = "\n".join(ln if len(ln) <= 400 else ln[:400] + " ..." for ln in raised[-3:])
    return {**failed, "error": error or "\n".join(lines[-6:]), "log": str(log),
            "returncode": proc.returncode, "wall_seconds": wall}


def versions() -> dict[str, str]:
    import onnx

    found = {"python": platform.python_version(), "torch": torch.__version__,
             "torchvision": torchvision.__version__, "onnx": onnx.__version__}
    try:
        import onnxscript

        found["onnxscript"] = onnxscript.__version__
    except ImportError:
        pass
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the .onnx files")
    parser.add_argument("--exporter", choices=["legacy", "dynamo"], default="legacy")
    parser.add_argument("--models", nargs="+", choices=sorted(SPECS), metavar="NAME",
                        help="export only these (default: all; --list shows them)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds allowed for one model's export (default 600)")
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.list:
        for name, spec in SPECS.items():
            print(f"{name:40s} {spec.kind:15s} 1x3x{spec.size[0]}x{spec.size[1]}")
        return 0
    if args.out is None:
        parser.error("--out is required")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.child:
        print("RESULT " + json.dumps(export_one(args.child, args.exporter, args.out)),
              flush=True)
        return 0

    names = args.models or list(SPECS)
    results_path = args.out / "export_results.json"
    results: dict[str, Any] = {"exporter": args.exporter, "versions": versions(), "models": {}}
    if results_path.exists():  # a partial rerun keeps the other models' records
        previous = json.loads(results_path.read_text())
        if previous.get("exporter") == args.exporter:
            results["models"] = previous.get("models", {})
    for name in names:
        record = run_in_child(name, args.exporter, args.out, args.timeout)
        results["models"][name] = record
        results_path.write_text(json.dumps(results, indent=1) + "\n")
        if record["status"] == "ok":
            print(f"{name:40s} ok     {record['export_seconds']:7.1f} s "
                  f"{record['file_bytes'] / 1e6:8.1f} MB", flush=True)
        else:
            first = record["error"].strip().splitlines()[-1] if record["error"] else "?"
            print(f"{name:40s} FAILED {record['wall_seconds']:7.1f} s  {first[:120]}",
                  flush=True)
    failed = [n for n in names if results["models"][n]["status"] != "ok"]
    print(f"{len(names) - len(failed)} exported, {len(failed)} failed -> {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
