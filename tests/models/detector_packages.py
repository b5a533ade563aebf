"""A small demo-detector package with random (but lively) weights, exported like a real one.

Shared by the quantization tests (ONNX Runtime and OpenVINO), the precision CLI tests, and the
import and fixed-batch serving tests (as an Ultralytics-style export).
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from detserve.engines.manifest import Manifest, write_manifest
from detserve.models.detector import Detector, DetectorConfig, build_detector


def _lively_detector(num_classes: int, seed: int) -> Detector:
    torch.manual_seed(seed)
    model = build_detector(DetectorConfig(num_classes, width_mult=0.25, depth_mult=0.34)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("dfl"):
                continue
            if p.ndim == 4:  # He init, so activations neither vanish nor saturate
                p.normal_(0.0, (2.0 / (p.shape[1] * p.shape[2] * p.shape[3])) ** 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
    model.fuse()
    return model


def export_detector_onnx(path: Path, size: int = 64, seed: int = 0, num_classes: int = 3,
                         dynamic: str = "batch", metadata: dict[str, str] | None = None) -> Path:
    """The detector as an ONNX file laid out like an Ultralytics export, `metadata` in its
    metadata_props. `dynamic`: "batch" (dynamic batch), "none" (a fixed batch of 1, as
    `yolo export format=onnx` writes), or "all" (every output dim symbolic, as some
    `dynamic=True` exports come out: the class count cannot be read from the shapes)."""
    axes = {"none": None,
            "batch": {"images": {0: "batch"}, "output0": {0: "batch"}},
            "all": {"images": {0: "batch"}, "output0": {0: "batch", 1: "rows", 2: "anchors"}},
            }[dynamic]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        _lively_detector(num_classes, seed), (torch.rand(1, 3, size, size),), str(path),
        input_names=["images"], output_names=["output0"], dynamic_axes=axes,
        opset_version=17, dynamo=False,
    )  # fmt: skip
    if metadata:
        model = onnx.load(str(path))
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=value)
        onnx.save(model, str(path))
    return path


def write_detector_package(root: Path, size: int = 64, seed: int = 0) -> Path:
    """A 3-class detector package at input `size` in `root`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    export_detector_onnx(root / "model.onnx", size, seed)
    manifest = Manifest(
        name="tiny", version="1", classes=("a", "b", "c"), input_width=size, input_height=size,
        metadata={"val_metrics": {"mAP@0.5": 0.5}, "torch_checkpoint": "model.pt"},
    )  # fmt: skip
    write_manifest(manifest, root)
    return root
