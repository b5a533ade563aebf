"""The rows of the model-selection table (benchmarks/model_families.py): which packages, at which
input sides and batch sizes, on which CPU paths, and the rows left out with the reason.

- The default model's weights (models/packages/shapes_320/model.pt) exported at 320, 640 and
  1280 into WORK/shapes_<side> (once; parity against PyTorch and GFLOPs counted every run); at
  320 and 640 also the served INT8 package (models/packages/shapes_<side>_int8, OpenVINO).
- YOLOv8 n/s/m/x (benchmarks/yolo_families.sh: Ultralytics' yaml, random weights). Their ONNX
  files take any side (dynamic height and width), so 320 and 1280 are packages that link the 640
  one's model.onnx with the side changed in the manifest. GFLOPs at 320 / 1280: the 640 count
  times (side / 640)^2 (all convolutions, sides multiples of 32: exact).
- SSDlite-MobileNetV3 and Faster R-CNN R50-FPN (detserve-model export-torchvision, random
  weights), at the side they were exported at: the graph resizes inside to that side.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from detserve.engines.manifest import load_package, write_manifest

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT = Path("models/packages/shapes_320/model.pt")
DEFAULT_SIDES = (320, 640, 1280)
INT8_PACKAGES = {320: Path("models/packages/shapes_320_int8"),
                 640: Path("models/packages/shapes_640_int8")}  # fmt: skip
INT8_CHECK = ("val mAP against its FP32 source, models/packages/shapes_{side}_int8/precision.md "
              "(detserve-model precision-report): mAP@0.5 {map50}, AP_small@0.5:0.95 {small} "
              "points")
NO_INT8_1280 = ("no INT8 package at 1280: not served (its AP_large collapses: trained at 320; "
                "benchmarks/results/resolution_ap)")
SCALES = ("n", "s", "m", "x")
# Batch sizes per (scale, side); None: not run (a Skipped row says why). The run must fit ~25
# minutes on 2 cores: yolov8x at 1280 batch 8 alone would take ~5 of them (~40 s a run).
YOLO_PLAN: Mapping[str, Mapping[int, tuple[int, ...] | None]] = {
    scale: {320: (1, 8), 640: (1, 8), 1280: (1,) if scale == "x" else (1, 8)} for scale in SCALES
}
YOLO_SKIP_B8 = "batch 8 not run: ~8x the batch-1 run's seconds, over the run's time budget"
YOLO_SKIP = "not run: over the run's time budget"
TV_SIDES_NOTE = ("one side only: the graph resizes every input to the side it was exported at "
                 "(torchvision's transform)")


@dataclass(frozen=True)
class CpuPath:
    """One CPU path of a row: its name (model_families_measure.PATHS), package and how its
    outputs are verified besides the max diff against ONNX Runtime FP32."""

    name: str
    package: Path
    verified_by: str = ""


@dataclass(frozen=True)
class Row:
    key: str
    facts: dict[str, Any]  # model, input, params, GFLOPs, ONNX bytes, parity against torch
    batches: tuple[int, ...]
    paths: tuple[CpuPath, ...]  # ort-fp32 first: the others are checked against its outputs
    notes: tuple[str, ...] = ()
    serve_check: bool = False  # one Detect on a real server (model_families_serve.py)


@dataclass(frozen=True)
class Skipped:
    model: str
    input: int
    reason: str


def default_rows(work: Path) -> list[Row]:
    """The default model at each side, exported once; parity and GFLOPs every run."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from detserve.models.detector import count_parameters, load_checkpoint
    from detserve.models.export import check_parity, export_onnx

    model, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    base = load_package(DEFAULT_CHECKPOINT.parent).manifest
    rows = []
    for side in DEFAULT_SIDES:
        root = work / f"shapes_{side}"
        if not (root / "manifest.yaml").is_file():
            root.mkdir(parents=True, exist_ok=True)
            export_onnx(model, root / "model.onnx", side)
            write_manifest(replace(base, input_width=side, input_height=side, metadata={}), root)
        parity = check_parity(model, root / "model.onnx", side)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.fuse()(torch.zeros(1, 3, side, side))
        paths = [CpuPath("ort-fp32", root), CpuPath("ov-fp32", root)]
        notes: list[str] = []
        if side in INT8_PACKAGES:
            paths.append(CpuPath("ov-int8", INT8_PACKAGES[side], int8_check(side)))
        else:
            notes.append(NO_INT8_1280)
        rows.append(Row(f"default_{side}", {
            "model": "default (shapes, YOLOv8 layout)", "input": side,
            "weights": f"trained ({DEFAULT_CHECKPOINT})",
            "parameters": count_parameters(model),
            "gflops": round(counter.get_total_flops() / 1e9, 2),
            "onnx_bytes": (root / "model.onnx").stat().st_size,
            "parity_vs_torch": max(parity.max_abs_diff_boxes, parity.max_abs_diff_scores),
            "parity_how": "ORT vs PyTorch, 3 tensors (detserve.models.export.check_parity)",
        }, (1, 8), tuple(paths), tuple(notes)))  # fmt: skip
    return rows


