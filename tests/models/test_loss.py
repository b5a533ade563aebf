from __future__ import annotations

import math

import pytest
import torch

from detserve.models.detector import STRIDES, DetectorConfig, build_detector, make_anchors
from detserve.models.loss import (
    DetectionLoss,
    LossParts,
    Targets,
    boxes_to_dist,
    dfl_loss,
    dist_to_boxes,
)

SIZE = 64
CFG = DetectorConfig(num_classes=2, width_mult=0.25, depth_mult=0.34)
R = CFG.reg_max


def _dfl_logits(dist: torch.Tensor) -> torch.Tensor:
    """Logits `[N, 4, R]` whose softmax splits each distance over its two neighbouring bins, so
    the expectation is exactly `dist` (the DFL optimum)."""
    left = dist.floor().long().clamp(max=R - 2)
    w_right = dist - left.float()
    probs = torch.zeros(*dist.shape, R)
    probs.scatter_(-1, left.unsqueeze(-1), (1 - w_right).unsqueeze(-1))
    probs.scatter_add_(-1, (left + 1).unsqueeze(-1), w_right.unsqueeze(-1))
    return probs.clamp(min=1e-12).log()


def _raw(pred_boxes: torch.Tensor, cls_logits: torch.Tensor) -> list[torch.Tensor]:
    """Level tensors `[1, 4R + nc, H, W]` that decode to `pred_boxes` with `cls_logits`."""
    points, strides = make_anchors([(SIZE // s, SIZE // s) for s in STRIDES])
    dist = boxes_to_dist(pred_boxes, points, strides, R - 1 - 1e-4)
    flat = torch.cat([_dfl_logits(dist).reshape(len(points), 4 * R), cls_logits], 1)
    raw, start = [], 0
    for s in STRIDES:
        n = (SIZE // s) ** 2
        raw.append(flat[start:start + n].t().reshape(1, -1, SIZE // s, SIZE // s))
        start += n
    return raw


def _loss_for(gt: list[float], pred_box: list[float]) -> LossParts:
    """Every cell predicts `pred_box`; class 1 is confident exactly where the assigner puts
    positives (found by a first pass with neutral scores), background everywhere else."""
    model = build_detector(CFG)
    loss = DetectionLoss(model)
    targets = Targets.from_lists([torch.tensor([gt])], [torch.tensor([1])])
    n = sum((SIZE // s) ** 2 for s in STRIDES)
    boxes = torch.tensor([pred_box]).repeat(n, 1)
    neutral = loss(_raw(boxes, torch.zeros(n, 2)), targets)
    assert neutral.num_fg > 0
    points, strides = make_anchors([(SIZE // s, SIZE // s) for s in STRIDES])
    # What the cells really predict: distances clamp at 0 for centres outside `pred_box`.
    decoded = dist_to_boxes(boxes_to_dist(boxes, points, strides, R - 1 - 1e-4), points, strides)
    a = loss.assigner(torch.full((1, n, 2), 0.5), decoded.unsqueeze(0), points, strides,
                      targets.boxes, targets.classes, targets.valid)
    cls = torch.full((n, 2), -30.0)
    cls[a.fg[0], 1] = 30.0
    return loss(_raw(boxes, cls), targets)


def test_perfect_predictions_give_near_zero_box_and_class_loss() -> None:
    gt = [16.0, 16.0, 48.0, 48.0]
    parts = _loss_for(gt, gt)
    assert parts.num_fg == 10  # top_k positives, all predicting the exact box
    assert parts.box < 1e-4
    assert parts.cls < 1e-3
    assert math.isfinite(float(parts.total))


def test_shifted_predictions_cost_more() -> None:
    gt = [18.0, 18.0, 50.0, 50.0]
    perfect = _loss_for(gt, gt)
    # Left edge 2 px out. The prediction contains the box, so cells outside it that clamp a
    # distance to 0 only grow their box: the best cells are those predicting exactly this one.
    shifted = _loss_for(gt, [16.0, 18.0, 50.0, 50.0])
    iou = 32 / 34
    v = 4 / math.pi**2 * (math.atan(1.0) - math.atan(34 / 32)) ** 2
    ciou = iou - (1 / (34**2 + 32**2) + v * v / ((1 - iou) + v))
    # Each positive's weight is its soft target (= IoU), and the sum is normalised by the same.
    assert perfect.box < 1e-4
    assert shifted.box == pytest.approx(1 - ciou, rel=1e-3)
    assert shifted.dfl > perfect.dfl
    assert float(shifted.total) > float(perfect.total) + 1.0


def test_no_objects_gives_only_class_loss_and_gradients_flow() -> None:
    model = build_detector(CFG)
    raw = model.raw(torch.rand(2, 3, SIZE, SIZE))
    parts = DetectionLoss(model)(raw, Targets.from_lists([torch.zeros(0, 4)] * 2,
                                                         [torch.zeros(0, dtype=torch.long)] * 2))
    assert parts.num_fg == 0 and parts.box == 0.0 and parts.dfl == 0.0
    assert parts.cls > 0
    parts.total.backward()  # type: ignore[no-untyped-call]
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and float(g.abs().sum()) > 0 for g in grads)


def test_dfl_loss_minimum_is_at_the_two_bin_split() -> None:
    target = torch.tensor([[2.25, 0.0, 5.0, 7.5]])
    best = dfl_loss(_dfl_logits(target).reshape(1, 4, R), target)
    worse = dfl_loss(_dfl_logits(target + 1).reshape(1, 4, R), target)
    # Entropy of the splits: (0.75, 0.25), one-hot, one-hot, (0.5, 0.5); averaged over 4 sides.
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) + math.log(2)
    assert float(best[0]) == pytest.approx(h / 4, abs=1e-4)
    assert float(worse[0]) > float(best[0]) + 1.0


def test_targets_from_lists_pads_and_checks_lengths() -> None:
    t = Targets.from_lists([torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.zeros(0, 4)],
                           [torch.tensor([1]), torch.zeros(0, dtype=torch.long)])
    assert t.boxes.shape == (2, 1, 4) and t.valid.tolist() == [[True], [False]]
    with pytest.raises(ValueError, match="2 box sets but 1 class sets"):
        Targets.from_lists([torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)])
