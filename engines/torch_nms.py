"""Non-maximum suppression on torch tensors, on whatever device they live.

`batched_nms` is `torchvision.ops.batched_nms` where torchvision is importable (its CUDA kernel is
the point of GPU NMS) and a pure-torch greedy fallback elsewhere. The fallback keeps the same boxes
as torchvision and `detserve.engines.nms`: a box is suppressed when its IoU with a kept,
higher-scoring box of the same group is strictly greater than the threshold, and equal scores are
visited in index order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

NmsFn = Callable[[Tensor, Tensor, Tensor, float], Tensor]


def _check(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> None:
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4], got {tuple(boxes.shape)}")
    n = boxes.shape[0]
    if tuple(scores.shape) != (n,):
        raise ValueError(f"scores must have shape [{n}], got {tuple(scores.shape)}")
    if tuple(idxs.shape) != (n,):
        raise ValueError(f"idxs must have shape [{n}], got {tuple(idxs.shape)}")
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix `[len(a), len(b)]` of corner boxes; 0 where the union is empty."""
    area_a = (a[:, 2] - a[:, 0]).clamp(min=0) * (a[:, 3] - a[:, 1]).clamp(min=0)
    area_b = (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy NMS of one group: kept indices (int64), highest score first."""
    idxs = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
    _check(boxes, scores, idxs, iou_threshold)
    return _greedy(boxes.double(), scores, iou_threshold)


def _greedy(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    order = torch.sort(scores, descending=True, stable=True).indices
    if order.numel() == 0:
        return order
    # One IoU matrix per group, then a cheap host loop over rows: exact greedy semantics.
    over = (box_iou(boxes[order], boxes[order]) > iou_threshold).cpu().numpy()
    n = over.shape[0]
    removed = [False] * n
    keep: list[int] = []
    for i in range(n):
        if removed[i]:
            continue
        keep.append(i)
        for j in over[i, i + 1 :].nonzero()[0]:
            removed[i + 1 + int(j)] = True
    return order[torch.as_tensor(keep, dtype=torch.int64, device=order.device)]


def torch_batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """Group-aware NMS (boxes with different `idxs` never suppress each other), pure torch.

    Kept indices come back sorted by score, highest first (ties in index order), like
    torchvision's. Each group gets its own IoU matrix, so memory is bounded by the largest group.
    """
    _check(boxes, scores, idxs, iou_threshold)
    if boxes.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=boxes.device)
    kept: list[Tensor] = []
    b64 = boxes.double()
    for group in torch.unique(idxs):
        members = (idxs == group).nonzero().flatten()
        kept.append(members[_greedy(b64[members], scores[members], iou_threshold)])
    keep = torch.cat(kept)
    # Stable sort over ascending index order reproduces "score desc, then index asc".
    keep = keep.sort().values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def _torchvision_nms() -> NmsFn | None:
    try:
        from torchvision.ops import batched_nms as tv_batched_nms

        # A torchvision built for another torch imports fine but lacks its C++ ops: probe once.
        tv_batched_nms(torch.zeros(1, 4), torch.ones(1), torch.zeros(1, dtype=torch.int64), 0.5)
    except Exception:  # torchvision absent, or built for another torch version
        return None
    return tv_batched_nms  # type: ignore[no-any-return]


_TV = _torchvision_nms()
HAVE_TORCHVISION = _TV is not None


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                prefer_torchvision: bool = True) -> Tensor:
    """torchvision's `batched_nms` where available (CUDA kernel), else `torch_batched_nms`."""
    if prefer_torchvision and _TV is not None:
        _check(boxes, scores, idxs, iou_threshold)
        return _TV(boxes, scores, idxs, iou_threshold)
    return torch_batched_nms(boxes, scores, idxs, iou_threshold)


def nms_backend() -> str:
    return "torchvision" if HAVE_TORCHVISION else "torch"


@dataclass(frozen=True)
class End2EndOutputs:
    """EfficientNMS-style padded outputs; only the first `num_dets[i]` rows of image i are real."""

    num_dets: Tensor  # [B, 1] int32
    boxes: Tensor  # [B, K, 4] float32 corners, input pixels
    scores: Tensor  # [B, K] float32
    classes: Tensor  # [B, K] int32

    def as_tuple(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return (self.num_dets, self.boxes, self.scores, self.classes)


@dataclass(frozen=True)
class NmsSettings:
    score_threshold: float
    iou_threshold: float
    max_detections: int
    pre_nms_top_k: int
    prefer_torchvision: bool = True
    multi_label: bool = False


def yolov8_end2end(preds: Tensor, settings: NmsSettings) -> End2EndOutputs:
    """Raw yolov8 output `[B, 4+nc, N]` (cx, cy, w, h, class scores) -> padded end2end outputs.

    Each anchor votes for its best class, or with `multi_label` every (anchor, class) pair is a
    candidate, as the host decoder does. Per image the `pre_nms_top_k` best candidates scoring at
    least `score_threshold` enter one class-aware NMS call for the whole batch (groups are
    image x class), so nothing but the final `K` rows per image ever needs to leave the device.
    """
    if preds.ndim != 3 or preds.shape[1] < 5:
        raise ValueError(f"yolov8 output must have shape [B, 4+nc, N], got {tuple(preds.shape)}")
    b, rows, n_anchors = preds.shape
    nc, k_out, dev = rows - 4, settings.max_detections, preds.device
    p = preds.float().transpose(1, 2)  # [B, N, 4+nc]
    if settings.multi_label:
        flat = p[..., 4:].reshape(b, n_anchors * nc)  # pair index = anchor * nc + class
        top = min(settings.pre_nms_top_k, flat.shape[1])
        top_scores, top_pair = flat.topk(top, dim=1)
        top_idx, cls = top_pair // nc, top_pair % nc
    else:
        best, best_cls = p[..., 4:].max(-1)  # [B, N]
        top = min(settings.pre_nms_top_k, n_anchors)
        top_scores, top_idx = best.topk(top, dim=1)
        cls = best_cls.gather(1, top_idx)
    cxcywh = p[..., :4].gather(1, top_idx[..., None].expand(-1, -1, 4))
    xyxy = torch.cat([cxcywh[..., :2] - cxcywh[..., 2:] / 2,
                      cxcywh[..., :2] + cxcywh[..., 2:] / 2], -1)
    image = torch.arange(b, device=dev)[:, None].expand(b, top)
    mask = top_scores >= settings.score_threshold
    boxes, scores, classes, images = xyxy[mask], top_scores[mask], cls[mask], image[mask]
    keep = batched_nms(boxes, scores, images * nc + classes, settings.iou_threshold,
                       settings.prefer_torchvision)
    # Regroup the kept rows by image (stable: score order survives), then rank within image.
    keep = keep[torch.sort(images[keep], stable=True).indices]
    img_k = images[keep]
    counts = torch.bincount(img_k, minlength=b)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(keep.numel(), device=dev) - starts[img_k]
    ok = rank < k_out
    rows_i, rows_r, src = img_k[ok], rank[ok], keep[ok]
    out_boxes = torch.zeros(b, k_out, 4, device=dev)
    out_scores = torch.zeros(b, k_out, device=dev)
    out_classes = torch.zeros(b, k_out, dtype=torch.int32, device=dev)
    out_boxes[rows_i, rows_r] = boxes[src]
    out_scores[rows_i, rows_r] = scores[src]
    out_classes[rows_i, rows_r] = classes[src].int()
    num = counts.clamp(max=k_out).to(torch.int32)[:, None]
    return End2EndOutputs(num, out_boxes, out_scores, out_classes)
