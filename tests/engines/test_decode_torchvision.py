"""The `torchvision` output format: three outputs per image (boxes, labels, scores), NMS done in
the graph; the manifest field that goes with it; the ONNX Runtime engine running a one-image
graph over a batch, on the graph built in torchvision_graph.py."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.decode import decode_batch
from detserve.engines.factory import create_engine
from detserve.engines.manifest import (
    Manifest,
    ManifestError,
    load_package,
    parse_manifest,
)
from detserve.engines.ort import OrtEngine

from .torchvision_graph import CELL, SIZE, write_package

IDENTITY = Letterbox(1.0, 1.0, 0.0, 0.0, 640, 640)
MANIFEST = Manifest(
    name="tv", version="1", classes=("a", "b", "c"), input_width=640, input_height=640,
    output_format="torchvision", nms="in-graph",
)  # fmt: skip


def params(score: float = 0.25, max_det: int = 100, classes: set[int] | None = None
           ) -> DecodeParams:  # fmt: skip
    return DecodeParams(score, 0.5, max_det, None if classes is None else frozenset(classes))


def image_outputs(rows: Sequence[tuple[float, float, float, float, int, float]]
                  ) -> list[npt.NDArray[np.generic]]:  # fmt: skip
    """boxes [N,4], labels [N] int64, scores [N] from (x1, y1, x2, y2, label, score) rows."""
    boxes = np.asarray([r[:4] for r in rows], np.float32).reshape(-1, 4)
    labels = np.asarray([r[4] for r in rows], np.int64)
    scores = np.asarray([r[5] for r in rows], np.float32)
    return [boxes, labels, scores]


ROWS: list[tuple[float, float, float, float, int, float]] = [
    (10, 10, 50, 50, 1, 0.9),  # a
    (60, 60, 90, 90, 3, 0.2),  # c, below 0.25
    (100, 100, 140, 160, 2, 0.7),  # b
    (5, 5, 15, 15, 3, 0.95),  # c, best: comes first
]


def test_labels_shift_by_the_offset_and_scores_sort_and_threshold() -> None:
    (det,) = decode_batch(image_outputs(ROWS), MANIFEST, [IDENTITY], [params()])
    np.testing.assert_array_equal(det.class_ids, [2, 0, 1])
    np.testing.assert_allclose(det.scores, [0.95, 0.9, 0.7], rtol=1e-6)
    np.testing.assert_allclose(det.boxes, [[5, 5, 15, 15], [10, 10, 50, 50], [100, 100, 140, 160]])


def test_class_filter_max_detections_and_threshold_at_equality() -> None:
    (det,) = decode_batch(image_outputs(ROWS), MANIFEST, [IDENTITY], [params(0.7, 1, {0, 1})])
    np.testing.assert_array_equal(det.class_ids, [0])
    (det,) = decode_batch(image_outputs(ROWS), MANIFEST, [IDENTITY], [params(0.7)])
    np.testing.assert_allclose(det.scores, [0.95, 0.9, 0.7], rtol=1e-6)  # 0.7 >= 0.7 passes


def test_each_image_of_a_batch_has_its_own_length_letterbox_and_params() -> None:
    half = Letterbox(0.5, 0.5, 0.0, 20.0, 100, 80)  # input = orig * 0.5, padded 20 px in y
    outputs = image_outputs(ROWS) + image_outputs([]) + image_outputs([(10, 30, 30, 50, 1, 0.5)])
    dets = decode_batch(outputs, MANIFEST, [IDENTITY, IDENTITY, half],
                        [params(), params(), params(0.4)])  # fmt: skip
    assert [len(d.scores) for d in dets] == [3, 0, 1]
    np.testing.assert_allclose(dets[2].boxes, [[20, 20, 60, 60]])
    assert dets[1].boxes.shape == (0, 4)


def test_label_offset_zero_reads_labels_as_class_ids() -> None:
    m = dataclasses.replace(MANIFEST, label_offset=0)
    (det,) = decode_batch(image_outputs([(0, 0, 1, 1, 0, 0.9)]), m, [IDENTITY], [params()])
    np.testing.assert_array_equal(det.class_ids, [0])


@pytest.mark.parametrize("label", [0, 4])
def test_a_label_outside_the_classes_names_the_label_and_offset(label: int) -> None:
    with pytest.raises(ValueError, match=rf"label {label} outside \[1, 4\) for 3 classes "
                                         r"with output.label_offset 1"):  # fmt: skip
        decode_batch(image_outputs([(0, 0, 1, 1, label, 0.9)]), MANIFEST, [IDENTITY], [params()])


def test_bad_output_counts_and_shapes_are_refused() -> None:
    two = image_outputs(ROWS)[:2]
    with pytest.raises(ValueError, match=r"3 outputs per image .* got 2"):
        decode_batch(two, MANIFEST, [IDENTITY], [params()])
    with pytest.raises(ValueError, match="batch of 2 outputs needs 2 letterboxes"):
        decode_batch(image_outputs(ROWS) * 2, MANIFEST, [IDENTITY], [params()])
    boxes, labels, scores = image_outputs(ROWS)
    with pytest.raises(ValueError, match=r"boxes \[N,4\], labels \[N\], scores \[N\]"):
        decode_batch([boxes, labels[:2], scores], MANIFEST, [IDENTITY], [params()])
    with pytest.raises(ValueError, match="labels of image 0 must be integers"):
        decode_batch([boxes, labels.astype(np.float32), scores], MANIFEST, [IDENTITY], [params()])


def test_manifest_label_offset_round_trips_and_is_validated() -> None:
    raw = MANIFEST.to_dict()
    assert raw["output"] == {"format": "torchvision", "nms": "in-graph", "label_offset": 1}
    raw["output"]["label_offset"] = 0
    assert parse_manifest(raw).label_offset == 0
    raw["output"]["label_offset"] = -1
    with pytest.raises(ManifestError, match=r"'output\.label_offset' must be an integer >= 0"):
        parse_manifest(raw)
    # Other formats keep the manifest they always wrote.
    assert "label_offset" not in dataclasses.replace(MANIFEST, output_format="yolov8").to_dict()[
        "output"]


def test_ort_engine_runs_a_one_image_graph_over_a_batch(tmp_path: Path) -> None:
    package = load_package(write_package(tmp_path / "pkg"))
    engine = OrtEngine(package, intra_op_threads=1)
    batch = np.zeros((3, 3, SIZE, SIZE), np.float32)
    batch[0, 2, :CELL, :CELL] = 1.0  # blue in cell 0
    batch[2, 0, CELL : 2 * CELL, 3 * CELL :] = 0.8  # red in cell (gx 3, gy 1)
    outputs = engine.infer(batch)
    assert len(outputs) == 9
    box = Letterbox(1.0, 1.0, 0.0, 0.0, SIZE, SIZE)
    dets = decode_batch(outputs, package.manifest, [box] * 3, [params(0.5)] * 3)
    assert [d.class_ids.tolist() for d in dets] == [[2], [], [0]]
    np.testing.assert_allclose(dets[2].boxes, [[48, 16, 64, 32]])
    np.testing.assert_allclose(dets[2].scores, [0.8], rtol=1e-5)  # a pooled mean


def test_ort_engine_refuses_a_graph_traced_at_batch_two(tmp_path: Path) -> None:
    package = load_package(write_package(tmp_path / "pkg", outputs_per_image=2))
    with pytest.raises(ManifestError, match=r"graph has 6 outputs.*export it with a batch-1"):
        OrtEngine(package)


def test_other_engine_kinds_are_refused_for_a_one_image_graph(tmp_path: Path) -> None:
    package = load_package(write_package(tmp_path / "pkg"))
    with pytest.raises(ValueError, match="runs on engine 'onnxruntime' only, not 'openvino'"):
        create_engine(package, "openvino")
    assert create_engine(package, "onnxruntime").kind == "onnxruntime"
