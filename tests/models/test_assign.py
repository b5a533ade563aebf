from __future__ import annotations

import math

import pytest
import torch

from detserve.models.assign import Assignment, TaskAlignedAssigner, box_iou_pairwise, ciou
from detserve.models.detector import STRIDES, make_anchors

SIZE = 64


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    return make_anchors([(SIZE // s, SIZE // s) for s in STRIDES])


def _run(assigner: TaskAlignedAssigner, pred_boxes: torch.Tensor, gt: list[list[float]],
         classes: list[int], valid: list[bool] | None = None, nc: int = 2) -> Assignment:
    points, strides = _grid()
    n = len(points)
    scores = torch.full((1, n, nc), 0.5)
    gt_t = torch.tensor([gt], dtype=torch.float32).reshape(1, -1, 4)
    cls_t = torch.tensor([classes], dtype=torch.long).reshape(1, -1)
    valid_t = torch.tensor([valid or [True] * len(gt)]).reshape(1, -1)
    return assigner(scores, pred_boxes.unsqueeze(0), points, strides, gt_t, cls_t, valid_t)


def _far_boxes(n: int) -> torch.Tensor:
    return torch.tensor([[500.0, 500.0, 510.0, 510.0]]).repeat(n, 1)


def test_cells_predicting_the_box_are_the_positives() -> None:
    points, _ = _grid()
    gt = [16.0, 16.0, 48.0, 48.0]
    pred = _far_boxes(len(points))
    chosen = [18, 19, 27]  # stride-8 cells (2,2), (3,2), (3,3): centres inside the box
    pred[chosen] = torch.tensor(gt)
    a = _run(TaskAlignedAssigner(2, top_k=3), pred, [gt], [1])
    assert a.fg[0].nonzero().flatten().tolist() == chosen
    torch.testing.assert_close(a.boxes[0, chosen], torch.tensor([gt] * 3))
    # Perfect boxes: soft target = best IoU of the box = 1.0, on class 1 only.
    torch.testing.assert_close(a.scores[0, chosen], torch.tensor([[0.0, 1.0]] * 3))
    assert float(a.scores[0].sum()) == pytest.approx(3.0)


def test_tiny_object_between_cell_centres_still_gets_positives() -> None:
    points, _ = _grid()
    gt = [9.0, 9.0, 15.0, 15.0]  # 6 px, holds no stride-16 or stride-32 centre
    a = _run(TaskAlignedAssigner(2, top_k=5), _far_boxes(len(points)), [gt], [0])
    assert int(a.fg.sum()) == 5
    centres = points[a.fg[0]]
    assert float((centres - 12.0).abs().max()) < 2.5 * 16


def test_cell_claimed_by_two_boxes_goes_to_the_better_overlap() -> None:
    points, _ = _grid()
    gt_a, gt_b = [8.0, 8.0, 40.0, 40.0], [16.0, 16.0, 48.0, 48.0]
    pred = _far_boxes(len(points))
    cell = 27  # stride-8 centre (28, 28): inside both boxes
    pred[cell] = torch.tensor([15.0, 15.0, 47.0, 47.0])  # overlaps b far better than a
    a = _run(TaskAlignedAssigner(2, top_k=1), pred, [gt_a, gt_b], [0, 1])
    assert bool(a.fg[0, cell])
    assert int(a.gt_index[0, cell]) == 1
    torch.testing.assert_close(a.boxes[0, cell], torch.tensor(gt_b))


def test_padding_rows_and_empty_targets_assign_nothing() -> None:
    points, _ = _grid()
    pred = _far_boxes(len(points))
    a = _run(TaskAlignedAssigner(2), pred, [[16.0, 16.0, 48.0, 48.0]], [0], valid=[False])
    assert not bool(a.fg.any()) and float(a.scores.sum()) == 0.0
    empty = _run(TaskAlignedAssigner(2), pred, [], [])
    assert not bool(empty.fg.any())


def test_assigner_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="top_k must be >= 1, got 0"):
        TaskAlignedAssigner(2, top_k=0)


def test_iou_and_ciou_values() -> None:
    a = torch.tensor([0.0, 0.0, 2.0, 2.0])
    b = torch.tensor([1.0, 0.0, 3.0, 2.0])
    assert float(box_iou_pairwise(a, b)) == pytest.approx(1 / 3, abs=1e-6)
    assert float(ciou(a, a)) == pytest.approx(1.0, abs=1e-6)
    # Same shape, so no aspect term: IoU minus (centre distance / enclosing diagonal)^2.
    assert float(ciou(a, b)) == pytest.approx(1 / 3 - 1 / (9 + 4), abs=1e-6)
    far = torch.tensor([10.0, 0.0, 12.0, 2.0])
    assert float(ciou(a, far)) == pytest.approx(-100 / (144 + 4), abs=1e-6)
    assert not math.isnan(float(ciou(a, torch.zeros(4))))
