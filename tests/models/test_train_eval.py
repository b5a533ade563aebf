"""The in-training quick val agrees with `detserve-model eval` on the committed model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detserve.models.detector import load_checkpoint
from detserve.models.evaluate import evaluate_package
from detserve.models.scenes import CLASSES, VAL_SIZES, write_coco
from detserve.models.train_data import render_pool
from detserve.models.train_eval import evaluate_model

PACKAGE = Path(__file__).resolve().parents[2] / "models" / "packages" / "shapes_320"
N_SCENES = 30


def test_quick_val_matches_the_server_path_eval(tmp_path: Path) -> None:
    # Same scenes both ways: PyTorch weights + torch NMS here, exported ONNX + host decoder there.
    model, _ = load_checkpoint(PACKAGE / "model.pt")
    model = model.float().eval()
    torch.set_num_threads(2)
    quick = evaluate_model(model, render_pool("val", N_SCENES, VAL_SIZES, None, None, False),
                           CLASSES, 320)
    served = evaluate_package(PACKAGE, write_coco(tmp_path, "val", N_SCENES)).metrics
    assert served.n_images == N_SCENES
    assert quick.map50 == pytest.approx(served.map50, abs=0.005)
    assert quick.map == pytest.approx(served.map, abs=0.005)
    assert quick.ap_small == pytest.approx(served.ap_size["small"] or 0.0, abs=0.005)
