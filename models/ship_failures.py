"""False positives and false negatives at the served score threshold, with what went wrong.

Matching is COCO's at IoU 0.5, per image and class, greedy in score order. Each failure says
why, so a reviewer can tell a labelling question from a model weakness:
- a false positive is a *duplicate* (its object was already matched by a higher score), a
  *wrong class* (it sits on an object of another class), *poorly localised* (it overlaps an
  object of its class at IoU 0.1-0.5), or *background* (it overlaps nothing);
- a false negative was *below the threshold* (a box of its class was there, scored too low),
  *taken for another class*, *poorly localised*, or had *no detection* at all.
The worst come first: false positives by score (most confident first), false negatives by the
best score any box of their class gave them (lowest first), then by size (biggest first).
Sizes are COCO's areas: small < 32², medium < 96², large.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detserve.engines.detections import Detections
from detserve.models.evaluate_metrics import ImageDetections, box_iou

MATCH_IOU = 0.5
LOCALISE_IOU = 0.1
SIZES = ("small", "medium", "large")


def size_of(area: float) -> str:
    return "small" if area < 32**2 else "medium" if area < 96**2 else "large"


@dataclass(frozen=True)
class Failure:
    kind: str  # "FP" or "FN"
    image_id: int
    class_name: str
    size: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in image pixels
    score: float  # FP: its score; FN: the best score a box of its class gave it (0: none)
    reason: str

    @property
    def sort_key(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        if self.kind == "FP":
            return (-self.score, 0.0)
        return (self.score, -(x2 - x1) * (y2 - y1))


@dataclass(frozen=True)
class ClassCounts:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None


@dataclass(frozen=True)
class ImageTruth:
    """One image's ground truth in the model's class numbering, boxes x1y1x2y2."""

    boxes: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int64]
    areas: npt.NDArray[np.float64]


def truth_by_image(gt: Mapping[str, Any], classes: Sequence[str]) -> dict[int, ImageTruth]:
    """COCO annotations per image id (categories matched to `classes` by name)."""
    index = {name: k for k, name in enumerate(classes)}
    cat = {int(c["id"]): index.get(str(c["name"]), -1) for c in gt["categories"]}
    rows: dict[int, list[Any]] = {int(i["id"]): [] for i in gt["images"]}
    for a in gt["annotations"]:
        rows.setdefault(int(a["image_id"]), []).append(a)
    out = {}
    for image_id, anns in rows.items():
        xywh = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4)
        out[image_id] = ImageTruth(
            np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1),
            np.array([cat[int(a["category_id"])] for a in anns], np.int64),
            np.array([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns]))
    return out


def _greedy(det: Detections, truth: ImageTruth) -> tuple[npt.NDArray[np.int64], npt.NDArray[
        np.float64]]:
    """Per detection the matched ground-truth index (-1: none), and the IoU matrix."""
    ious = (box_iou(det.boxes, truth.boxes) if len(truth.boxes) and len(det)
            else np.zeros((len(det), len(truth.boxes))))
    match = np.full(len(det), -1, np.int64)
    taken = np.zeros(len(truth.boxes), bool)
    for i in np.argsort(-det.scores, kind="stable"):
        cand = np.flatnonzero((truth.classes == det.class_ids[i]) & ~taken
                              & (ious[i] >= MATCH_IOU))
        if cand.size:
            j = int(cand[np.argmax(ious[i, cand])])
            taken[j], match[i] = True, j
    return match, ious


def _fp_reason(i: int, det: Detections, truth: ImageTruth, ious: npt.NDArray[np.float64],
               classes: Sequence[str]) -> str:
    if not len(truth.boxes):
        return "background: the image has no object there"
    same = truth.classes == det.class_ids[i]
    row = ious[i]
    if same.any() and row[same].max() >= MATCH_IOU:
        return "duplicate: its object was already matched by a higher-scoring box"
    other = ~same
    if other.any() and row[other].max() >= MATCH_IOU:
        j = int(np.flatnonzero(other)[np.argmax(row[other])])
        return f"wrong class: it sits on a {classes[truth.classes[j]]} (IoU {row[j]:.2f})"
    if same.any() and row[same].max() >= LOCALISE_IOU:
        return f"poorly localised: IoU {row[same].max():.2f} with a {classes[det.class_ids[i]]}"
    return "background: it overlaps no labelled object"


def _fn_reason(j: int, truth: ImageTruth, everything: Detections, threshold: float,
               classes: Sequence[str]) -> tuple[str, float]:
    """Why ground truth `j` was missed, and the best score a box of its class gave it."""
    if not len(everything):
        return "no detection at all in the image", 0.0
    iou = box_iou(truth.boxes[j : j + 1], everything.boxes)[0]
    same = everything.class_ids == truth.classes[j]
    hit = same & (iou >= MATCH_IOU)
    best = float(everything.scores[hit].max()) if hit.any() else 0.0
    if hit.any() and best < threshold:
        return f"below the threshold: best box of its class scored {best:.2f} < {threshold:g}", best
    other = ~same & (iou >= MATCH_IOU) & (everything.scores >= threshold)
    if other.any():
        k = int(np.flatnonzero(other)[np.argmax(everything.scores[other])])
        return (f"taken for a {classes[everything.class_ids[k]]} "
                f"({everything.scores[k]:.2f})"), best
    loose = same & (iou >= LOCALISE_IOU) & (everything.scores >= threshold)
    if loose.any():
        return f"poorly localised: best box of its class at IoU {iou[loose].max():.2f}", best
    if hit.any():  # a matching box above the threshold went to another object of its class
        return f"crowded: its box ({best:.2f}) matched a neighbour instead", best
    return "no detection of its class near it", best


@dataclass(frozen=True)
class Failures:
    items: tuple[Failure, ...]
    counts: dict[str, ClassCounts]  # per class, at the threshold
    threshold: float

    def of(self, kind: str, class_name: str, size: str) -> list[Failure]:
        """The failures of one group, worst first."""
        return sorted((f for f in self.items if (f.kind, f.class_name, f.size)
                       == (kind, class_name, size)), key=lambda f: f.sort_key)

    def total(self, kind: str) -> int:
        return sum(1 for f in self.items if f.kind == kind)


def find_failures(gt: Mapping[str, Any], preds: Sequence[ImageDetections],
                  classes: Sequence[str], threshold: float) -> Failures:
    """Every FP and FN at `threshold` over `preds` (decoded at eval's low threshold)."""
    truths = truth_by_image(gt, classes)
    items: list[Failure] = []
    tp = {c: 0 for c in classes}
    for p in preds:
        truth = truths.get(p.image_id, ImageTruth(np.zeros((0, 4), np.float32),
                                                  np.zeros(0, np.int64), np.zeros(0)))
        det = p.detections.select(p.detections.scores >= threshold)
        match, ious = _greedy(det, truth)
        for i in range(len(det)):
            name = classes[int(det.class_ids[i])]
            if match[i] >= 0:
                tp[name] += 1
                continue
            x1, y1, x2, y2 = (float(v) for v in det.boxes[i])
            items.append(Failure("FP", p.image_id, name, size_of((x2 - x1) * (y2 - y1)),
                                 (x1, y1, x2, y2), float(det.scores[i]),
                                 _fp_reason(i, det, truth, ious, classes)))
        for j in sorted(set(range(len(truth.boxes))) - set(match[match >= 0].tolist())):
            reason, best = _fn_reason(j, truth, p.detections, threshold, classes)
            box = tuple(float(v) for v in truth.boxes[j])
            items.append(Failure("FN", p.image_id, classes[int(truth.classes[j])],
                                 size_of(float(truth.areas[j])),
                                 (box[0], box[1], box[2], box[3]), best, reason))
    counts = {c: ClassCounts(tp[c], sum(1 for f in items if (f.kind, f.class_name) == ("FP", c)),
                             sum(1 for f in items if (f.kind, f.class_name) == ("FN", c)))
              for c in classes}
    return Failures(tuple(items), counts, threshold)


def f1_at_threshold(failures: Failures) -> tuple[float, float, float]:
    """(precision, recall, F1) pooled over classes at the failures' threshold."""
    tp = sum(c.tp for c in failures.counts.values())
    fp, fn = failures.total("FP"), failures.total("FN")
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return p, r, (2 * p * r / (p + r) if p + r else 0.0)
