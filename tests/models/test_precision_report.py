"""FP32 against INT8 (or any two packages): row-by-row AP differences and margin flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detserve.models.efficient_nms_ref import NmsConfig
from detserve.models.evaluate_metrics import ClassAP, CocoMetrics
from detserve.models.nms_graph import add_nms_package
from detserve.models.precision_report import compare_metrics, compare_packages, write_comparison

from .blocks_coco import write_blocks_set


def _metrics(map50: float, small: float | None, circle: float, n_images: int = 10) -> CocoMetrics:
    return CocoMetrics(
        map50=map50, map=map50 / 2,
        ap_size={"small": None if small is None else small / 2, "medium": 0.4, "large": 0.5},
        ap_size50={"small": small, "medium": 0.8, "large": 0.9},
        per_class={"circle": ClassAP(circle, circle / 2), "square": ClassAP(0.7, 0.35)},
        n_images=n_images, n_objects=40, n_detections=100,
    )  # fmt: skip


def test_rows_deltas_and_flags() -> None:
    cmp = compare_metrics(_metrics(0.80, 0.60, 0.90), _metrics(0.795, 0.55, 0.91), 1.0)
    assert cmp.row("mAP@0.5").delta_points == pytest.approx(-0.5)
    assert cmp.row("AP_small@0.5").delta_points == pytest.approx(-5.0)
    assert cmp.row("circle AP@0.5").delta_points == pytest.approx(1.0)
    assert [r.metric for r in cmp.flagged] == [
        "AP_small@0.5", "AP_small@0.5:0.95"
    ]  # fmt: skip
    md = cmp.to_markdown()
    assert "| size | AP_small@0.5 | 0.600 | 0.550 | -5.00 | LOSS > 1 |" in md
    assert "2 row(s) lose more than 1 point(s)." in md
    assert cmp.to_dict()["flagged"] == ["AP_small@0.5", "AP_small@0.5:0.95"]


def test_missing_ground_truth_is_never_flagged() -> None:
    cmp = compare_metrics(_metrics(0.8, None, 0.9), _metrics(0.8, None, 0.9), 0.0)
    assert cmp.row("AP_small@0.5").delta_points is None and cmp.flagged == []
    assert "| size | AP_small@0.5 | n/a | n/a | n/a |  |" in cmp.to_markdown()


def test_different_sets_and_bad_margin_are_refused() -> None:
    with pytest.raises(ValueError, match="different sets: 10 images / 40 objects against 9 / 40"):
        compare_metrics(_metrics(0.8, 0.6, 0.9), _metrics(0.8, 0.6, 0.9, n_images=9))
    with pytest.raises(ValueError, match=r"--margin must be >= 0 points, got -1"):
        compare_metrics(_metrics(0.8, 0.6, 0.9), _metrics(0.8, 0.6, 0.9), -1)


def test_host_and_in_graph_nms_packages_score_the_same(tiny_package: Path, tmp_path: Path) -> None:
    e2e = add_nms_package(tiny_package, tmp_path / "in_graph", "ort", NmsConfig(0.001, 0.5, 100))
    data = write_blocks_set(tmp_path / "set").parent
    cmp = compare_packages(tiny_package, e2e, data, margin_points=0.0)
    assert (cmp.base_label, cmp.other_label) == (tiny_package.name, "in_graph")
    assert cmp.row("mAP@0.5").base == pytest.approx(1.0)
    assert all(r.delta_points in (None, 0.0) for r in cmp.rows) and cmp.flagged == []
    js, md = write_comparison(cmp, tmp_path / "report")
    assert json.loads(js.read_text())["rows"][0]["metric"] == "mAP@0.5"
    assert md.read_text().startswith("| group | metric |")
