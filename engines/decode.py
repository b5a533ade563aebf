"""Raw network outputs -> per-image Detections in the caller's original pixels.

Two layouts (see the manifest's `output.format`):
- `yolov8`: one tensor `[B, 4 + nc, N]` (cx, cy, w, h in input pixels, then per-class scores);
  host NMS runs here.
- `end2end`: EfficientNMS's four outputs `num_dets [B, 1]`, `det_boxes [B, K, 4]` (corners),
  `det_scores [B, K]`, `det_classes [B, K]`; only the first `num_dets[i]` rows of image i are
  real, the rest is padding that must never reach a caller. The IoU threshold was fixed when the
  graph was exported; per-request score threshold, class filter and max_detections apply here.
- `torchvision`: three outputs per image, in batch order, as torchvision's detectors return them
  (a list of dicts, one per image): `boxes [N_i, 4]` (corners in input pixels), `labels [N_i]`
  (class `classes[j]` is label `j + output.label_offset`; torchvision's label 0 is the
  background) and `scores [N_i]`. N_i varies per image, so there is no padding. NMS, its IoU
  and the graph's own score floor and detection cap were fixed at export; per-request score
  threshold, class filter and max_detections apply here, as for `end2end`.
A score passes the request's threshold when it is >= the threshold.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.detections import Detections
from detserve.engines.manifest import Manifest
from detserve.engines.nms import batched_nms_keep

FloatArray = npt.NDArray[np.float32]


def _map_back(boxes: FloatArray, box: Letterbox) -> FloatArray:
    """Input pixels -> original pixels: (v - pad) / scale per axis, clipped to the image."""
    out = np.empty_like(boxes, dtype=np.float32)
    out[:, 0::2] = (boxes[:, 0::2] - box.pad_x) / box.scale_x
    out[:, 1::2] = (boxes[:, 1::2] - box.pad_y) / box.scale_y
    np.clip(out[:, 0::2], 0.0, box.orig_width, out=out[:, 0::2])
    np.clip(out[:, 1::2], 0.0, box.orig_height, out=out[:, 1::2])
    return out


def _class_mask(
    class_ids: npt.NDArray[np.int64], wanted: frozenset[int] | None
) -> npt.NDArray[np.bool_]:
    if wanted is None:
        return np.ones(class_ids.shape, np.bool_)
    return np.isin(class_ids, np.fromiter(wanted, np.int64, len(wanted)))


def _candidates(
    class_scores: FloatArray, threshold: float, multi_label: bool
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64], FloatArray]:
    """(anchor index, class id, score) of every candidate at or above `threshold`."""
    if multi_label:
        class_ids, anchors = np.nonzero(class_scores >= threshold)
        return anchors, class_ids.astype(np.int64), class_scores[class_ids, anchors]
    # One class per anchor (its best), as Ultralytics' deployed NMS does.
    best = class_scores.max(axis=0)
    anchors = np.flatnonzero(best >= threshold)
    class_ids = class_scores[:, anchors].argmax(axis=0).astype(np.int64)
    return anchors, class_ids, best[anchors]


def _decode_yolov8_image(
    pred: FloatArray, manifest: Manifest, box: Letterbox, params: DecodeParams, nms_method: str
) -> Detections:
    post = manifest.postprocess
    cand, class_ids, scores = _candidates(pred[4:], params.score_threshold, post.multi_label)
    # The class filter applies to the candidate's class (the best one, without multi_label).
    keep = _class_mask(class_ids, params.class_ids)
    cand, class_ids, scores = cand[keep], class_ids[keep], scores[keep]
    if cand.size > post.pre_nms_top_k:
        top = np.argsort(-scores, kind="stable")[: post.pre_nms_top_k]
        cand, class_ids, scores = cand[top], class_ids[top], scores[top]
    cx, cy, w, h = pred[0, cand], pred[1, cand], pred[2, cand], pred[3, cand]
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1).astype(np.float32)
    kept = batched_nms_keep(xyxy, scores, class_ids, params.iou_threshold, nms_method,
                            params.max_detections)
    return Detections(
        boxes=_map_back(xyxy[kept], box),
        scores=scores[kept].astype(np.float32),
        class_ids=class_ids[kept],
    )


def _decode_yolov8(
    outputs: Sequence[npt.NDArray[np.generic]],
    manifest: Manifest,
    letterboxes: Sequence[Letterbox],
    params: Sequence[DecodeParams],
    nms_method: str,
) -> list[Detections]:
    if len(outputs) != 1:
        raise ValueError(f"yolov8 output format expects 1 output, got {len(outputs)}")
    raw = np.asarray(outputs[0], np.float32)
    rows = 4 + manifest.num_classes
    if raw.ndim != 3 or raw.shape[1] != rows:
        raise ValueError(
            f"yolov8 output must have shape [B, {rows}, N] for {manifest.num_classes} classes, "
            f"got {raw.shape}"
        )
    _check_batch(raw.shape[0], letterboxes, params)
    return [
        _decode_yolov8_image(raw[i], manifest, letterboxes[i], params[i], nms_method)
        for i in range(raw.shape[0])
    ]


def _decode_end2end(
    outputs: Sequence[npt.NDArray[np.generic]],
    manifest: Manifest,
    letterboxes: Sequence[Letterbox],
    params: Sequence[DecodeParams],
) -> list[Detections]:
    if len(outputs) != 4:
        raise ValueError(
            f"end2end output format expects 4 outputs (num_dets, det_boxes, det_scores, "
            f"det_classes), got {len(outputs)}"
        )
    num = np.asarray(outputs[0]).reshape(-1).astype(np.int64)
    boxes = np.asarray(outputs[1], np.float32)
    scores = np.asarray(outputs[2], np.float32)
    classes = np.asarray(outputs[3]).astype(np.int64)
    b = num.shape[0]
    k = boxes.shape[1] if boxes.ndim == 3 else -1
    if boxes.shape != (b, k, 4) or scores.shape != (b, k) or classes.shape != (b, k):
        raise ValueError(
            f"end2end outputs must be num_dets [B,1], det_boxes [B,K,4], det_scores [B,K], "
            f"det_classes [B,K]; got {outputs[0].shape}, {boxes.shape}, {scores.shape}, "
            f"{classes.shape}"
        )
    _check_batch(b, letterboxes, params)
    results = []
    for i in range(b):
        n = int(num[i])
        if not 0 <= n <= k:
            raise ValueError(f"end2end num_dets[{i}] = {n} is outside [0, {k}]")
        results.append(
            _select_in_graph(
                boxes[i, :n], scores[i, :n], classes[i, :n], manifest, letterboxes[i], params[i]
            )
        )
    return results


def _select_in_graph(
    boxes: FloatArray,
    scores: FloatArray,
    classes: npt.NDArray[np.int64],
    manifest: Manifest,
    box: Letterbox,
    params: DecodeParams,
) -> Detections:
    """Detections of a graph that ran NMS itself: the request's threshold, classes and cap."""
    bad = (classes < 0) | (classes >= manifest.num_classes)
    if bad.any():
        nc = manifest.num_classes
        if manifest.output_format == "torchvision":
            low = manifest.label_offset  # name the value the graph emitted, not the class id
            raise ValueError(
                f"torchvision labels has label {int(classes[bad][0]) + low} outside "
                f"[{low}, {low + nc}) for {nc} classes with output.label_offset {low}"
            )
        raise ValueError(
            f"end2end det_classes has class id {int(classes[bad][0])} outside "
            f"[0, {nc}) for {nc} classes"
        )
    keep = np.flatnonzero(
        (scores >= params.score_threshold) & _class_mask(classes, params.class_ids)
    )
    keep = keep[np.argsort(-scores[keep], kind="stable")][: params.max_detections]
    return Detections(_map_back(boxes[keep], box), scores[keep], classes[keep])