def int8_check(side: int) -> str:
    """The INT8 package's accuracy check, read from its committed precision report."""
    text = (REPO / INT8_PACKAGES[side] / "precision.md").read_text()
    deltas = {line.split("|")[2].strip(): line.split("|")[5].strip()
              for line in text.splitlines() if line.count("|") >= 7}  # fmt: skip
    return INT8_CHECK.format(side=side, map50=deltas["mAP@0.5"], small=deltas["AP_small@0.5:0.95"])


def onnx_parameters(onnx_path: Path) -> int:
    """Weights in the graph: the element count of every initializer (BatchNorm folded into the
    convolutions, as Ultralytics' own fused count; no data is read)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return sum(math.prod(init.dims) for init in model.graph.initializer)


def yolo_package(base: Path, side: int) -> Path:
    """`base` (a 640 package) at `side`: its own manifest, the same ONNX file (hard-linked)."""
    if side == load_package(base).manifest.input_width:
        return base
    root = base.with_name(f"{base.name}_{side}")
    root.mkdir(exist_ok=True)
    if not (root / "model.onnx").exists():
        os.link(base / "model.onnx", root / "model.onnx")
    m = load_package(base).manifest
    write_manifest(replace(m, input_width=side, input_height=side), root)
    return root


def yolo_rows(work: Path) -> tuple[list[Row], list[Skipped]]:
    rows, skipped = [], []
    for scale in SCALES:
        base = work / f"yolov8{scale}"
        facts = json.loads((base / "export.json").read_text())
        par = facts["parity"]
        params = onnx_parameters(base / "model.onnx")
        for side, batches in YOLO_PLAN[scale].items():
            model = f"yolov8{scale} (Ultralytics yaml, random weights)"
            if batches is None:
                skipped.append(Skipped(model, side, YOLO_SKIP))
                continue
            root = yolo_package(base, side)
            at_export = side == facts["input_size"]
            rows.append(Row(f"yolov8{scale}_{side}", {
                "model": model, "input": side, "weights": facts["weights"],
                "parameters": params,
                "gflops": round(facts["gflops"] * (side / facts["input_size"]) ** 2, 2),
                "gflops_how": "counted" if at_export else
                              f"the {facts['input_size']} count x (side/{facts['input_size']})^2",
                "onnx_bytes": (base / "model.onnx").stat().st_size,
                "parity_vs_torch": max(par["max_abs_diff_boxes"], par["max_abs_diff_scores"])
                                   if at_export else None,
                "parity_how": f"ORT vs torch at {facts['input_size']}, one seeded random image "
                              "(benchmarks/yolo_export.py)",
            }, batches, (CpuPath("ort-fp32", root), CpuPath("ov-fp32", root)),
                (() if 8 in batches else (YOLO_SKIP_B8,)) + (() if at_export else (
                    f"YOLOv8 parity vs torch: at {facts['input_size']} only (yolo_export.py); "
                    "at other sides the OpenVINO check against ORT stands",))))  # fmt: skip
    return rows, skipped


def tv_rows(dirs: list[Path], parity: Callable[[Path], dict[str, Any] | None]) -> list[Row]:
    """The torchvision packages; `parity(root)` is the run's own torch check (tv_parity.py) or
    None, when the export's own figures stand."""
    rows = []
    for root in dirs:
        facts = json.loads((root / "export.json").read_text())
        own = parity(root)
        # The export's own figures: its matched ones (row order aside), as tv_parity's are.
        par = own or {k: facts["parity"][f"matched_{k}"]
                      for k in ("max_abs_diff_boxes", "max_abs_diff_scores")}  # fmt: skip
        rows.append(Row(root.name, {
            "model": facts["arch"], "input": facts["input_size"], "weights": facts["weights"],
            "parameters": facts["parameters"], "gflops": facts["gflops"],
            "onnx_bytes": facts["onnx_bytes"],
            "parity_vs_torch": max(par["max_abs_diff_boxes"], par["max_abs_diff_scores"]),
            # Boxes other than tied copies, and the score-sorted scores (tv_parity.py): what
            # the table shows where the run checked it itself.
            "parity_vs_torch_untied": None if own is None else max(
                own["max_abs_diff_boxes_untied"], own["max_abs_diff_sorted_scores"]),
            "tied_off": None if own is None else own["tied_off"],
            "parity_how": "ORT vs PyTorch, detections matched, 3 parity images + 2 val scenes "
                          "(benchmarks/tv_parity.py)" if own else "export.json (matched)",
            "exporter": facts["exporter"], "batch_probe": facts["batch_probe"],
        }, (1, 8), (CpuPath("ort-fp32", root), CpuPath("ov-fp32", root)), (TV_SIDES_NOTE,),
            serve_check=True))
    return rows
