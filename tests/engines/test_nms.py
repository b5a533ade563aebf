"""Host NMS against hand-computed cases, ties, and the two implementations against each other."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from detserve.engines.nms import batched_nms_keep, nms_keep

METHODS = ["numpy", "cv2"]


def arr(rows: list[list[int]] | list[list[float]]) -> npt.NDArray[np.float32]:
    return np.asarray(rows, np.float32).reshape(-1, 4)


@pytest.mark.parametrize("method", METHODS)
def test_hand_computed_suppression(method: str) -> None:
    # A/B: intersection 8x10 = 80, union 100 + 100 - 80 = 120, IoU 0.667. A/C: IoU 0.
    # B/D: intersection 5*10 = 50, union 150, IoU 0.333.
    boxes = arr([[0, 0, 10, 10], [2, 0, 12, 10], [100, 100, 110, 110], [7, 0, 17, 10]])
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    np.testing.assert_array_equal(nms_keep(boxes, scores, 0.5, method), [0, 2, 3])
    # At 0.7 the 0.667 overlap survives too; D overlaps A by 30/170 and B by 0.333.
    np.testing.assert_array_equal(nms_keep(boxes, scores, 0.7, method), [0, 1, 2, 3])
    # At 0.3 only B goes: D's IoU with A is 30 / 170 = 0.176 (B, which D overlaps more, is gone).
    np.testing.assert_array_equal(nms_keep(boxes, scores, 0.3, method), [0, 2, 3])


@pytest.mark.parametrize("method", METHODS)
def test_output_is_score_descending(method: str) -> None:
    boxes = arr([[0, 0, 1, 1], [10, 10, 11, 11], [20, 20, 21, 21]])
    scores = np.array([0.2, 0.9, 0.5], np.float32)
    np.testing.assert_array_equal(nms_keep(boxes, scores, 0.5, method), [1, 2, 0])


@pytest.mark.parametrize("method", METHODS)
def test_ties_keep_lower_index(method: str) -> None:
    # Three identical boxes with equal scores: the first index wins, the others are suppressed.
    boxes = arr([[5, 5, 15, 15]] * 3 + [[50, 50, 60, 60]])
    scores = np.array([0.5, 0.5, 0.5, 0.5], np.float32)
    np.testing.assert_array_equal(nms_keep(boxes, scores, 0.5, method), [0, 3])


@pytest.mark.parametrize("method", METHODS)
def test_iou_equal_to_threshold_is_kept(method: str) -> None:
    boxes = arr([[0, 0, 10, 10], [0, 0, 10, 5]])  # IoU = 50 / 100 = 0.5 exactly
    scores = np.array([0.9, 0.8], np.float32)
    np.testing.assert_array_equal(nms_keep(boxes, scores, 0.5, method), [0, 1])
    np.testing.assert_array_equal(nms_keep(boxes, scores, 0.49, method), [0])


@pytest.mark.parametrize("method", METHODS)
def test_batched_is_class_aware(method: str) -> None:
    boxes = arr([[0, 0, 10, 10], [0, 0, 10, 10], [1, 0, 11, 10]])
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    classes = np.array([0, 1, 0], np.int64)
    np.testing.assert_array_equal(batched_nms_keep(boxes, scores, classes, 0.5, method), [0, 1])


@pytest.mark.parametrize("method", METHODS)
def test_empty_input(method: str) -> None:
    empty = np.zeros((0, 4), np.float32)
    none = np.zeros((0,), np.float32)
    assert nms_keep(empty, none, 0.5, method).shape == (0,)
    assert batched_nms_keep(empty, none, none.astype(np.int64), 0.5, method).shape == (0,)


@pytest.mark.parametrize("seed", range(5))
def test_numpy_and_cv2_agree_on_random_boxes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    xy = rng.uniform(0, 200, (n, 2))
    wh = rng.uniform(5, 60, (n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, 4, n)
    for iou in (0.3, 0.5, 0.7):
        a = nms_keep(boxes, scores, iou, "numpy")
        np.testing.assert_array_equal(a, nms_keep(boxes, scores, iou, "cv2"))
        b = batched_nms_keep(boxes, scores, classes, iou, "numpy")
        np.testing.assert_array_equal(b, batched_nms_keep(boxes, scores, classes, iou, "cv2"))
        assert len(b) > len(a)  # classes do not suppress each other


@pytest.mark.parametrize("method", METHODS)
def test_max_keep_is_the_first_kept_boxes(method: str) -> None:
    # Greedy NMS stops at max_keep (the request's max_detections): the boxes it keeps must be
    # exactly the first max_keep of the full run, in the same order.
    rng = np.random.default_rng(7)
    n = 400
    xy = rng.uniform(0, 300, (n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (n, 2))], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, n).astype(np.float32)
    classes = rng.integers(0, 3, n)
    full = nms_keep(boxes, scores, 0.5, method)
    full_b = batched_nms_keep(boxes, scores, classes, 0.5, method)
    assert len(full) > 20 and len(full_b) > 20
    for k in (0, 1, 5, 20, len(full) + 10):
        np.testing.assert_array_equal(nms_keep(boxes, scores, 0.5, method, k), full[:k])
        np.testing.assert_array_equal(
            batched_nms_keep(boxes, scores, classes, 0.5, method, k), full_b[:k])


def test_bad_arguments_named() -> None:
    boxes = arr([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"iou_threshold must be in \(0, 1\], got 1.5"):
        nms_keep(boxes, np.ones(1, np.float32), 1.5)
    with pytest.raises(ValueError, match=r"scores must have shape \[1\], got \(2,\)"):
        nms_keep(boxes, np.ones(2, np.float32), 0.5)
    with pytest.raises(ValueError, match=r"NMS method must be one of .*got 'torch'"):
        nms_keep(boxes, np.ones(1, np.float32), 0.5, "torch")
    with pytest.raises(ValueError, match=r"max_keep must be None or an integer >= 0, got -1"):
        nms_keep(boxes, np.ones(1, np.float32), 0.5, "numpy", -1)
