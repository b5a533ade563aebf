"""The Ultralytics rows of benchmarks/model_families.py (its --ultralytics option).

Each argument is a package folder that `detserve-model import` wrote from an ONNX file of
benchmarks/yolo_export.py, with that file's export.json copied in, optionally followed by
`:BATCHES` (e.g. `runs/yolo/yolov8x:1`): the batch sizes to time, default 1,8. Parameters are
counted from the ONNX graph's initializers (BatchNorm folded into the convolutions, as
Ultralytics' own fused count); GFLOPs and parity come from export.json (torch is the test
install's here, Ultralytics is not).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_BATCHES = (1, 8)


class YoloRowError(ValueError):
    """A --ultralytics argument that names no usable package."""


@dataclass(frozen=True)
class YoloSpec:
    root: Path
    batches: tuple[int, ...]


def parse_spec(text: str) -> YoloSpec:
    """`DIR` or `DIR:1,8`; the batch list must be positive integers."""
    root, sep, tail = text.rpartition(":")
    if not sep or "/" in tail:  # no suffix (or a ':' inside the path itself)
        return YoloSpec(Path(text), DEFAULT_BATCHES)
    try:
        batches = tuple(int(b) for b in tail.split(","))
    except ValueError:
        raise YoloRowError(f"{text!r}: batches after ':' must be integers, e.g. DIR:1,8") from None
    if not batches or min(batches) < 1:
        raise YoloRowError(f"{text!r}: batch sizes must be >= 1")
    return YoloSpec(Path(root), batches)


def onnx_parameters(onnx_path: Path) -> int:
    """Weights in the graph: the element count of every initializer (no data is read)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return sum(math.prod(init.dims) for init in model.graph.initializer)


def yolo_row(spec: YoloSpec) -> dict[str, Any]:
    """The table facts of one package, before it is timed."""
    facts_path = spec.root / "export.json"
    if not (spec.root / "manifest.yaml").is_file() or not facts_path.is_file():
        raise YoloRowError(f"{spec.root}: needs manifest.yaml (detserve-model import) and "
                           "export.json (benchmarks/yolo_export.py); "
                           "see benchmarks/yolo_families.sh")
    facts = json.loads(facts_path.read_text())
    par = facts["parity"]
    return {
        "model": f"{facts['arch']} (Ultralytics yaml, random weights)",
        "input": facts["input_size"], "weights": facts["weights"],
        "parameters": onnx_parameters(spec.root / "model.onnx"),
        "gflops": facts["gflops"], "onnx_bytes": (spec.root / "model.onnx").stat().st_size,
        "parity_max_abs_diff": max(par["max_abs_diff_boxes"], par["max_abs_diff_scores"]),
        "parity": "ONNX Runtime vs torch (Ultralytics' model) on one seeded random input",
        "exporter": facts["exporter"], "ultralytics": facts["ultralytics"],
        "batches_timed": list(spec.batches),
    }  # fmt: skip
