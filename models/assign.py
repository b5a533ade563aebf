"""Task-aligned label assignment (TAL, as in TOOD / YOLOv8), with centre sampling for tiny objects.

For each ground-truth box, the candidate cells are those whose centre lies inside the box or within
`center_radius` strides of the box centre (the second rule is what gives an 8-px object at stride 8
any candidates at all). Among candidates, the `top_k` cells with the highest alignment
`score^alpha * IoU^beta` become positives. A cell claimed by several boxes keeps the one it overlaps
most. Soft class targets are the alignment, normalised per box so its best cell gets its best IoU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

EPS = 1e-9


def box_iou_pairwise(a: Tensor, b: Tensor) -> Tensor:
    """IoU of `a [..., 4]` and `b [..., 4]` (x1y1x2y2), elementwise over matching shapes."""
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter + EPS)


def ciou(a: Tensor, b: Tensor) -> Tensor:
    """Complete IoU of matching x1y1x2y2 boxes: IoU minus centre-distance and aspect penalties."""
    iou = box_iou_pairwise(a, b)
    cw = torch.maximum(a[..., 2], b[..., 2]) - torch.minimum(a[..., 0], b[..., 0])
    ch = torch.maximum(a[..., 3], b[..., 3]) - torch.minimum(a[..., 1], b[..., 1])
    c2 = cw.square() + ch.square() + EPS
    dx = (a[..., 0] + a[..., 2] - b[..., 0] - b[..., 2]) / 2
    dy = (a[..., 1] + a[..., 3] - b[..., 1] - b[..., 3]) / 2
    rho2 = dx.square() + dy.square()
    wa, ha = a[..., 2] - a[..., 0], (a[..., 3] - a[..., 1]).clamp(min=EPS)
    wb, hb = b[..., 2] - b[..., 0], (b[..., 3] - b[..., 1]).clamp(min=EPS)
    v = (4 / math.pi**2) * (torch.atan(wb / hb) - torch.atan(wa / ha)).square()
    with torch.no_grad():
        # (1 - iou) first: adding a tiny eps to 1 in float32 is a no-op, and 0/0 at a perfect
        # box would turn the loss into NaN.
        alpha = v / ((1 - iou) + v + 1e-7)
    return iou - (rho2 / c2 + v * alpha)


@dataclass(frozen=True)
class Assignment:
    """Targets for one batch, per cell: `fg [B, N]` bool, `boxes [B, N, 4]` x1y1x2y2,
    `scores [B, N, nc]` soft class targets (zero for background), `gt_index [B, N]`."""

    fg: Tensor
    boxes: Tensor
    scores: Tensor
    gt_index: Tensor


@dataclass(frozen=True)
class TaskAlignedAssigner:
    num_classes: int
    top_k: int = 10
    alpha: float = 1.0
    beta: float = 6.0
    center_radius: float = 2.5

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {self.num_classes}")

    def candidates(self, points: Tensor, strides: Tensor, gt_boxes: Tensor) -> Tensor:
        """`[B, M, N]` bool: cell centre inside the box or near its centre."""
        p = points.view(1, 1, -1, 2)
        g = gt_boxes.unsqueeze(2)  # [B, M, 1, 4]
        inside = ((p - g[..., :2]).amin(-1) > 0) & ((g[..., 2:] - p).amin(-1) > 0)
        centre = (g[..., :2] + g[..., 2:]) / 2
        radius = self.center_radius * strides.view(1, 1, -1)
        near = ((p - centre).abs() < radius.unsqueeze(-1)).all(-1)
        return inside | near

    @torch.no_grad()
    def __call__(self, pred_scores: Tensor, pred_boxes: Tensor, points: Tensor, strides: Tensor,
                 gt_boxes: Tensor, gt_classes: Tensor, gt_valid: Tensor) -> Assignment:
        """pred_scores `[B, N, nc]` (probabilities), pred_boxes `[B, N, 4]` x1y1x2y2 pixels,
        points `[N, 2]`, strides `[N, 1]`, gt_boxes `[B, M, 4]`, gt_classes `[B, M]` int64,
        gt_valid `[B, M]` bool (padding rows are False)."""
        b, n, _ = pred_scores.shape
        m = gt_boxes.shape[1]
        if m == 0:
            return self._empty(b, n, pred_scores)
        cand = self.candidates(points, strides, gt_boxes) & gt_valid.unsqueeze(-1)
        cls_idx = gt_classes.clamp(min=0).unsqueeze(-1).expand(b, m, n)
        score = pred_scores.transpose(1, 2).gather(1, cls_idx)  # [B, M, N]
        iou = box_iou_pairwise(gt_boxes.unsqueeze(2), pred_boxes.unsqueeze(1)).clamp(min=0)
        iou = torch.where(cand, iou, torch.zeros_like(iou))
        align = score.pow(self.alpha) * iou.pow(self.beta)
        # Tiny floor so candidates still rank (by the predicted score) before any overlap exists.
        rank = torch.where(cand, align + 1e-12 * (score + 1e-3), torch.full_like(align, -1.0))
        k = min(self.top_k, n)
        top = rank.topk(k, dim=-1).indices
        pos = torch.zeros_like(cand).scatter_(-1, top, True) & cand  # [B, M, N]
        pos = self._resolve_conflicts(pos, iou)
        fg = pos.any(1)
        gt_index = pos.float().argmax(1)  # [B, N]
        boxes = gt_boxes.gather(1, gt_index.unsqueeze(-1).expand(b, n, 4))
        classes = gt_classes.gather(1, gt_index).clamp(min=0)
        align = align * pos
        norm = align / (align.amax(-1, keepdim=True) + EPS) * (iou * pos).amax(-1, keepdim=True)
        weight = norm.amax(1)  # [B, N]
        scores = torch.zeros_like(pred_scores)
        scores.scatter_(-1, classes.unsqueeze(-1), weight.unsqueeze(-1))
        scores = scores * fg.unsqueeze(-1)
        return Assignment(fg=fg, boxes=boxes, scores=scores, gt_index=gt_index)

    @staticmethod
    def _resolve_conflicts(pos: Tensor, iou: Tensor) -> Tensor:
        multi = pos.sum(1, keepdim=True) > 1  # [B, 1, N]
        if not bool(multi.any()):
            return pos
        # Only among the boxes that claimed the cell: with no overlap yet, argmax over all boxes
        # could hand the cell to a padding row.
        best = torch.where(pos, iou, torch.full_like(iou, -1.0)).argmax(1, keepdim=True)
        best_mask = torch.zeros_like(pos).scatter_(1, best, True)
        return torch.where(multi, best_mask & pos.any(1, keepdim=True), pos)

    @staticmethod
    def _empty(b: int, n: int, like: Tensor) -> Assignment:
        return Assignment(
            fg=torch.zeros(b, n, dtype=torch.bool, device=like.device),
            boxes=torch.zeros(b, n, 4, dtype=like.dtype, device=like.device),
            scores=torch.zeros_like(like),
            gt_index=torch.zeros(b, n, dtype=torch.long, device=like.device),
        )
