"""A small demo-detector package with random (but lively) weights, exported like a real one.

Shared by the quantization tests (ONNX Runtime and OpenVINO) and the precision CLI tests.
"""

from __future__ import annotations

from pathlib import Path

import torch

from detserve.engines.manifest import Manifest, write_manifest
from detserve.models.detector import DetectorConfig, build_detector


def write_detector_package(root: Path, size: int = 64, seed: int = 0) -> Path:
    """A 3-class detector package at input `size` in `root`; returns `root`."""
    torch.manual_seed(seed)
    model = build_detector(DetectorConfig(3, width_mult=0.25, depth_mult=0.34)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("dfl"):
                continue
            if p.ndim == 4:  # He init, so activations neither vanish nor saturate
                p.normal_(0.0, (2.0 / (p.shape[1] * p.shape[2] * p.shape[3])) ** 0.5)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.5)
    model.fuse()
    root.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        model, (torch.rand(1, 3, size, size),), str(root / "model.onnx"),
        input_names=["images"], output_names=["output0"],
        dynamic_axes={"images": {0: "batch"}, "output0": {0: "batch"}},
        opset_version=17, dynamo=False,
    )  # fmt: skip
    manifest = Manifest(
        name="tiny", version="1", classes=("a", "b", "c"), input_width=size, input_height=size,
        metadata={"val_metrics": {"mAP@0.5": 0.5}, "torch_checkpoint": "model.pt"},
    )  # fmt: skip
    write_manifest(manifest, root)
    return root
