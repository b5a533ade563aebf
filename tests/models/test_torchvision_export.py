"""The torchvision exporter's own parts, on a tiny per-image detector built here (torchvision
itself lives only in the optional .venv-tv, so the real architectures are not exported here):
the wrapper's output order, the seed's snippet to a one-image torchvision-format package graph,
its parity, what a batch of 2 does to it, and the order-free parity match."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detserve.models.torchvision_export import (
    PerImageOutputs,
    _matched_diff,
    _session,
    batch_probe,
    export,
    parity,
)

SIZE = 32


class TinyDetector(nn.Module):
    """Loops over its images as torchvision's detectors do and returns their list of dicts, in
    SSD's key order (boxes, scores, labels): three detections per image from channel means."""

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for img in images:
            score = img.mean(dim=(1, 2))  # [3]
            side = 4.0 + 20.0 * score
            boxes = torch.stack([side * 0, side * 0, side, side], dim=1)
            labels = torch.argsort(score) + 1
            out.append({"boxes": boxes, "scores": score, "labels": labels})
        return out


def test_wrapper_orders_boxes_labels_scores_per_image() -> None:
    x = torch.rand(2, 3, SIZE, SIZE)
    flat = PerImageOutputs(TinyDetector())(x)
    assert len(flat) == 6
    dets = TinyDetector()(x)
    for i in range(2):
        assert torch.equal(flat[3 * i], dets[i]["boxes"])
        assert torch.equal(flat[3 * i + 1], dets[i]["labels"])
        assert flat[3 * i + 1].dtype == torch.int64
        assert torch.equal(flat[3 * i + 2], dets[i]["scores"])


def test_snippet_export_has_the_three_outputs_parity_and_a_nominal_batch(tmp_path: Path) -> None:
    model = PerImageOutputs(TinyDetector()).eval()
    facts = export(model, SIZE, tmp_path)
    assert "exporter" in facts
    session = _session(tmp_path / "detector.onnx")
    assert [o.name for o in session.get_outputs()] == ["boxes", "labels", "scores"]
    assert session.get_inputs()[0].shape[0] == "batch"
    report = parity(model, session, SIZE)
    assert report["counts_equal"] and report["labels_equal"]
    assert report["max_abs_diff_boxes"] < 1e-4 and report["max_abs_diff_scores"] < 1e-6
    # The trace unrolled the per-image loop at batch 1: image 1 of a batch of 2 never shows.
    probe = batch_probe(session, SIZE)
    assert probe == "ran, 3 outputs: image 0's detections only, image 1 dropped"


def test_matched_diff_ignores_row_order_but_not_a_moved_box() -> None:
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 8, 8]], np.float32)
    labels = np.array([1, 1, 2])
    scores = np.array([0.9, 0.9, 0.5], np.float32)
    swapped = [boxes[[1, 0, 2]], labels[[1, 0, 2]], scores[[1, 0, 2]]]
    assert _matched_diff([boxes, labels, scores], swapped) == {
        "matched_max_abs_diff_boxes": 0.0, "matched_max_abs_diff_scores": 0.0}
    moved = [boxes + np.float32(0.25), labels, scores]
    assert _matched_diff([boxes, labels, scores], moved)["matched_max_abs_diff_boxes"] == (
        pytest.approx(0.25))
    relabelled = [boxes, np.array([1, 1, 3]), scores]
    assert _matched_diff([boxes, labels, scores], relabelled)["matched_max_abs_diff_boxes"] == (
        float("inf"))


def test_cli_without_torchvision_names_the_environment_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("torch")
    try:
        import torchvision  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        pytest.skip("torchvision is installed here (this is the .venv-tv environment)")
    from detserve.models.cli import main

    rc = main(["export-torchvision", "ssdlite320_mobilenet_v3_large", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err
    assert "bash models/torchvision_env.sh" in err and ".venv-tv/bin/detserve-model" in err
