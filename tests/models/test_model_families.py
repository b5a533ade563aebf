"""benchmarks/model_families.py's measurement, output checks and verdicts, on real packages and
real engines (ONNX Runtime and OpenVINO); the timing limits are shortened for the suite."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import model_families_measure as fm  # noqa: E402
from model_families_report import fastest, verdict  # noqa: E402
from model_families_rows import int8_check  # noqa: E402

SHAPES_320 = REPO / "models/packages/shapes_320"


@pytest.fixture()
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fm, "MIN_RUNS", 2)
    monkeypatch.setattr(fm, "MIN_S", 0.0)


def _dets(boxes: list[list[float]], labels: list[int], scores: list[float]) -> list[np.ndarray]:
    return [np.array(boxes, np.float32), np.array(labels, np.int64), np.array(scores, np.float32)]


def test_matched_diff_ignores_row_order() -> None:
    want = _dets([[0, 0, 10, 10], [50, 50, 60, 60]], [1, 2], [0.9, 0.5])
    got = _dets([[50, 50, 60, 61], [0, 0, 10, 10]], [2, 1], [0.5, 0.9])
    d = fm.matched_diff(want, got)
    assert d["max_abs_diff_boxes"] == pytest.approx(1.0)
    assert d["labels_unmatched"] == 0 and d["detections"] == [2, 2]


def test_a_shifted_copy_at_a_tied_score_is_counted_apart() -> None:
    """Near-equal scores: each runtime may keep a different one of two neighbouring copies. Such
    a detection is counted as tied; a shifted one whose score has no near twin is not."""
    want = _dets([[0, 0, 10, 10], [100, 100, 120, 120], [0, 0, 5, 5]], [1, 1, 1], [0.9, 0.5, 0.2])
    boxes = [[0, 0, 10, 10], [108, 100, 128, 120], [0, 0, 5, 5]]
    tied = fm.matched_diff(want, _dets(boxes, [1, 1, 1], [0.9, 0.5004, 0.2]))
    assert tied["max_abs_diff_boxes"] == pytest.approx(8.0)
    assert (tied["tied_off"], tied["max_abs_diff_boxes_untied"]) == (1, 0.0)
    assert tied["max_abs_diff_sorted_scores"] == pytest.approx(0.0004, abs=1e-6)
    off = fm.matched_diff(want, _dets(boxes, [1, 1, 1], [0.9, 0.7, 0.2]))
    assert (off["tied_off"], off["max_abs_diff_boxes_untied"]) == (0, pytest.approx(8.0))


def test_label_without_a_twin_is_counted() -> None:
    d = fm.matched_diff(_dets([[0, 0, 1, 1]], [1], [0.5]), _dets([[0, 0, 1, 1]], [3], [0.5]))
    assert d["labels_unmatched"] == 1


def test_yolov8_raw_outputs_split_boxes_from_scores() -> None:
    want = np.zeros((1, 10, 4), np.float32)
    got = want.copy()
    got[0, 2, 1], got[0, 7, 3] = 0.5, 0.01
    c = fm.compare([got], [want], "yolov8")
    assert (c["max_abs_diff_boxes"], c["max_abs_diff_scores"]) == (0.5, pytest.approx(0.01))
    with pytest.raises(ValueError, match="shapes differ"):
        fm.compare([got[:, :, :2]], [want], "yolov8")


def _path(name: str, b1: float, **extra: Any) -> dict[str, Any]:
    return {"path": name, "ms_per_image_b1": b1, **extra}


def test_only_verified_paths_can_be_fastest() -> None:
    ort = _path("ort-fp32", 10.0)
    ok = _path("ov-fp32", 8.0, check={"max_abs_diff_boxes": 0.001, "max_abs_diff_scores": 1e-6})
    off = _path("ov-fp32", 5.0, check={"max_abs_diff_boxes": 3.0, "max_abs_diff_scores": 1e-6})
    broken = {"path": "ov-fp32", "error": "RuntimeError: cannot compile"}
    int8 = _path("ov-int8", 4.0, check={"max_abs_diff_boxes": 2.0, "max_abs_diff_scores": 0.1})
    for p, by in ((ort, ""), (ok, ""), (off, ""), (broken, ""), (int8, "val mAP -0.07")):
        p["verdict"] = verdict(p, by)
    assert ort["verdict"] == "reference"
    assert ok["verdict"].startswith("verified: max diff")
    assert off["verdict"].startswith("not verified")
    assert broken["verdict"].startswith("not verified: failed (RuntimeError")
    assert int8["verdict"] == "verified: val mAP -0.07"
    assert fastest([ort, ok, off, broken], 1) is ok
    assert fastest([ort, ok, int8], 1) is int8
    assert fastest([ort, ok], 8) is None  # nothing timed at batch 8


def test_a_torchvision_path_with_other_detections_is_not_verified() -> None:
    short = _path("ov-fp32", 1.0, check={
        "detections": [300, 1], "labels_unmatched": 0, "max_abs_diff_boxes": 0.0,
        "max_abs_diff_scores": 0.0, "max_abs_diff_sorted_scores": 0.0,
        "max_abs_diff_boxes_untied": 0.0})  # fmt: skip
    assert verdict(short, "") == ("not verified: 1 detections against ORT FP32's 300, 0 of a "
                                  "label ORT did not return")  # fmt: skip


def test_int8_check_cites_the_committed_precision_report() -> None:
    text = int8_check(320)
    assert "shapes_320_int8/precision.md" in text
    assert "mAP@0.5 -0.07" in text


def test_ort_then_openvino_on_the_default_package(quick: None, tmp_path: Path) -> None:
    """The measurement as the table runs it: ORT saves its batch-1 outputs, OpenVINO FP32 is
    checked against them; memory figures come from this process's /proc/self/status."""
    ref = tmp_path / "ref.npz"
    ort = fm.measure("ort-fp32", SHAPES_320, [1, 2], ref, None)
    assert ref.is_file() and "check" not in ort
    assert ort["runs_b1"] >= 2 and ort["ms_per_image_b1"] > 0
    assert ort["rss_loaded_mib"] > 0 and ort["peak_rss_mib"] >= ort["rss_loaded_mib"]
    assert ort["activation_mib_b2"] > 0
    ov = fm.measure("ov-fp32", SHAPES_320, [1, 2], None, ref)
    assert ov["check"]["max_abs_diff_boxes"] < 0.05
    assert ov["check"]["max_abs_diff_scores"] < 1e-3
    with pytest.raises(ValueError, match="unknown path"):
        fm.make_engine("tensorrt", SHAPES_320, [1])
