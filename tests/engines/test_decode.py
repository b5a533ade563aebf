"""Output decoders on hand-built raw outputs: yolov8 (host NMS) and end2end (sliced by num_dets)."""

from __future__ import annotations

import dataclasses

import numpy as np
import numpy.typing as npt
import pytest

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.decode import decode_batch
from detserve.engines.manifest import Manifest, OutputFormat, Postprocess

IDENTITY = Letterbox(1.0, 1.0, 0.0, 0.0, 640, 640)


def manifest(fmt: OutputFormat = "yolov8", top_k: int = 1000, multi_label: bool = False
             ) -> Manifest:
    return Manifest(
        name="m",
        version="1",
        classes=("a", "b", "c"),
        input_width=640,
        input_height=640,
        output_format=fmt,
        postprocess=Postprocess(pre_nms_top_k=top_k, multi_label=multi_label),
    )


def params(
    score: float = 0.25, iou: float = 0.5, max_det: int = 100, classes: set[int] | None = None
) -> DecodeParams:
    return DecodeParams(score, iou, max_det, None if classes is None else frozenset(classes))


def yolo_output(
    anchors: list[tuple[float, float, float, float, list[float]]],
) -> npt.NDArray[np.float32]:
    """[1, 7, N] from (cx, cy, w, h, [score_a, score_b, score_c]) per anchor."""
    cols = [[cx, cy, w, h, *s] for cx, cy, w, h, s in anchors]
    return np.asarray(cols, np.float32).T[None]


def test_yolov8_threshold_best_class_and_nms() -> None:
    out = yolo_output(
        [
            (100, 100, 40, 40, [0.9, 0.1, 0.0]),  # a, kept
            (102, 100, 40, 40, [0.8, 0.0, 0.0]),  # a, overlaps the first: suppressed
            (102, 100, 40, 40, [0.1, 0.7, 0.0]),  # b, same place: other class, kept
            (300, 300, 20, 10, [0.0, 0.2, 0.3]),  # c at 0.3, kept
            (500, 500, 20, 20, [0.2, 0.2, 0.2]),  # below 0.25: dropped
        ]
    )
    (det,) = decode_batch([out], manifest(), [IDENTITY], [params()])
    np.testing.assert_array_equal(det.class_ids, [0, 1, 2])
    np.testing.assert_allclose(det.scores, [0.9, 0.7, 0.3], rtol=1e-6)
    np.testing.assert_allclose(
        det.boxes, [[80, 80, 120, 120], [82, 80, 122, 120], [290, 295, 310, 305]]
    )


def test_yolov8_class_filter_max_det_and_threshold_per_request() -> None:
    # Scores for a fall 0.9 .. 0.5; c is 0.65 everywhere, so the best class is a, a, a, c, c.
    out = yolo_output([(100 * i + 50, 50, 20, 20, [0.9 - i * 0.1, 0.0, 0.65]) for i in range(5)])
    out = np.concatenate([out, out])  # the same image twice, decoded with different params
    dets = decode_batch(
        [out], manifest(), [IDENTITY] * 2, [params(max_det=2), params(score=0.55, classes={2})]
    )
    np.testing.assert_array_equal(dets[0].class_ids, [0, 0])
    np.testing.assert_allclose(dets[0].scores, [0.9, 0.8], rtol=1e-6)
    # The filter applies to each anchor's best class (like Ultralytics): anchors 0-2 also score
    # 0.65 for c but are a, so only anchors 3 and 4 come back.
    np.testing.assert_array_equal(dets[1].class_ids, [2, 2])
    np.testing.assert_allclose(dets[1].boxes[:, 0], [340, 440])


def test_yolov8_multi_label_scores_every_anchor_class_pair() -> None:
    out = yolo_output(
        [
            (100, 100, 40, 40, [0.9, 0.6, 0.0]),  # a and b: both above 0.25, both kept
            (102, 100, 40, 40, [0.8, 0.5, 0.3]),  # overlaps: a and b suppressed, c kept
            (300, 300, 20, 10, [0.2, 0.2, 0.2]),  # nothing reaches 0.25
        ]
    )
    (single,) = decode_batch([out], manifest(), [IDENTITY], [params()])
    np.testing.assert_array_equal(single.class_ids, [0])  # anchor 1's best (a) is suppressed
    (multi,) = decode_batch([out], manifest(multi_label=True), [IDENTITY], [params()])
    np.testing.assert_array_equal(multi.class_ids, [0, 1, 2])
    np.testing.assert_allclose(multi.scores, [0.9, 0.6, 0.3], rtol=1e-6)
    np.testing.assert_allclose(multi.boxes[:, 0], [80, 80, 82])
    # The class filter picks pairs, not anchors: b comes back although a is anchor 0's best.
    (only_b,) = decode_batch([out], manifest(multi_label=True), [IDENTITY], [params(classes={1})])
    np.testing.assert_allclose(only_b.scores, [0.6], rtol=1e-6)


