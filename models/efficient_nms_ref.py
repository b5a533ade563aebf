"""A numpy reference of TensorRT's EfficientNMS_TRT plugin (plugin_version "1").

Semantics, read from NVIDIA/TensorRT plugin/efficientNMSPlugin (README and
efficientNMSInference.cu), per image:

1. Every (anchor, class) pair is a candidate if `score >= score_threshold` (the plugin's
   `gte_mp`); a class equal to `background_class` never is.
2. Candidates are sorted by score, descending, and only the first `PRE_NMS_TOP_K` (4096) go on.
3. Greedy suppression in that order: a candidate is dropped when its IoU with an already kept
   box of the same class (any class if `class_agnostic`) is `>= iou_threshold` (the plugin
   compares with `>=`; torchvision, OpenCV and the host NMS use `>`).
4. Kept boxes, still in score order, are cut at `max_output_boxes` and written to padded
   outputs: num_detections [B, 1] int32, boxes [B, K, 4] float corners x1 y1 x2 y2, scores
   [B, K], classes [B, K] int32; padding rows are zeros (the plugin memsets its outputs).

Ties. The plugin's sort is a stable radix sort, but with its atomic filter kernel the order in
which equal scores enter the sort is not fixed, so the spec leaves tie order open. This
reference (and the ONNX Runtime graph in `nms_graph`) fixes it: equal scores are visited in
ascending flat index `anchor * num_classes + class`, the order of the plugin's dense kernel
(used below a 0.007 threshold). Tests that need TensorRT agreement compare ties as sets.

IoU arithmetic mirrors ONNX Runtime's NonMaxSuppression (float32, coordinates reordered so min
<= max, no suppression by a box of zero area), so the in-graph ORT variant agrees with this
reference bit for bit on the decision for every pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from detserve.engines.detections import Detections

PRE_NMS_TOP_K = 4096
BoxCoding = Literal["corners", "center_size"]
F32 = npt.NDArray[np.float32]
I32 = npt.NDArray[np.int32]


@dataclass(frozen=True)
class NmsConfig:
    """The plugin attributes that change results (score_activation=0 is assumed)."""

    score_threshold: float
    iou_threshold: float
    max_output_boxes: int
    class_agnostic: bool = False
    background_class: int = -1
    box_coding: BoxCoding = "center_size"
    pre_nms_top_k: int = PRE_NMS_TOP_K

    def __post_init__(self) -> None:
        if not 0.0 <= self.score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {self.score_threshold}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"iou_threshold must be in (0, 1], got {self.iou_threshold}")
        if not 1 <= self.max_output_boxes <= self.pre_nms_top_k:
            raise ValueError(
                f"max_output_boxes must be in [1, {self.pre_nms_top_k}], "
                f"got {self.max_output_boxes}"
            )
        if self.box_coding not in ("corners", "center_size"):
            raise ValueError(
                f"box_coding must be 'corners' or 'center_size', got {self.box_coding!r}"
            )


@dataclass(frozen=True)
class NmsOutputs:
    """The four padded outputs of EfficientNMS for a batch."""

    num_detections: I32  # [B, 1]
    boxes: F32  # [B, K, 4]
    scores: F32  # [B, K]
    classes: I32  # [B, K]

    def image(self, i: int) -> Detections:
        """Image `i`'s valid rows (sliced by num_detections) as Detections."""
        n = int(self.num_detections[i, 0])
        return Detections(
            boxes=self.boxes[i, :n].astype(np.float32),
            scores=self.scores[i, :n].astype(np.float32),
            class_ids=self.classes[i, :n].astype(np.int64),
        )


def to_corners(boxes: F32, coding: BoxCoding) -> F32:
    """x1 y1 x2 y2 from `boxes [..., 4]`; centre-size uses `c -/+ size * 0.5` in float32."""
    b = boxes.astype(np.float32, copy=False)
    if coding == "corners":
        return b.copy()
    half = b[..., 2:4] * np.float32(0.5)
    return np.concatenate([b[..., 0:2] - half, b[..., 0:2] + half], axis=-1)


