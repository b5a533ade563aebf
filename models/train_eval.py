"""Quick in-training validation: the PyTorch model on val scenes, scored with faster-coco-eval.

This is the training loop's progress signal only. The numbers that go into a model package come
from `detserve-model eval`, which runs the exported ONNX through the server's own engine and
decoder. Here the same letterbox geometry is used, so the two should agree closely.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from faster_coco_eval import COCO, COCOeval_faster
from torch import Tensor, nn

from detserve.models.train_data import Sample, letterbox


@dataclass(frozen=True)
class QuickMetrics:
    """COCO bbox AP on val; `map50` at IoU 0.5, `map` averaged over IoU 0.5:0.95."""

    map50: float
    map: float
    ap_small: float
    ap_medium: float
    ap_large: float

    def as_dict(self) -> dict[str, float]:
        return {"mAP@0.5": self.map50, "mAP@0.5:0.95": self.map, "AP_small@0.5:0.95":
                self.ap_small, "AP_medium@0.5:0.95": self.ap_medium,
                "AP_large@0.5:0.95": self.ap_large}


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS; returns kept indices, highest score first."""
    order = scores.argsort(descending=True)
    boxes = boxes[order]
    area = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0).prod(1)
    lt = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    rb = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(2)
    iou = inter / (area[:, None] + area[None, :] - inter + 1e-9)
    suppressed = torch.zeros(len(boxes), dtype=torch.bool)
    keep = []
    for i in range(len(boxes)):
        if suppressed[i]:
            continue
        keep.append(i)
        suppressed |= iou[i] > iou_threshold
    return order[torch.tensor(keep, dtype=torch.long)]


def postprocess(pred: Tensor, score_threshold: float = 0.001, iou_threshold: float = 0.6,
                max_det: int = 300, top_k: int = 1000) -> tuple[Tensor, Tensor, Tensor]:
    """One image's `[4 + nc, N]` output -> (boxes x1y1x2y2, scores, classes), class-aware NMS.

    Every (cell, class) pair above the threshold is a candidate, as mAP evaluation expects."""
    box, cls = pred[:4].t(), pred[4:].t()
    cells, classes = (cls > score_threshold).nonzero(as_tuple=True)
    scores = cls[cells, classes]
    if len(scores) > top_k:
        top = scores.topk(top_k).indices
        cells, classes, scores = cells[top], classes[top], scores[top]
    xy, wh = box[cells, :2], box[cells, 2:]
    xyxy = torch.cat([xy - wh / 2, xy + wh / 2], 1)
    # Offset each class far apart so one NMS pass never suppresses across classes.
    keep = nms(xyxy + classes[:, None].float() * 1e5, scores, iou_threshold)[:max_det]
    return xyxy[keep], scores[keep], classes[keep]


def _coco_gt(samples: Sequence[Sample], class_names: Sequence[str]) -> dict[str, Any]:
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i, s in enumerate(samples):
        images.append({"id": i + 1, "width": s.image.shape[1], "height": s.image.shape[0]})
        for box, cls in zip(s.boxes, s.classes, strict=True):
            w, h = float(box[2] - box[0]), float(box[3] - box[1])
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(cls),
                         "bbox": [float(box[0]), float(box[1]), w, h], "area": w * h,
                         "iscrowd": 0})
    cats = [{"id": i, "name": n} for i, n in enumerate(class_names)]
    return {"images": images, "annotations": anns, "categories": cats}


def _predict(model: nn.Module, samples: Sequence[Sample], size: int, batch_size: int
             ) -> list[dict[str, Any]]:
    dets: list[dict[str, Any]] = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start: start + batch_size]
        boxed = [letterbox(s.image, size) for s in chunk]
        x = torch.from_numpy(np.stack([b[0] for b in boxed])).permute(0, 3, 1, 2).float() / 255
        out = model(x.contiguous(memory_format=torch.channels_last))
        for j, (pred, (_, fit)) in enumerate(zip(out, boxed, strict=True)):
            s = chunk[j]
            boxes, scores, classes = postprocess(pred)
            sx, sy = fit.new_w / s.image.shape[1], fit.new_h / s.image.shape[0]
            boxes = (boxes - torch.tensor([fit.pad_x, fit.pad_y] * 2)) / torch.tensor([sx, sy] * 2)
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, s.image.shape[1])
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, s.image.shape[0])
            for b, sc, c in zip(boxes.tolist(), scores.tolist(), classes.tolist(), strict=True):
                dets.append({"image_id": start + j + 1, "category_id": int(c),
                             "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": sc})
    return dets


def coco_metrics(gt: dict[str, Any], dets: list[dict[str, Any]]) -> QuickMetrics:
    if not dets:
        return QuickMetrics(0.0, 0.0, 0.0, 0.0, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(gt)
        ev = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), "bbox", print_function=lambda *_: None)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    st = [max(0.0, float(v)) for v in ev.stats[:6]]
    return QuickMetrics(map50=st[1], map=st[0], ap_small=st[3], ap_medium=st[4], ap_large=st[5])


@torch.no_grad()
def evaluate_model(model: nn.Module, samples: Sequence[Sample], class_names: Sequence[str],
                   size: int = 320, batch_size: int = 16) -> QuickMetrics:
    was_training = model.training
    model.eval()
    try:
        dets = _predict(model, samples, size, batch_size)
    finally:
        model.train(was_training)
    return coco_metrics(_coco_gt(samples, class_names), dets)
