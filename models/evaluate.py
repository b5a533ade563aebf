"""`detserve-model eval`: a model package over a COCO-format set, through the server's own path.

Images go through `detserve.engines.pipeline.detect_images` (the server's preprocessing, engine
and decoder), decoded at score >= 0.001 with the manifest's NMS IoU, as COCO evaluation expects;
metrics come from faster-coco-eval (see evaluate_metrics). The score threshold a package serves
with is chosen on val (max F1 at IoU 0.5) and written to its manifest; a set whose COCO `info`
says it is the test split is refused for that, so test never influences the model.

The engine is the package's own unless one is named (an OpenVINO IR runs on OpenVINO). A package
whose graph already applies a score threshold above 0.001 (in-graph NMS from `add-nms`) cannot
show the detections below it; the report says so in a warning, since its AP then reads low.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from detserve.engines.base import DecodeParams, Engine
from detserve.engines.drift_reference import METADATA_KEY
from detserve.engines.manifest import (
    Manifest,
    ModelPackage,
    default_engine_kind,
    load_package,
    write_manifest,
)
from detserve.models.coco import CocoSet, load_coco
from detserve.models.eval_reference import eval_reference
from detserve.models.evaluate_metrics import (
    CocoMetrics,
    ImageDetections,
    ThresholdChoice,
    best_f1_threshold,
    coco_metrics,
)

EVAL_SCORE_THRESHOLD = 0.001
EVAL_MAX_DETECTIONS = 100
F1_IOU = 0.5


class SplitError(ValueError):
    """Choosing a threshold on the test split was asked for, and refused."""


@dataclass(frozen=True)
class EvalReport:
    model: str
    package: str
    dataset: str
    split: str | None
    engine: str
    input_size: str
    nms_iou: float
    metrics: CocoMetrics
    threshold: ThresholdChoice | None
    seconds: float
    warnings: tuple[str, ...] = ()
    # Histograms of detections and max score per image at the serving threshold: the server's
    # distribution-shift reference (models/eval_reference.py).
    reference: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_markdown(self) -> str:
        return report_markdown(self)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def report_markdown(r: EvalReport) -> str:
    m = r.metrics
    lines = [
        f"### {r.model} on {r.dataset} (split: {r.split or 'unknown'})",
        "",
        f"Engine {r.engine}, input {r.input_size}, NMS IoU {r.nms_iou}, "
        f"{m.n_images} images, {m.n_objects} objects, {m.n_detections} detections "
        f"(score >= {EVAL_SCORE_THRESHOLD}), {r.seconds:.1f} s.",
        "",
        *[f"{w}\n" for w in r.warnings],
        "| metric | IoU | value |",
        "|---|---|---|",
        f"| mAP | 0.5 | {_fmt(m.map50)} |",
        f"| mAP | 0.50:0.95 | {_fmt(m.map)} |",
    ]
    for size, ap in m.ap_size.items():
        lines.append(f"| AP_{size} | 0.50:0.95 | {_fmt(ap)} |")
    for size, ap in m.ap_size50.items():
        lines.append(f"| AP_{size} | 0.5 | {_fmt(ap)} |")
    lines += ["", "| class | AP (IoU 0.5) | AP (IoU 0.50:0.95) |", "|---|---|---|"]
    lines += [f"| {n} | {_fmt(c.ap50)} | {_fmt(c.ap)} |" for n, c in m.per_class.items()]
    if r.threshold is not None:
        t = r.threshold
        lines += ["", f"Chosen score_threshold {t.score_threshold:.3f}: max F1 {t.f1:.3f} at IoU "
                  f"{t.iou} (precision {t.precision:.3f}, recall {t.recall:.3f})."]
    return "\n".join(lines) + "\n"


def predict_set(engine: Engine, coco: CocoSet, limit: int | None = None,
                batch_size: int = 8) -> list[ImageDetections]:
    """Detections of `engine` on the (first `limit`) images of `coco`, at COCO-eval settings."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    from detserve.engines.pipeline import detect_images

    post = engine.manifest.postprocess
    params = DecodeParams(EVAL_SCORE_THRESHOLD, post.iou_threshold, EVAL_MAX_DETECTIONS)
    images = coco.images[:limit] if limit is not None else coco.images
    out: list[ImageDetections] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        dets = detect_images(engine, [coco.read_rgb(i) for i in chunk], params)
        out += [ImageDetections(i.id, d) for i, d in zip(chunk, dets, strict=True)]
    return out


def _subset(raw: Mapping[str, Any], image_ids: set[int]) -> dict[str, Any]:
    return {**raw, "images": [i for i in raw["images"] if int(i["id"]) in image_ids],
            "annotations": [a for a in raw["annotations"] if int(a["image_id"]) in image_ids]}


def choose_threshold(gt: Mapping[str, Any], preds: list[ImageDetections],
                     classes: tuple[str, ...]) -> ThresholdChoice:
    """Max-F1 (IoU 0.5) threshold of `preds` against the COCO dict `gt`; refuses the test split."""
    split = dataset_split(gt)
    if split == "test":
        raise SplitError("refusing to choose score_threshold on the test split; use val")
    index = {name: k for k, name in enumerate(classes)}
    cat_to_class = {int(c["id"]): index.get(str(c["name"]), -1) for c in gt["categories"]}
    boxes, ids, dets = [], [], []
    by_image: dict[int, list[Any]] = {}
    for a in gt["annotations"]:
        by_image.setdefault(int(a["image_id"]), []).append(a)
    for p in preds:
        anns = by_image.get(p.image_id, [])
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        boxes.append(np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1))
        ids.append(np.array([cat_to_class[int(a["category_id"])] for a in anns], np.int64))
        dets.append(p.detections)
    return best_f1_threshold(boxes, ids, dets, F1_IOU)