def iou_suppresses(box: F32, others: F32, iou_threshold: float) -> npt.NDArray[np.bool_]:
    """Whether `box [4]` suppresses each of `others [M, 4]`: IoU >= threshold, float32."""
    lo_a, hi_a = np.minimum(box[:2], box[2:]), np.maximum(box[:2], box[2:])
    lo_b = np.minimum(others[:, :2], others[:, 2:])
    hi_b = np.maximum(others[:, :2], others[:, 2:])
    i_lo, i_hi = np.maximum(lo_a, lo_b), np.minimum(hi_a, hi_b)
    overlaps = np.all(i_hi > i_lo, axis=1)
    i_wh = i_hi - i_lo
    inter = i_wh[:, 0] * i_wh[:, 1]
    area_a = (hi_a[0] - lo_a[0]) * (hi_a[1] - lo_a[1])
    wh_b = hi_b - lo_b
    area_b = wh_b[:, 0] * wh_b[:, 1]
    union = (area_a + area_b) - inter
    valid = overlaps & (inter > 0) & (area_a > 0) & (area_b > 0) & (union > 0)
    iou = np.divide(inter, union, out=np.zeros_like(inter), where=valid)
    result: npt.NDArray[np.bool_] = valid & (iou >= np.float32(iou_threshold))
    return result


def sorted_candidates(scores: F32, cfg: NmsConfig) -> npt.NDArray[np.intp]:
    """Flat indices (anchor * C + class) passing the threshold, best first, top-k cut."""
    flat = scores.reshape(-1)
    idx = np.flatnonzero(flat >= np.float32(cfg.score_threshold))
    if cfg.background_class >= 0:
        idx = idx[idx % scores.shape[1] != cfg.background_class]
    # A stable sort on -score over ascending indices puts equal scores in index order.
    order = np.argsort(-flat[idx], kind="stable")
    return idx[order][: cfg.pre_nms_top_k]


def _greedy(corners: F32, classes: npt.NDArray[np.intp], cfg: NmsConfig) -> list[int]:
    alive = np.ones(len(classes), bool)
    kept: list[int] = []
    for i in range(len(classes)):
        if not alive[i]:
            continue
        kept.append(i)
        if len(kept) == cfg.max_output_boxes:
            break
        rest = slice(i + 1, None)
        same = np.ones(len(classes) - i - 1, bool)
        if not cfg.class_agnostic:
            same = classes[rest] == classes[i]
        hit = iou_suppresses(corners[i], corners[rest], cfg.iou_threshold)
        alive[rest] &= ~(same & hit)
    return kept


def efficient_nms_image(boxes: F32, scores: F32, cfg: NmsConfig) -> Detections:
    """One image: boxes [N, 4] (per `cfg.box_coding`), scores [N, C] -> kept, best first."""
    num_classes = scores.shape[1]
    cand = sorted_candidates(scores.astype(np.float32, copy=False), cfg)
    anchors, classes = cand // num_classes, cand % num_classes
    corners = to_corners(boxes, cfg.box_coding)[anchors]
    kept = _greedy(corners, classes, cfg)
    return Detections(
        boxes=corners[kept].astype(np.float32),
        scores=scores.reshape(-1)[cand[kept]].astype(np.float32),
        class_ids=classes[kept].astype(np.int64),
    )


def efficient_nms(boxes: F32, scores: F32, cfg: NmsConfig) -> NmsOutputs:
    """EfficientNMS on a batch: boxes [B, N, 4], scores [B, N, C] -> padded outputs."""
    if boxes.ndim != 3 or boxes.shape[2] != 4:
        raise ValueError(f"boxes must have shape [B, N, 4], got {boxes.shape}")
    if scores.ndim != 3 or scores.shape[:2] != boxes.shape[:2]:
        raise ValueError(
            f"scores must have shape [{boxes.shape[0]}, {boxes.shape[1]}, C], got {scores.shape}"
        )
    batch, k = boxes.shape[0], cfg.max_output_boxes
    out = NmsOutputs(
        num_detections=np.zeros((batch, 1), np.int32),
        boxes=np.zeros((batch, k, 4), np.float32),
        scores=np.zeros((batch, k), np.float32),
        classes=np.zeros((batch, k), np.int32),
    )
    for b in range(batch):
        det = efficient_nms_image(boxes[b], scores[b], cfg)
        n = len(det)
        out.num_detections[b, 0] = n
        out.boxes[b, :n] = det.boxes
        out.scores[b, :n] = det.scores
        out.classes[b, :n] = det.class_ids
    return out


def efficient_nms_yolov8(raw: F32, cfg: NmsConfig) -> NmsOutputs:
    """EfficientNMS on a yolov8-layout output [B, 4 + nc, N] (cx, cy, w, h, class scores)."""
    if raw.ndim != 3 or raw.shape[1] < 5:
        raise ValueError(f"yolov8 output must have shape [B, 4 + nc, N], got {raw.shape}")
    if cfg.box_coding != "center_size":
        raise ValueError(f"yolov8 boxes are centre-size; box_coding was {cfg.box_coding!r}")
    t = np.ascontiguousarray(raw.transpose(0, 2, 1))
    return efficient_nms(t[..., :4], t[..., 4:], cfg)
