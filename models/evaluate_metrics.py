"""Detection metrics on given detections: COCO AP (faster-coco-eval) and the max-F1 threshold.

Every number carries its IoU in its name: `map50` is AP at IoU 0.5, `map` is AP averaged over
IoU 0.50:0.05:0.95 (COCO's primary metric), per-size APs are at IoU 0.50:0.95 like COCO's.
AP per size uses COCO's area ranges (small < 32^2 <= medium < 96^2 <= large) on annotation
`area`; a size or class with no ground truth gets None, not a made-up 0.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from faster_coco_eval import COCO, COCOeval_faster

from detserve.engines.detections import Detections

SIZES = ("small", "medium", "large")


@dataclass(frozen=True)
class ImageDetections:
    """The detections a model made on COCO image `image_id` (class ids are the model's)."""

    image_id: int
    detections: Detections


@dataclass(frozen=True)
class ClassAP:
    ap50: float | None  # IoU 0.5
    ap: float | None  # IoU 0.50:0.95


@dataclass(frozen=True)
class CocoMetrics:
    map50: float  # AP at IoU 0.5
    map: float  # AP at IoU 0.50:0.95
    ap_size: dict[str, float | None]  # AP at IoU 0.50:0.95 per COCO size
    ap_size50: dict[str, float | None]  # AP at IoU 0.5 per COCO size
    per_class: dict[str, ClassAP]
    n_images: int
    n_objects: int
    n_detections: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ThresholdChoice:
    """The score threshold with the highest F1 at IoU `iou` (detections kept when >= it)."""

    score_threshold: float
    f1: float
    precision: float
    recall: float
    iou: float


def _category_map(model_classes: Sequence[str], categories: Mapping[int, str]) -> dict[int, int]:
    """Model class index -> COCO category id, matched by name."""
    by_name = {name: cid for cid, name in categories.items()}
    unknown = sorted(set(categories.values()) - set(model_classes))
    if unknown:
        raise ValueError(f"dataset categories {unknown} are not classes of the model "
                         f"(model classes: {list(model_classes)})")
    return {k: by_name[n] for k, n in enumerate(model_classes) if n in by_name}


def _results(preds: Sequence[ImageDetections], cat_of: Mapping[int, int]) -> list[dict[str, Any]]:
    out = []
    for p in preds:
        d = p.detections
        for box, score, cls in zip(d.boxes.tolist(), d.scores.tolist(), d.class_ids.tolist(),
                                   strict=True):
            if int(cls) not in cat_of:
                continue
            x1, y1, x2, y2 = box
            out.append({"image_id": p.image_id, "category_id": cat_of[int(cls)],
                        "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(score)})
    return out


def _mean_valid(values: npt.NDArray[np.float64]) -> float | None:
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else None


def _evaluator(gt: dict[str, Any], results: list[dict[str, Any]]) -> COCOeval_faster:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        ev = COCOeval_faster(coco_gt, coco_gt.loadRes(results), "bbox",
                             print_function=lambda *_: None)
        ev.evaluate()
        ev.accumulate()
    return ev


def coco_metrics(gt: dict[str, Any], preds: Sequence[ImageDetections],
                 model_classes: Sequence[str]) -> CocoMetrics:
    """COCO bbox AP of `preds` against the COCO dict `gt` (categories matched by name)."""
    categories = {int(c["id"]): str(c["name"]) for c in gt["categories"]}
    cat_of = _category_map(model_classes, categories)
    results = _results(preds, cat_of)
    gt_objects = len(gt.get("annotations", []))
    base = dict(n_images=len(gt["images"]), n_objects=gt_objects, n_detections=len(results))
    if not results:  # nothing detected: every AP with ground truth is 0
        zero = 0.0 if gt_objects else None
        return CocoMetrics(0.0, 0.0, dict.fromkeys(SIZES, zero), dict.fromkeys(SIZES, zero),
                           {n: ClassAP(zero, zero) for n in categories.values()}, **base)
    ev = _evaluator(gt, results)
    prec = np.asarray(ev.eval["precision"])  # [iou, recall, class, area, maxdets]
    cat_ids = list(ev.params.catIds)
    last = len(ev.params.maxDets) - 1
    per_class = {}
    for cid, name in sorted(categories.items()):
        k = cat_ids.index(cid)
        per_class[name] = ClassAP(_mean_valid(prec[0, :, k, 0, last]),
                                  _mean_valid(prec[:, :, k, 0, last]))
    sizes = {s: _mean_valid(prec[:, :, :, a + 1, last]) for a, s in enumerate(SIZES)}
    sizes50 = {s: _mean_valid(prec[0, :, :, a + 1, last]) for a, s in enumerate(SIZES)}
    return CocoMetrics(map50=_mean_valid(prec[0, :, :, 0, last]) or 0.0,
                       map=_mean_valid(prec[:, :, :, 0, last]) or 0.0,
                       ap_size=sizes, ap_size50=sizes50, per_class=per_class, **base)


def box_iou(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """IoU matrix of x1y1x2y2 boxes `a [N,4]` and `b [M,4]`."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    out: npt.NDArray[np.float64] = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return out


def _true_positives(det: Detections, gt_boxes: npt.NDArray[np.float32],
                    gt_classes: npt.NDArray[np.int64], iou: float) -> npt.NDArray[np.bool_]:
    """Greedy matching in score order, per class (as COCO does): which detections are TP."""
    order = np.argsort(-det.scores, kind="stable")
    tp = np.zeros(len(det), bool)
    taken = np.zeros(len(gt_boxes), bool)
    ious = box_iou(det.boxes, gt_boxes) if len(gt_boxes) else np.zeros((len(det), 0))
    for i in order:
        cand = np.flatnonzero((gt_classes == det.class_ids[i]) & ~taken & (ious[i] >= iou))
        if cand.size:
            j = cand[np.argmax(ious[i, cand])]
            taken[j] = tp[i] = True
    return tp


def best_f1_threshold(gt_boxes: Sequence[npt.NDArray[np.float32]],
                      gt_classes: Sequence[npt.NDArray[np.int64]],
                      preds: Sequence[Detections], iou: float = 0.5) -> ThresholdChoice:
    """The score threshold maximising F1 over all images (pooled over classes).

    `gt_boxes[i]`, `gt_classes[i]` and `preds[i]` describe image i, class ids in the model's
    numbering. Ties keep the higher threshold (fewer detections for the same F1).
    """
    if not len(gt_boxes) == len(gt_classes) == len(preds):
        raise ValueError(f"need one entry per image, got {len(gt_boxes)} gt box sets, "
                         f"{len(gt_classes)} gt class sets and {len(preds)} predictions")
    n_gt = sum(len(b) for b in gt_boxes)
    if n_gt == 0:
        raise ValueError("cannot choose a threshold on a set with no ground-truth objects")
    scores = np.concatenate([p.scores for p in preds]) if preds else np.zeros(0)
    tps = np.concatenate([_true_positives(p, b, c, iou)
                          for p, b, c in zip(preds, gt_boxes, gt_classes, strict=True)])
    if scores.size == 0:
        return ThresholdChoice(1.0, 0.0, 0.0, 0.0, iou)
    order = np.argsort(-scores, kind="stable")
    scores, tps = scores[order], tps[order]
    # Only the last detection of a run of equal scores is a reachable cut.
    last = np.append(scores[1:] != scores[:-1], True)
    cum_tp = np.cumsum(tps)[last]
    kept = (np.arange(scores.size) + 1)[last]
    precision, recall = cum_tp / kept, cum_tp / n_gt
    f1 = np.where(cum_tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0)
    best = int(np.argmax(f1))
    return ThresholdChoice(float(scores[last][best]), float(f1[best]), float(precision[best]),
                           float(recall[best]), iou)