def test_yolov8_multi_label_top_k_counts_pairs() -> None:
    out = yolo_output([(100 * i + 50, 50, 20, 20, [0.9 - 0.1 * i, 0.85 - 0.1 * i, 0.0])
                       for i in range(3)])
    (det,) = decode_batch([out], manifest(top_k=3, multi_label=True), [IDENTITY], [params()])
    np.testing.assert_allclose(det.scores, [0.9, 0.85, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(det.class_ids, [0, 1, 0])


def test_yolov8_pre_nms_top_k() -> None:
    out = yolo_output([(50 * i + 25, 25, 10, 10, [0.3 + 0.1 * i, 0.0, 0.0]) for i in range(5)])
    (det,) = decode_batch([out], manifest(top_k=2), [IDENTITY], [params()])
    np.testing.assert_allclose(det.scores, [0.7, 0.6], rtol=1e-6)


def test_boxes_mapped_back_and_clipped() -> None:
    # A 200x100 image letterboxed into 640x640: scale 3.2, pad_y 160.
    box = Letterbox(3.2, 3.2, 0.0, 160.0, 200, 100)
    out = yolo_output([(320, 320, 320, 160, [0.9, 0, 0]), (630, 480, 40, 40, [0, 0.9, 0])])
    (det,) = decode_batch([out], manifest(), [box], [params()])
    # x: 160 / 3.2 = 50, 480 / 3.2 = 150; y: (240 - 160) / 3.2 = 25, (400 - 160) / 3.2 = 75.
    # The second box, 610..650 x 460..500, ends past the image's right and bottom: clipped.
    np.testing.assert_allclose(
        det.boxes, [[50.0, 25.0, 150.0, 75.0], [190.625, 93.75, 200.0, 100.0]], rtol=1e-6
    )


def end2end_outputs() -> list[npt.NDArray[np.generic]]:
    num = np.array([[2], [0]], np.int32)
    boxes = np.full((2, 4, 4), 7777.0, np.float32)  # padding rows hold garbage
    boxes[0, :2] = [[10, 10, 50, 50], [100, 100, 200, 150]]
    scores = np.full((2, 4), 0.99, np.float32)
    scores[0, :2] = [0.8, 0.4]
    classes = np.full((2, 4), 1, np.int32)
    classes[0, :2] = [2, 0]
    return [num, boxes, scores, classes]


def test_end2end_sliced_by_num_dets() -> None:
    dets = decode_batch(end2end_outputs(), manifest("end2end"), [IDENTITY] * 2, [params()] * 2)
    np.testing.assert_allclose(dets[0].boxes, [[10, 10, 50, 50], [100, 100, 200, 150]])
    np.testing.assert_allclose(dets[0].scores, [0.8, 0.4])
    np.testing.assert_array_equal(dets[0].class_ids, [2, 0])
    assert dets[0].class_ids.dtype == np.int64
    assert len(dets[1]) == 0  # num_dets 0: the 0.99 garbage rows never appear


def test_end2end_request_filters() -> None:
    outs = end2end_outputs()
    box = Letterbox(2.0, 2.0, 0.0, 20.0, 320, 300)
    dets = decode_batch(outs, manifest("end2end"), [box, IDENTITY], [params(score=0.5), params()])
    np.testing.assert_allclose(dets[0].boxes, [[5, 0, 25, 15]])
    (only_a, _) = decode_batch(
        outs, manifest("end2end"), [IDENTITY] * 2, [params(classes={0}), params()]
    )
    np.testing.assert_array_equal(only_a.class_ids, [0])
    (top1, _) = decode_batch(
        outs, manifest("end2end"), [IDENTITY] * 2, [params(max_det=1), params()]
    )
    np.testing.assert_allclose(top1.scores, [0.8])


def test_malformed_outputs_named() -> None:
    with pytest.raises(ValueError, match=r"shape \[B, 7, N\] for 3 classes, got \(1, 6, 10\)"):
        decode_batch([np.zeros((1, 6, 10), np.float32)], manifest(), [IDENTITY], [params()])
    with pytest.raises(ValueError, match="batch of 1 outputs needs 1 letterboxes and 1 params"):
        decode_batch([np.zeros((1, 7, 10), np.float32)], manifest(), [], [params()])
    outs = end2end_outputs()
    outs[0] = np.array([[5], [0]], np.int32)
    with pytest.raises(ValueError, match=r"num_dets\[0\] = 5 is outside \[0, 4\]"):
        decode_batch(outs, manifest("end2end"), [IDENTITY] * 2, [params()] * 2)
    outs = end2end_outputs()
    outs[3][0, 0] = 3
    with pytest.raises(ValueError, match=r"class id 3 outside \[0, 3\)"):
        decode_batch(outs, manifest("end2end"), [IDENTITY] * 2, [params()] * 2)


def test_manifest_default_params() -> None:
    m = dataclasses.replace(manifest(), postprocess=Postprocess(0.4, 0.6, 7, 100))
    assert DecodeParams.from_manifest(m) == DecodeParams(0.4, 0.6, 7)