def dataset_split(gt: Mapping[str, Any]) -> str | None:
    info = gt.get("info") or {}
    split = info.get("split") if isinstance(info, Mapping) else None
    return str(split) if split is not None else None


def graph_threshold_warning(manifest: Manifest, label: str) -> str | None:
    """A warning when the graph itself drops detections eval would count: in-graph NMS with a
    score threshold above eval's, or fewer output boxes than eval keeps."""
    nms = manifest.metadata.get("nms_graph")
    if manifest.output_format != "end2end" or not isinstance(nms, Mapping):
        return None
    score = float(nms.get("score_threshold", 0.0))
    boxes = int(nms.get("max_output_boxes", EVAL_MAX_DETECTIONS))
    hidden = []
    if score > EVAL_SCORE_THRESHOLD:
        hidden.append(f"scores below {score:g} (eval counts from {EVAL_SCORE_THRESHOLD:g})")
    if boxes < EVAL_MAX_DETECTIONS:
        hidden.append(f"boxes beyond {boxes} per image (eval keeps {EVAL_MAX_DETECTIONS})")
    if not hidden:
        return None
    return (f"WARNING: {label}'s graph applies its own NMS settings "
            f"(metadata.nms_graph) and hides {' and '.join(hidden)}, so its AP reads lower "
            f"than the same model's with host NMS; for a like-for-like comparison evaluate a "
            f"copy made with `detserve-model add-nms --score-threshold {EVAL_SCORE_THRESHOLD:g} "
            f"--max-detections {EVAL_MAX_DETECTIONS}`.")


def evaluate_package(package: str | Path | ModelPackage, data: str | Path,
                     engine_kind: str | None = None,
                     engine_options: Mapping[str, Any] | None = None,
                     limit: int | None = None, choose: bool = False,
                     batch_size: int = 8) -> EvalReport:
    """Evaluate `package` on the COCO set `data` (json, or a folder with annotations.json).
    `engine_kind` None: the package's own (engines.manifest.default_engine_kind)."""
    from detserve.engines.factory import create_engine

    pkg = package if isinstance(package, ModelPackage) else load_package(package)
    coco = load_coco(data)
    man = pkg.manifest
    engine_kind = engine_kind or default_engine_kind(man)
    warning = graph_threshold_warning(man, pkg.root.name)
    started = time.perf_counter()
    engine = create_engine(pkg, engine_kind, engine_options)
    try:
        preds = predict_set(engine, coco, limit, batch_size)
    finally:
        engine.close()
    gt = _subset(coco.raw, {p.image_id for p in preds})
    metrics = coco_metrics(gt, preds, man.classes)
    threshold = choose_threshold(gt, preds, man.classes) if choose else None
    serving = man.postprocess.score_threshold if threshold is None else threshold.score_threshold
    reference = eval_reference(preds, serving, {"dataset": str(coco.path),
                                                "split": dataset_split(coco.raw)})
    return EvalReport(
        model=f"{man.name}@{man.version}", package=str(pkg.root), dataset=str(coco.path),
        split=dataset_split(coco.raw), engine=engine_kind,
        input_size=f"{man.input_width}x{man.input_height}", nms_iou=man.postprocess.iou_threshold,
        metrics=metrics, threshold=threshold, seconds=time.perf_counter() - started,
        warnings=() if warning is None else (warning,), reference=reference if preds else None)


def apply_threshold(package: str | Path, report: EvalReport) -> Path:
    """Write the report's chosen threshold, val metrics and drift reference into the package's
    manifest."""
    if report.threshold is None:
        raise ValueError("the report has no chosen threshold (evaluate with choose=True)")
    if report.split == "test":
        raise SplitError("refusing to write a threshold chosen on the test split")
    pkg = load_package(package)
    man = pkg.manifest
    m = report.metrics
    meta = dict(man.metadata)
    meta["val_metrics"] = {
        "dataset": report.dataset, "images": m.n_images, "objects": m.n_objects,
        "engine": report.engine, "mAP@0.5": round(m.map50, 4), "mAP@0.5:0.95": round(m.map, 4),
        **{f"AP_{s}@0.5:0.95": None if v is None else round(v, 4) for s, v in m.ap_size.items()},
    }
    meta["score_threshold_choice"] = {
        "method": f"max F1 at IoU {report.threshold.iou}", "f1": round(report.threshold.f1, 4),
        "precision": round(report.threshold.precision, 4),
        "recall": round(report.threshold.recall, 4), "dataset": report.dataset}
    post = replace(man.postprocess, score_threshold=round(report.threshold.score_threshold, 4))
    if report.reference is not None:  # counted at the new threshold
        meta[METADATA_KEY] = dict(report.reference)
    path: Path = write_manifest(replace(man, postprocess=post, metadata=meta), pkg.root)
    return path


def write_report(report: EvalReport, out_dir: str | Path, stem: str = "eval") -> tuple[Path, Path]:
    """`<stem>.json` and `<stem>.md` in `out_dir`; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    js, md = out / f"{stem}.json", out / f"{stem}.md"
    js.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    md.write_text(report.to_markdown())
    return js, md


__all__ = ["EvalReport", "SplitError", "apply_threshold", "choose_threshold", "evaluate_package",
           "graph_threshold_warning", "predict_set", "write_report"]
