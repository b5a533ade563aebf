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
from torch import nn

from detserve.engines.torch_nms import NmsSettings, yolov8_end2end
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


# COCO-eval settings: every (cell, class) pair above 0.001 is a candidate, as mAP evaluation
# expects; the same NMS as the torch-cuda engine (engines.torch_nms), run here on the CPU.
EVAL_NMS = NmsSettings(score_threshold=0.001, iou_threshold=0.6, max_detections=300,
                       pre_nms_top_k=1000, multi_label=True)


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
        out = yolov8_end2end(model(x.contiguous(memory_format=torch.channels_last)), EVAL_NMS)
        for j, (_, fit) in enumerate(boxed):
            s, n = chunk[j], int(out.num_dets[j, 0])
            boxes, scores, classes = out.boxes[j, :n], out.scores[j, :n], out.classes[j, :n]
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
