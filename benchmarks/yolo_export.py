"""Builds YOLOv8 models from Ultralytics' yaml (random init, 80 classes) and exports them to ONNX.

Runs in the Ultralytics environment (models/ultralytics_env.sh), not the test install:

    .venv-yolo/bin/python benchmarks/yolo_export.py --out runs/yolo n s m x

For each scale it writes OUT/yolov8<scale>.onnx (Ultralytics' own exporter: imgsz 640, dynamic
batch, no simplify, opset 17) and OUT/yolov8<scale>.export.json: GFLOPs (counted like the
default model's row in benchmarks/model_families.py: torch's FlopCounterMode over one fused
forward at 1x3x640x640), and parity of the ONNX graph (ONNX Runtime FP32) against the torch
model on one seeded random input. The weights are random, so these rows say speed and size only.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

IMGSZ = 640
OPSET = 17
SCALES = ("n", "s", "m", "x")


def _torchscript_exporter() -> str:
    """Ultralytics 8.3.100 was written for torch.onnx's TorchScript exporter (the default until
    torch 2.9) and does not name one; torch 2.13 defaults to dynamo, so ask for TorchScript."""
    import torch
    import ultralytics

    torch.onnx.export = functools.partial(torch.onnx.export, dynamo=False)
    return (f"ultralytics {ultralytics.__version__} export(format='onnx'), torch.onnx "
            "dynamo=False (TorchScript)")


def _gflops(net: Any) -> float:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, IMGSZ, IMGSZ))
    return round(counter.get_total_flops() / 1e9, 2)


def _parity(net: Any, onnx_path: Path) -> dict[str, Any]:
    """Max abs difference, torch vs ONNX Runtime, on one seeded random image; and one batch-2 run
    to show the exported batch axis is dynamic."""
    import onnxruntime as ort
    import torch

    x = np.random.default_rng(0).random((1, 3, IMGSZ, IMGSZ), dtype=np.float32)
    with torch.no_grad():
        out = net(torch.from_numpy(x))
    ref = (out[0] if isinstance(out, (tuple, list)) else out).numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = sess.run(None, {name: x})[0]
    two = sess.run(None, {name: np.concatenate([x, x])})[0]
    return {
        "input": "seeded uniform random 1x3x640x640 (seed 0)",
        "output_shape": list(got.shape),
        "max_abs_diff_boxes": float(np.abs(got[:, :4] - ref[:, :4]).max()),
        "max_abs_diff_scores": float(np.abs(got[:, 4:] - ref[:, 4:]).max()),
        "batch2_output_shape": list(two.shape),
    }


def export_scale(scale: str, out: Path, exporter: str) -> dict[str, Any]:
    import torch
    import ultralytics
    from ultralytics import YOLO

    torch.manual_seed(0)  # Ultralytics' init draws from torch's global generator
    model = YOLO(f"yolov8{scale}.yaml")
    t0 = time.monotonic()
    written = Path(model.export(format="onnx", imgsz=IMGSZ, dynamic=True, simplify=False,
                                opset=OPSET))  # fmt: skip
    export_s = round(time.monotonic() - t0, 1)
    onnx_path = out / f"yolov8{scale}.onnx"
    shutil.move(str(written), onnx_path)
    net = model.model.eval()  # the exporter fused a deep copy; this counts the same convs
    facts = {
        "arch": f"yolov8{scale}", "input_size": IMGSZ,
        "weights": f"random init (Ultralytics yolov8{scale}.yaml, 80 classes, torch seed 0)",
        "exporter": exporter, "export_s": export_s, "opset": OPSET,
        "ultralytics": ultralytics.__version__, "torch": torch.__version__,
        "gflops": _gflops(net), "onnx_bytes": onnx_path.stat().st_size,
        "parity": _parity(net, onnx_path),
    }  # fmt: skip
    (out / f"yolov8{scale}.export.json").write_text(json.dumps(facts, indent=2) + "\n")
    return facts


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scales", nargs="+", choices=SCALES)
    p.add_argument("--out", type=Path, default=Path("runs/yolo"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    exporter = _torchscript_exporter()
    for scale in args.scales:
        print(json.dumps(export_scale(scale, args.out.resolve(), exporter)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
