"""OrtEngine on the real blocks model: outputs, and manifest/graph mismatches caught at load."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detserve.engines.base import Engine
from detserve.engines.factory import create_engine
from detserve.engines.manifest import ManifestError, ModelPackage, load_package
from detserve.engines.ort import OrtEngine


def with_manifest(root: Path, **changes: Any) -> ModelPackage:
    package = load_package(root)
    return ModelPackage(package.root, dataclasses.replace(package.manifest, **changes))


def test_infer_returns_graph_outputs(tiny_package: Path) -> None:
    engine = OrtEngine(load_package(tiny_package), intra_op_threads=1)
    assert isinstance(engine, Engine) and engine.kind == "onnxruntime"
    assert engine.providers == ["CPUExecutionProvider"]
    batch = np.zeros((2, 3, 64, 64), np.float32)
    batch[1, 0, 32:, :32] = 1.0  # red in the bottom-left cell of image 1
    out = np.asarray(engine.infer(batch)[0], np.float32)
    assert out.shape == (2, 7, 4)  # 4 + 3 classes, 2x2 cells
    # Cells are row-major: (0,0) (1,0) (0,1) (1,1) in (x, y) cell units; boxes are cx, cy, w, h.
    np.testing.assert_allclose(out[1, :4, 2], [16.0, 48.0, 32.0, 32.0])
    np.testing.assert_allclose(out[1, 4:, 2], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(out[0, 4:], 0.0)
    engine.close()
    with pytest.raises(RuntimeError, match="is closed"):
        engine.infer(batch)


def test_bad_batch_shape_named(tiny_package: Path) -> None:
    engine = OrtEngine(load_package(tiny_package))
    with pytest.raises(ValueError, match=r"shape \[B, 3, 64, 64\], got \(1, 3, 32, 32\)"):
        engine.infer(np.zeros((1, 3, 32, 32), np.float32))
    small = OrtEngine(with_manifest(tiny_package, max_batch_size=2))
    with pytest.raises(ValueError, match="batch of 3 is above the model's max_batch_size 2"):
        small.infer(np.zeros((3, 3, 64, 64), np.float32))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"input_name": "pixels"}, r"'input.name' is 'pixels' but the model graph's inputs are \["),
        ({"input_width": 96}, "'input.width' is 96 but the model graph's input has 64 there"),
        ({"input_height": 32}, "'input.height' is 32 but the model graph's input has 64 there"),
        ({"classes": ("a", "b")}, "lists 2 classes, so the yolov8 output should have 6 rows, but"),
        ({"output_format": "end2end"}, "'output.format' is 'end2end' .* has 1 outputs"),
    ],
)
def test_manifest_graph_mismatch(tiny_package: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        OrtEngine(with_manifest(tiny_package, **changes))


def test_unavailable_provider_named(tiny_package: Path) -> None:
    with pytest.raises(ValueError, match=r"providers \['NoSuchExecutionProvider'\] are not avail"):
        OrtEngine(load_package(tiny_package), providers=["NoSuchExecutionProvider"])


def test_factory_builds_ort_with_options(tiny_package: Path) -> None:
    engine = create_engine(load_package(tiny_package), "onnxruntime", {"intra_op_threads": 1})
    assert isinstance(engine, OrtEngine)
    out = np.asarray(engine.infer(np.ones((1, 3, 64, 64), np.float32))[0], np.float32)
    np.testing.assert_allclose(out[0, 4:], 1.0)


def test_factory_errors_name_the_problem(tiny_package: Path) -> None:
    package = load_package(tiny_package)
    with pytest.raises(ValueError, match=r"unknown engine kind 'tflite'; known kinds: \["):
        create_engine(package, "tflite")
    with pytest.raises(ValueError, match=r"bad options \['threads'\] .* accepts \['providers'"):
        create_engine(package, "onnxruntime", {"threads": 2})
