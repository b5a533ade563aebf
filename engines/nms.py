"""Greedy non-maximum suppression on the host: pure numpy, or OpenCV's dnn NMS.

Both methods keep the same boxes: a box is suppressed when its IoU with a kept, higher-scoring
box is strictly greater than the threshold (as torchvision and OpenCV do), and equal scores are
visited in index order, so results are deterministic.
"""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

NMS_METHODS: tuple[str, ...] = ("numpy", "cv2")
IndexArray = npt.NDArray[np.intp]


def _check(
    boxes: npt.NDArray[np.floating], scores: npt.NDArray[np.floating], iou_threshold: float
) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {boxes.shape}")
    if scores.shape != (boxes.shape[0],):
        raise ValueError(f"scores must have shape [{boxes.shape[0]}], got {scores.shape}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")


def _check_max_keep(max_keep: int | None) -> None:
    if max_keep is not None and (isinstance(max_keep, bool) or max_keep < 0):
        raise ValueError(f"max_keep must be None or an integer >= 0, got {max_keep!r}")


def _check_method(method: str) -> None:
    if method not in NMS_METHODS:
        raise ValueError(f"NMS method must be one of {list(NMS_METHODS)}, got {method!r}")


def _numpy_nms(
    boxes: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], iou: float,
    max_keep: int | None = None,
) -> IndexArray:
    x1, y1, x2, y2 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    # Greedy NMS keeps boxes in score order, so the first `max_keep` kept are final: the
    # rest of the loop (most of it, with thousands of candidates) would only be thrown away.
    while order.size and (max_keep is None or len(keep) < max_keep):
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        overlap = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[overlap <= iou]
    return np.asarray(keep, np.intp)


def _cv2_rects(boxes: npt.NDArray[np.float64]) -> list[tuple[float, float, float, float]]:
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [(float(a), float(b), float(c), float(d)) for a, b, c, d in xywh]


def _cv2_scores(scores: npt.NDArray[np.float64]) -> list[float]:
    # OpenCV keeps only scores > a threshold >= 0 and holds them as float32. Dense ranks keep the
    # order and the ties exactly and are all > 0, so the threshold 0 drops nothing.
    _, rank = np.unique(scores, return_inverse=True)
    return (rank.reshape(-1) + 1).astype(np.float64).tolist()


def _cv2_keep(raw: object) -> IndexArray:
    return np.asarray(raw, np.intp).reshape(-1)


def nms_keep(
    boxes_xyxy: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    iou_threshold: float,
    method: str = "numpy",
    max_keep: int | None = None,
) -> IndexArray:
    """Indices of the boxes kept by greedy NMS, highest score first; at most `max_keep`."""
    _check(boxes_xyxy, scores, iou_threshold)
    _check_method(method)
    _check_max_keep(max_keep)
    if boxes_xyxy.shape[0] == 0:
        return np.zeros((0,), np.intp)
    boxes = boxes_xyxy.astype(np.float64)
    s = scores.astype(np.float64)
    if method == "numpy":
        return _numpy_nms(boxes, s, iou_threshold, max_keep)
    # OpenCV's top_k caps the candidates before NMS, not the kept boxes: cap after it.
    raw = cv2.dnn.NMSBoxes(_cv2_rects(boxes), _cv2_scores(s), 0.0, iou_threshold)
    return _cv2_keep(raw)[:max_keep]


def batched_nms_keep(
    boxes: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    class_ids: npt.NDArray[np.integer],
    iou_threshold: float,
    method: str = "numpy",
    max_keep: int | None = None,
) -> IndexArray:
    """Class-aware NMS: boxes of different classes never suppress each other; highest score
    first, at most `max_keep`."""
    _check(boxes, scores, iou_threshold)
    _check_method(method)
    _check_max_keep(max_keep)
    if class_ids.shape != scores.shape:
        raise ValueError(f"class_ids must have shape {scores.shape}, got {class_ids.shape}")
    if boxes.shape[0] == 0:
        return np.zeros((0,), np.intp)
    b = boxes.astype(np.float64)
    s = scores.astype(np.float64)
    if method == "cv2":
        ids = class_ids.astype(np.int32).tolist()
        raw = cv2.dnn.NMSBoxesBatched(_cv2_rects(b), _cv2_scores(s), ids, 0.0, iou_threshold)
        return _cv2_keep(raw)[:max_keep]
    # Shift each class to its own region of the plane so that one NMS pass is class-aware.
    span = float(b.max() - min(b.min(), 0.0)) + 1.0
    offsets = class_ids.astype(np.float64)[:, None] * span
    return _numpy_nms(b + offsets, s, iou_threshold, max_keep)
