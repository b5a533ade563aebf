from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detserve.engines.detections import Detections
from detserve.engines.manifest import load_package
from detserve.models.evaluate import (
    SplitError,
    apply_threshold,
    choose_threshold,
    evaluate_package,
    write_report,
)
from detserve.models.evaluate_metrics import ImageDetections, best_f1_threshold, coco_metrics

from .blocks_coco import write_blocks_set

CLASSES = ("a", "b")


def _gt(boxes_per_image: list[list[tuple[int, list[float]]]], split: str = "val") -> dict[str, Any]:
    """COCO dict from per-image lists of (class index, xyxy box)."""
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i, objs in enumerate(boxes_per_image, start=1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 100, "height": 100})
        for cls, (x1, y1, x2, y2) in objs:
            w, h = x2 - x1, y2 - y1
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cls + 1,
                         "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    cats = [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]
    return {"info": {"split": split}, "images": images, "annotations": anns, "categories": cats}


def _dets(rows: list[tuple[int, float, list[float]]]) -> Detections:
    """Detections from (class index, score, xyxy box) rows."""
    return Detections(np.array([r[2] for r in rows], np.float32).reshape(-1, 4),
                      np.array([r[1] for r in rows], np.float32),
                      np.array([r[0] for r in rows], np.int64))


GT_BOXES = [[(0, [10.0, 10.0, 30.0, 30.0])], [(0, [50.0, 50.0, 70.0, 70.0]),
                                               (1, [5.0, 60.0, 45.0, 100.0])]]


def test_perfect_predictions_score_one() -> None:
    preds = [ImageDetections(i + 1, _dets([(c, 0.9, b) for c, b in objs]))
             for i, objs in enumerate(GT_BOXES)]
    m = coco_metrics(_gt(GT_BOXES), preds, CLASSES)
    assert m.map50 == pytest.approx(1.0) and m.map == pytest.approx(1.0)
    assert m.per_class["a"].ap == pytest.approx(1.0) and m.per_class["b"].ap50 == pytest.approx(1.0)
    assert m.ap_size["small"] == pytest.approx(1.0) and m.ap_size["medium"] == pytest.approx(1.0)
    assert m.ap_size["large"] is None  # no large objects: no number, not a fake 0
    assert (m.n_images, m.n_objects, m.n_detections) == (2, 3, 3)


def test_one_shifted_box_gives_the_hand_computed_ap() -> None:
    # Class "a": two 20x20 objects. The second prediction is shifted 4 px right:
    # IoU = (16*20) / (400 + 400 - 320) = 2/3, so it matches at IoU 0.50..0.65 (4 of the 10
    # thresholds) and is a false positive at 0.70..0.95. At those 6 thresholds the
    # precision/recall curve is precision 1 up to recall 0.5, then nothing: COCO's 101-point
    # interpolation gives 51/101. AP@0.50:0.95 for "a" = (4 * 1 + 6 * 51/101) / 10.
    gt_boxes = [[(0, [10.0, 10.0, 30.0, 30.0])], [(0, [50.0, 50.0, 70.0, 70.0])]]
    preds = [ImageDetections(1, _dets([(0, 0.9, [10.0, 10.0, 30.0, 30.0])])),
             ImageDetections(2, _dets([(0, 0.8, [54.0, 50.0, 74.0, 70.0])]))]
    m = coco_metrics(_gt(gt_boxes), preds, CLASSES)
    expected = (4 * 1.0 + 6 * 51 / 101) / 10
    assert m.map50 == pytest.approx(1.0)
    assert m.map == pytest.approx(expected, abs=1e-6)
    assert m.per_class["a"].ap == pytest.approx(expected, abs=1e-6)
    assert m.per_class["b"].ap is None  # no ground truth for "b"


def test_no_detections_give_zero_and_unknown_categories_are_refused() -> None:
    m = coco_metrics(_gt(GT_BOXES), [ImageDetections(1, Detections.empty())], CLASSES)
    assert m.map == 0.0 and m.map50 == 0.0
    with pytest.raises(ValueError, match=r"\['b'\] are not classes of the model"):
        coco_metrics(_gt(GT_BOXES), [], ("a", "z"))


