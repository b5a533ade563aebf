"""Model packages from a training checkpoint: model.onnx + manifest.yaml + model.pt + MODEL_CARD.md.

Weights are rounded to float16 once, before anything is written: model.pt stores them as float16
(half the bytes in git) and the ONNX graph is exported from the very same rounded weights, so the
two files describe one model exactly. The score threshold and val metrics are filled in later by
`detserve-model eval --choose-threshold` (on val, never test); the card (models/card.py) is
written from the manifest and the eval reports, so it never states a number no command printed.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from detserve.engines.manifest import Manifest, Postprocess, write_manifest
from detserve.models.card import CARD_FILE, read_reports, write_model_card
from detserve.models.detector import Detector, DetectorConfig, build_detector, count_parameters
from detserve.models.export import (
    BOX_TOLERANCE,
    OPSET,
    SCORE_TOLERANCE,
    ParityReport,
    export_with_parity,
)

CHECKPOINT_FILE = "model.pt"
# The card lives in its own module, which needs no torch; re-exported for existing callers.
__all__ = ["CARD_FILE", "PackageResult", "TrainingFacts", "machine_description", "read_reports",
           "write_model_card", "write_package"]


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
