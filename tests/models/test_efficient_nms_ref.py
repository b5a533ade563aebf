"""The numpy EfficientNMS reference on hand-made cases whose answer is known in advance."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from detserve.models.efficient_nms_ref import (
    NmsConfig,
    efficient_nms,
    efficient_nms_image,
    efficient_nms_yolov8,
    iou_suppresses,
    to_corners,
)


def _cfg(**kw: Any) -> NmsConfig:
    base: dict[str, Any] = {
        "score_threshold": 0.25,
        "iou_threshold": 0.5,
        "max_output_boxes": 10,
        "box_coding": "corners",
    }
    base.update(kw)
    return NmsConfig(**base)


def _scores(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, np.float32)


def test_same_class_overlap_keeps_the_higher_score() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10]], np.float32)  # IoU 90/110
    det = efficient_nms_image(boxes, _scores([[0.6], [0.9]]), _cfg())
    np.testing.assert_array_equal(det.scores, [np.float32(0.9)])
    np.testing.assert_array_equal(det.boxes, [[1, 0, 11, 10]])


def test_other_classes_never_suppress_unless_agnostic() -> None:
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10]], np.float32)
    scores = _scores([[0.9, 0.0], [0.0, 0.8]])
    aware = efficient_nms_image(boxes, scores, _cfg())
    assert aware.class_ids.tolist() == [0, 1]
    agnostic = efficient_nms_image(boxes, scores, _cfg(class_agnostic=True))
    assert agnostic.class_ids.tolist() == [0]


def test_one_anchor_can_yield_several_classes() -> None:
    boxes = np.array([[0, 0, 10, 10]], np.float32)
    det = efficient_nms_image(boxes, _scores([[0.5, 0.7, 0.1]]), _cfg())
    assert det.class_ids.tolist() == [1, 0]
    np.testing.assert_array_equal(det.scores, np.array([0.7, 0.5], np.float32))


def test_iou_equal_to_threshold_suppresses() -> None:
    # IoU of these two is exactly 50 / 100 = 0.5 in float32.
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 5]], np.float32)
    scores = _scores([[0.9], [0.8]])
    assert len(efficient_nms_image(boxes, scores, _cfg(iou_threshold=0.5))) == 1
    assert len(efficient_nms_image(boxes, scores, _cfg(iou_threshold=0.5001))) == 2


def test_score_equal_to_threshold_is_kept() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    det = efficient_nms_image(boxes, _scores([[0.25], [0.2499]]), _cfg())
    np.testing.assert_array_equal(det.scores, [np.float32(0.25)])


def test_ties_go_to_the_lower_flat_index() -> None:
    boxes = np.array([[5, 0, 15, 10], [0, 0, 10, 10], [0, 1, 10, 11]], np.float32)
    det = efficient_nms_image(boxes, _scores([[0.5], [0.5], [0.5]]), _cfg(iou_threshold=0.3))
    # Anchor 0 goes first: it drops anchor 1 (IoU 50/150) but not anchor 2 (IoU 45/155).
    # Had anchor 1 gone first, it would have dropped both others (1 detection, not 2).
    np.testing.assert_array_equal(det.boxes[0], [5, 0, 15, 10])
    np.testing.assert_array_equal(det.boxes[1], [0, 1, 10, 11])
    assert len(det) == 2


def test_pre_nms_top_k_cuts_before_suppression() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], np.float32)
    scores = _scores([[0.3], [0.9], [0.6]])
    det = efficient_nms_image(boxes, scores, _cfg(pre_nms_top_k=2, max_output_boxes=2))
    np.testing.assert_array_equal(det.scores, np.array([0.9, 0.6], np.float32))


def test_max_output_boxes_and_zero_padding() -> None:
    boxes = np.array([[[i * 20, 0, i * 20 + 10, 10] for i in range(5)]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7], [0.6], [0.5]]], np.float32)
    out = efficient_nms(boxes, scores, _cfg(max_output_boxes=3))
    assert out.num_detections.tolist() == [[3]]
    assert out.num_detections.dtype == np.int32 and out.classes.dtype == np.int32
    np.testing.assert_array_equal(out.scores, np.array([[0.9, 0.8, 0.7]], np.float32))
    empty = efficient_nms(boxes, scores, _cfg(max_output_boxes=7, score_threshold=0.95))
    assert empty.num_detections.tolist() == [[0]]
    assert not empty.boxes.any() and not empty.scores.any() and not empty.classes.any()
    assert len(empty.image(0)) == 0


def test_zero_area_boxes_never_suppress() -> None:
    boxes = np.array([[5, 5, 5, 5], [0, 0, 10, 10]], np.float32)
    assert len(efficient_nms_image(boxes, _scores([[0.9], [0.8]]), _cfg())) == 2


def test_center_size_coding_and_yolov8_layout() -> None:
    raw = np.zeros((2, 6, 3), np.float32)
    raw[0, :4, 0] = [10, 20, 4, 8]  # cx cy w h
    raw[0, 4, 0] = 0.9
    raw[1, :4, 2] = [50, 50, 10, 10]
    raw[1, 5, 2] = 0.8
    out = efficient_nms_yolov8(raw, _cfg(box_coding="center_size"))
    assert out.num_detections.tolist() == [[1], [1]]
    np.testing.assert_array_equal(out.boxes[0, 0], [8, 16, 12, 24])
    np.testing.assert_array_equal(out.boxes[1, 0], [45, 45, 55, 55])
    assert out.classes[:, 0].tolist() == [0, 1]
    assert to_corners(np.array([[1, 2, 3, 4]], np.float32), "center_size").tolist() == [
        [-0.5, 0.0, 2.5, 4.0]
    ]


def test_iou_reorders_swapped_corners() -> None:
    box = np.array([10, 10, 0, 0], np.float32)
    assert iou_suppresses(box, np.array([[0, 0, 10, 10]], np.float32), 0.99).tolist() == [True]


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"score_threshold": 1.5}, "score_threshold must be in [0, 1], got 1.5"),
        ({"iou_threshold": 0.0}, "iou_threshold must be in (0, 1], got 0.0"),
        ({"max_output_boxes": 0}, "max_output_boxes must be in [1, 4096], got 0"),
        ({"box_coding": "xywh"}, "got 'xywh'"),
    ],
)
def test_bad_config_names_the_value(kw: dict[str, object], needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("[", r"\[").replace("(", r"\(")):
        _cfg(**kw)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"boxes must have shape \[B, N, 4\], got \(2, 4\)"):
        efficient_nms(np.zeros((2, 4), np.float32), np.zeros((2, 1), np.float32), _cfg())
    with pytest.raises(ValueError, match=r"\[B, 4 \+ nc, N\], got \(1, 4, 9\)"):
        efficient_nms_yolov8(np.zeros((1, 4, 9), np.float32), _cfg(box_coding="center_size"))