def _decode_torchvision(
    outputs: Sequence[npt.NDArray[np.generic]],
    manifest: Manifest,
    letterboxes: Sequence[Letterbox],
    params: Sequence[DecodeParams],
) -> list[Detections]:
    if len(outputs) % 3 or not outputs:
        raise ValueError(
            f"torchvision output format expects 3 outputs per image (boxes, labels, scores), "
            f"got {len(outputs)}"
        )
    b = len(outputs) // 3
    _check_batch(b, letterboxes, params)
    results = []
    for i in range(b):
        boxes = np.asarray(outputs[3 * i], np.float32)
        labels = np.asarray(outputs[3 * i + 1])
        scores = np.asarray(outputs[3 * i + 2], np.float32)
        n = boxes.shape[0] if boxes.ndim == 2 else -1
        if boxes.shape != (n, 4) or labels.shape != (n,) or scores.shape != (n,):
            raise ValueError(
                f"torchvision outputs of image {i} must be boxes [N,4], labels [N], scores [N]; "
                f"got {boxes.shape}, {labels.shape}, {scores.shape}"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"torchvision labels of image {i} must be integers, got {labels.dtype}"
            )
        classes = labels.astype(np.int64) - manifest.label_offset
        results.append(
            _select_in_graph(boxes, scores, classes, manifest, letterboxes[i], params[i])
        )
    return results


def _check_batch(b: int, letterboxes: Sequence[Letterbox], params: Sequence[DecodeParams]) -> None:
    if len(letterboxes) != b or len(params) != b:
        raise ValueError(
            f"batch of {b} outputs needs {b} letterboxes and {b} params, "
            f"got {len(letterboxes)} and {len(params)}"
        )


def decode_batch(
    outputs: Sequence[npt.NDArray[np.generic]],
    manifest: Manifest,
    letterboxes: Sequence[Letterbox],
    params: Sequence[DecodeParams],
    nms_method: str = "numpy",
) -> list[Detections]:
    """One Detections per image of the batch, boxes in each image's original pixels."""
    if manifest.output_format == "yolov8":
        return _decode_yolov8(outputs, manifest, letterboxes, params, nms_method)
    if manifest.output_format == "end2end":
        return _decode_end2end(outputs, manifest, letterboxes, params)
    if manifest.output_format == "torchvision":
        return _decode_torchvision(outputs, manifest, letterboxes, params)
    raise ValueError(f"unknown output format {manifest.output_format!r}")
