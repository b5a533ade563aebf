"""Model packages from a training checkpoint: model.onnx + manifest.yaml + model.pt + MODEL_CARD.md.

Weights are rounded to float16 once, before anything is written: model.pt stores them as float16
(half the bytes in git) and the ONNX graph is exported from the very same rounded weights, so the
two files describe one model exactly. The score threshold and val metrics are filled in later by
`detserve-model eval --choose-threshold` (on val, never test); the card is written from the
manifest and the eval reports, so it never states a number no command printed.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from detserve.engines.manifest import Manifest, Postprocess, load_package, write_manifest
from detserve.models.detector import Detector, DetectorConfig, build_detector, count_parameters
from detserve.models.export import (
    BOX_TOLERANCE,
    OPSET,
    SCORE_TOLERANCE,
    ParityReport,
    export_with_parity,
)

CHECKPOINT_FILE = "model.pt"
CARD_FILE = "MODEL_CARD.md"


@dataclass(frozen=True)
class PackageResult:
    root: Path
    parity: ParityReport
    parameters: int


@dataclass(frozen=True)
class TrainingFacts:
    """What the card and manifest say about how the weights were made."""

    command: str
    data: str
    machine: str


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} logical CPUs visible, torch {torch.__version__} "
            f"(torch.set_num_threads(2)), shared with other jobs")


def load_training_checkpoint(path: str | Path) -> tuple[Detector, DetectorConfig,
                                                         dict[str, Any]]:
    """The EMA weights (what gets shipped), their config, and the saved training state."""
    payload = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or "config" not in payload or "model" not in payload:
        raise ValueError(f"{str(path)!r} is not a detserve detector checkpoint")
    cfg = DetectorConfig(**payload["config"])
    model = build_detector(cfg)
    model.load_state_dict(payload["model"])
    return model.eval(), cfg, dict(payload.get("train_state", {}))


def round_to_half(model: Detector) -> dict[str, torch.Tensor]:
    """Round every float weight to float16 in place; returns the float16 state dict."""
    half = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    model.load_state_dict(half)  # copies back into the float32 tensors, now exactly rounded
    return half


def write_package(checkpoint: str | Path, out_dir: str | Path, input_size: int,
                  classes: Sequence[str], training: TrainingFacts, name: str = "shapes",
                  version: str = "1", iou_threshold: float = 0.6,
                  score_threshold: float = 0.25, multi_label: bool = False) -> PackageResult:
    model, cfg, state = load_training_checkpoint(checkpoint)
    if cfg.num_classes != len(classes):
        raise ValueError(f"checkpoint has {cfg.num_classes} classes but {len(classes)} class "
                         f"names were given: {list(classes)}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    half = round_to_half(model)
    torch.save({"config": asdict(cfg), "model": half}, root / CHECKPOINT_FILE)
    parity = export_with_parity(model, root / "model.onnx", input_size)
    params = count_parameters(model)
    metadata: dict[str, Any] = {
        "torch_checkpoint": CHECKPOINT_FILE,
        "detector": {**asdict(cfg), "parameters": params, "strides": [8, 16, 32],
                     "head": "anchor-free, DFL box distributions, sigmoid class scores"},
        "training": {"command": training.command, "data": training.data,
                     "steps": int(state.get("step", 0)), "machine": training.machine,
                     "history": json.loads(state.get("history", "[]"))},
        "export": {"opset": OPSET, "parity": {
            "max_abs_diff_boxes_px": parity.max_abs_diff_boxes,
            "max_abs_diff_scores": parity.max_abs_diff_scores,
            "limits": {"boxes_px": BOX_TOLERANCE, "scores": SCORE_TOLERANCE},
            "inputs": f"{parity.batch} tensors at {input_size}x{input_size}"}},
    }
    manifest = Manifest(
        name=name, version=version, classes=tuple(classes), input_width=input_size,
        input_height=input_size,
        postprocess=Postprocess(score_threshold=score_threshold, iou_threshold=iou_threshold,
                                multi_label=multi_label),
        metadata=metadata,
    )
    write_manifest(manifest, root)
    return PackageResult(root, parity, params)


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _eval_rows(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = ["| input | images | objects | mAP@0.5 | mAP@0.5:0.95 | AP_small@0.5:0.95 | "
            "AP_medium@0.5:0.95 | AP_large@0.5:0.95 | AP_small@0.5 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        m = r["metrics"]
        size, size50 = m["ap_size"], m["ap_size50"]
        rows.append(f"| {r['input_size']} | {m['n_images']} | {m['n_objects']} | "
                    f"{_fmt(m['map50'])} | {_fmt(m['map'])} | {_fmt(size.get('small'))} | "
                    f"{_fmt(size.get('medium'))} | {_fmt(size.get('large'))} | "
                    f"{_fmt(size50.get('small'))} |")
    return rows


def _class_rows(report: Mapping[str, Any]) -> list[str]:
    rows = ["| class | AP@0.5 | AP@0.5:0.95 |", "|---|---|---|"]
    for name, c in report["metrics"]["per_class"].items():
        rows.append(f"| {name} | {_fmt(c['ap50'])} | {_fmt(c['ap'])} |")
    return rows


def _candidates_in_words(multi_label: bool) -> str:
    if multi_label:
        return ("class-aware, every (cell, class) pair above the threshold a candidate "
                "(`postprocess.multi_label: true`, as EfficientNMS)")
    return "class-aware, each cell proposing its best class only"


def write_model_card(package_dir: str | Path, reports: Sequence[Mapping[str, Any]],
                     notes: Sequence[str] = ()) -> Path:
    """MODEL_CARD.md from the manifest and `detserve-model eval --out` reports (eval.json)."""
    pkg = load_package(package_dir)
    man = pkg.manifest
    meta = man.metadata
    if not reports:
        raise ValueError("write_model_card needs at least one eval report")
    det, tr, exp = meta.get("detector", {}), meta.get("training", {}), meta.get("export", {})
    own = [r for r in reports if r["input_size"] == f"{man.input_width}x{man.input_height}"]
    choice = meta.get("score_threshold_choice", {})
    lines = [
        f"# Model card: {man.name}@{man.version}, input {man.input_width}x{man.input_height}", "",
        f"A {det.get('parameters', '?')}-parameter anchor-free detector (strides 8/16/32, "
        f"width x{det.get('width_mult')}, depth x{det.get('depth_mult')}) trained from scratch on "
        "detserve's synthetic scenes. Classes: " + ", ".join(man.classes) + ".",
        "Output: YOLOv8 layout `[B, 4+nc, N]` (cx, cy, w, h in input pixels, sigmoid scores); "
        f"host NMS, {_candidates_in_words(man.postprocess.multi_label)}. "
        "Preprocessing: letterbox (pad 114), RGB, /255.", "",
        "## Training", "",
        f"- Command: `{tr.get('command')}`",
        f"- Data: {tr.get('data')}",
        f"- Steps: {tr.get('steps')}; machine: {tr.get('machine')}",
    ]
    history = tr.get("history") or []
    if history:
        # Per-epoch "minutes" restart at every resume, so no total is derived from them here.
        lines.append(f"- Epochs: {history[-1].get('epoch')}; the in-training quick val mAP per "
                     "epoch (PyTorch, 300 val scenes) is under metadata.training.history in "
                     "manifest.yaml.")
    lines += ["", "## Validation (val split, through the server's engine and decoder)", ""]
    lines += _eval_rows(reports)
    lines += ["", "AP_small is COCO's small (box area < 32^2 in original pixels). The same "
              "weights at a larger input see small objects at more pixels.", ""]
    if own:
        lines += [f"Per class at {own[0]['input_size']}:", "", *_class_rows(own[0]), ""]
    lines += [f"Score threshold: {man.postprocess.score_threshold} "
              f"({choice.get('method', 'not chosen on val yet')}; F1 {choice.get('f1')}, "
              f"precision {choice.get('precision')}, recall {choice.get('recall')}). "
              f"NMS IoU {man.postprocess.iou_threshold}.", ""]
    parity = exp.get("parity", {})
    limits = parity.get("limits", {})
    lines += ["## Export", "",
              f"ONNX opset {exp.get('opset')}, dynamic batch, BatchNorm folded. ONNX Runtime vs "
              f"PyTorch on {parity.get('inputs')}: max abs diff boxes "
              f"{parity.get('max_abs_diff_boxes_px', float('nan')):.3g} px (limit "
              f"{limits.get('boxes_px')}), scores "
              f"{parity.get('max_abs_diff_scores', float('nan')):.3g} (limit "
              f"{limits.get('scores')}). "
              f"`{CHECKPOINT_FILE}` holds the same weights (float16) for the PyTorch engines.", ""]
    for note in notes:  # one paragraph each
        lines += [note, ""]
    path = pkg.root / CARD_FILE
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def read_reports(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        if not isinstance(data, dict) or "metrics" not in data:
            raise ValueError(f"{str(p)!r} is not a detserve-model eval report (eval.json)")
        out.append(data)
    return out
