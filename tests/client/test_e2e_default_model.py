"""Issue 2's end-to-end check: `detserve-client detect` on synthetic scenes, served by the
embedded default model, returns the objects in them (IoU >= 0.5 with the ground truth, right
labels). Runs once the trained package models/packages/shapes_320 is committed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detserve.client.cli import main as client_main

from .conftest import ThreadedServer, needs_default_package, png_bytes

needs_package = needs_default_package


def iou(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_iou_by_hand() -> None:
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 1, 1], [2, 2, 3, 3]) == 0.0


@needs_package
def test_detect_cli_finds_the_objects_of_synthetic_scenes(
        default_server: ThreadedServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from detserve.models.scenes import CLASSES, render_scene, split_seeds

    scenes = [render_scene(seed, 480, 360) for seed in split_seeds("test", 4)]
    paths = []
    for i, scene in enumerate(scenes):
        paths.append(tmp_path / f"scene{i}.png")
        paths[-1].write_bytes(png_bytes(scene.image))
    assert client_main(["detect", *map(str, paths), "--json", "--target",
                        default_server.target]) == 0
    replies = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    found = total = predicted = 0
    for scene, reply in zip(scenes, replies, strict=True):
        dets = reply["detections"]
        predicted += len(dets)
        used: set[int] = set()
        for box, cls in zip(scene.boxes.tolist(), scene.class_ids.tolist(), strict=True):
            total += 1
            match = [j for j, d in enumerate(dets) if j not in used
                     and d["label"] == CLASSES[cls] and iou(d["bbox"], box) >= 0.5]
            if match:
                used.add(match[0])
                found += 1
    assert total > 0
    assert found / total >= 0.8, f"found {found} of {total} objects"
    assert found / max(predicted, 1) >= 0.8, f"{predicted - found} of {predicted} false"
    assert np.isfinite([r["latency_ms"] for r in replies]).all()
    assert {r["model"] for r in replies} == {"shapes@320"}
    engine = default_server.server.registry.default
    assert (engine.engine_kind, engine.manifest.precision) == ("openvino", "int8")


@needs_package
def test_models_cli_reports_the_default_packages_multi_label_nms(
        default_server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert client_main(["models", "--json", "--target", default_server.target]) == 0
    listing = json.loads(capsys.readouterr().out)
    facts = {m["name"]: (m["nms"], m["multi_label"], m["precision"]) for m in listing["models"]}
    assert facts["shapes@320"] == ("host", True, "int8")
    assert listing["default_model"] == "shapes@320"
