"""Detection loss: BCE on soft task-aligned class targets, CIoU and DFL on the assigned boxes.

Every term is normalised by the sum of the soft class targets (as YOLOv8 does), so the loss scale
does not depend on how many objects a batch happens to hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from detserve.models.assign import TaskAlignedAssigner, ciou
from detserve.models.detector import Detector, make_anchors


@dataclass(frozen=True)
class Targets:
    """Ground truth padded to the batch's largest box count, in input pixels (x1y1x2y2)."""

    boxes: Tensor  # [B, M, 4] float
    classes: Tensor  # [B, M] int64
    valid: Tensor  # [B, M] bool

    @classmethod
    def from_lists(cls, boxes: list[Tensor], classes: list[Tensor]) -> Targets:
        if len(boxes) != len(classes):
            raise ValueError(f"got {len(boxes)} box sets but {len(classes)} class sets")
        b, m = len(boxes), max([len(x) for x in boxes] + [0])
        out_boxes = torch.zeros(b, m, 4)
        out_classes = torch.zeros(b, m, dtype=torch.long)
        valid = torch.zeros(b, m, dtype=torch.bool)
        for i, (bx, cl) in enumerate(zip(boxes, classes, strict=True)):
            k = len(bx)
            out_boxes[i, :k], out_classes[i, :k], valid[i, :k] = bx, cl, True
        return cls(out_boxes, out_classes, valid)

    def to(self, device: torch.device | str) -> Targets:
        return Targets(self.boxes.to(device, non_blocking=True),
                       self.classes.to(device, non_blocking=True),
                       self.valid.to(device, non_blocking=True))


@dataclass(frozen=True)
class LossParts:
    total: Tensor
    box: float
    cls: float
    dfl: float
    num_fg: int


def dist_to_boxes(dist: Tensor, points: Tensor, strides: Tensor) -> Tensor:
    """Distances `[..., N, 4]` (l, t, r, b in strides) from cell centres -> x1y1x2y2 pixels."""
    return torch.cat([points - dist[..., :2] * strides, points + dist[..., 2:] * strides], -1)


def boxes_to_dist(boxes: Tensor, points: Tensor, strides: Tensor, limit: float) -> Tensor:
    lt = (points - boxes[..., :2]) / strides
    rb = (boxes[..., 2:] - points) / strides
    return torch.cat([lt, rb], -1).clamp(0, limit)


def dfl_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Distribution focal loss: cross-entropy to the two bins around each target distance,
    weighted by proximity. logits `[K, 4, r]`, target `[K, 4]` in bins; returns `[K]`."""
    left = target.long()
    right = left + 1
    w_left = right.float() - target
    w_right = 1 - w_left
    r = logits.shape[-1]
    flat = logits.reshape(-1, r)
    ce_l = F.cross_entropy(flat, left.reshape(-1), reduction="none").view(left.shape)
    ce_r = F.cross_entropy(flat, right.reshape(-1).clamp(max=r - 1),
                           reduction="none").view(left.shape)
    return (ce_l * w_left + ce_r * w_right).mean(-1)


class DetectionLoss:
    def __init__(self, model: Detector, box_gain: float = 7.5, cls_gain: float = 0.5,
                 dfl_gain: float = 1.5, assigner: TaskAlignedAssigner | None = None) -> None:
        self.reg_max = model.cfg.reg_max
        self.model = model
        self.gains = (box_gain, cls_gain, dfl_gain)
        self.assigner = assigner or TaskAlignedAssigner(model.cfg.num_classes)
        self.bins = torch.arange(self.reg_max, dtype=torch.float32)

    def __call__(self, raw: list[Tensor], targets: Targets) -> LossParts:
        dfl_logits, cls_logits = self.model.flatten(raw)
        shapes = [(int(f.shape[2]), int(f.shape[3])) for f in raw]
        points, strides = make_anchors(shapes, cls_logits.device, cls_logits.dtype)
        dist = dfl_logits.softmax(-1) @ self.bins.to(cls_logits.device)
        pred_boxes = dist_to_boxes(dist, points, strides)
        a = self.assigner(cls_logits.detach().sigmoid(), pred_boxes.detach(), points, strides,
                          targets.boxes, targets.classes, targets.valid)
        norm = a.scores.sum().clamp(min=1.0)
        loss_cls = F.binary_cross_entropy_with_logits(cls_logits, a.scores,
                                                      reduction="sum") / norm
        fg = a.fg
        if bool(fg.any()):
            weight = a.scores.sum(-1)[fg]
            loss_box = ((1 - ciou(pred_boxes[fg], a.boxes[fg])) * weight).sum() / norm
            pts = points.unsqueeze(0).expand_as(pred_boxes[..., :2])[fg]
            st = strides.unsqueeze(0).expand_as(pred_boxes[..., :1])[fg]
            target = boxes_to_dist(a.boxes[fg], pts, st, self.reg_max - 1 - 0.01)
            loss_dfl = (dfl_loss(dfl_logits[fg], target) * weight).sum() / norm
        else:
            loss_box = loss_dfl = cls_logits.sum() * 0
        gb, gc, gd = self.gains
        total = gb * loss_box + gc * loss_cls + gd * loss_dfl
        return LossParts(total=total, box=float(loss_box.detach()), cls=float(loss_cls.detach()),
                         dfl=float(loss_dfl.detach()), num_fg=int(fg.sum()))