def test_best_f1_threshold_by_hand() -> None:
    # Two objects; detections by score: TP, FP, TP, FP (the FP at 0.6 has the right box but
    # the wrong class). F1 after each: 2/3, 1/2, 4/5, 2/3 -> best is 0.8 at score 0.7.
    gt = [np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)]
    cls = [np.array([0, 0], np.int64)]
    det = _dets([(0, 0.9, [0, 0, 10, 10]), (0, 0.8, [50, 50, 60, 60]),
                 (0, 0.7, [20, 21, 30, 30]), (1, 0.6, [0, 0, 10, 10])])
    choice = best_f1_threshold(gt, cls, [det], iou=0.5)
    assert choice.score_threshold == pytest.approx(0.7)
    assert choice.f1 == pytest.approx(0.8)
    assert choice.precision == pytest.approx(2 / 3) and choice.recall == pytest.approx(1.0)


def test_threshold_is_never_chosen_on_test() -> None:
    preds = [ImageDetections(1, _dets([(0, 0.9, [10.0, 10.0, 30.0, 30.0])]))]
    with pytest.raises(SplitError, match="test split"):
        choose_threshold(_gt(GT_BOXES, split="test"), preds, CLASSES)


def test_package_through_the_engine_chooses_and_writes_threshold(
        tiny_package: Path, tmp_path: Path) -> None:
    import shutil

    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    data = write_blocks_set(tmp_path / "val")
    report = evaluate_package(pkg, data, choose=True, batch_size=2)
    assert report.metrics.map50 == pytest.approx(1.0) and report.metrics.map == pytest.approx(1.0)
    assert report.metrics.n_objects == 4 and report.split == "val"
    assert report.threshold is not None and report.threshold.f1 == pytest.approx(1.0)
    apply_threshold(pkg, report)
    man = load_package(pkg).manifest
    assert man.postprocess.score_threshold == pytest.approx(report.threshold.score_threshold)
    assert man.metadata["val_metrics"]["mAP@0.5:0.95"] == pytest.approx(1.0)
    js, md = write_report(report, tmp_path / "out")
    assert json.loads(js.read_text())["metrics"]["map50"] == pytest.approx(1.0)
    assert "| mAP | 0.50:0.95 | 1.000 |" in md.read_text()


def test_cli_eval_writes_reports_and_refuses_test_threshold(
        tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import argparse

    from detserve.models import cli_eval

    parser = argparse.ArgumentParser()
    cli_eval.register(parser.add_subparsers(dest="command", required=True))
    data = write_blocks_set(tmp_path / "val")
    args = parser.parse_args(["eval", str(tiny_package), "--data", str(data.parent),
                              "--out", str(tmp_path / "r")])
    assert args.func(args) == 0
    assert "| mAP | 0.5 | 1.000 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "r/eval.json").read_text())["metrics"]["map"] == 1.0
    doc = json.loads(data.read_text())
    doc["info"]["split"] = "test"
    data.write_text(json.dumps(doc))
    args = parser.parse_args(["eval", str(tiny_package), "--data", str(data),
                              "--choose-threshold"])
    assert args.func(args) == 2
    assert "test split" in capsys.readouterr().err


def test_generated_set_scored_against_its_own_scenes_is_perfect(tmp_path: Path) -> None:
    from detserve.models.coco import load_coco
    from detserve.models.scenes import CLASSES as SHAPES
    from detserve.models.scenes import render_scene, split_seeds

    coco = load_coco(_small_val_set(tmp_path))
    preds = []
    for img, seed in zip(coco.images, split_seeds("val", 4), strict=True):
        s = render_scene(seed, img.width, img.height)
        preds.append(ImageDetections(img.id, Detections(
            s.boxes, np.linspace(0.9, 0.5, len(s.boxes), dtype=np.float32), s.class_ids)))
    m = coco_metrics(coco.raw, preds, SHAPES)
    assert m.map == pytest.approx(1.0) and m.ap_size["small"] == pytest.approx(1.0)
    assert m.n_objects == sum(len(p.detections) for p in preds) > 0


def _small_val_set(root: Path) -> Path:
    from detserve.models.scenes import write_coco

    return write_coco(root, "val", 4, sizes=[(320, 320), (640, 480)])
