"""ONNX Runtime against PyTorch for the torchvision packages of the model-selection table, with
the detections matched (benchmarks/model_families_measure.matched_diff) and the near-cutoff ones
counted apart. Runs in the torchvision environment (models/torchvision_env.sh):

    .venv-tv/bin/python benchmarks/tv_parity.py runs/tv/ssdlite_320 runs/tv/fasterrcnn_320 \\
        --out benchmarks/results/model_families/tv_parity.json

The model is rebuilt as `detserve-model export-torchvision` built it (same seed, same random
weights: models/torchvision_export.build) and run on the export's three parity images (noise,
flat grey 114, colour blocks) and on two rendered val scenes. Why this check: on the flat grey
image Faster R-CNN's proposals are near copies with near-equal scores, so which of them survive
NMS and the top 100 is decided by rounding; the nearest-box diff there says which boxes were
kept, not how far the runtimes disagree. The ranks and scores of each match say which.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from model_families_measure import matched_diff, scenes


def _inputs(size: int) -> list[tuple[str, np.ndarray]]:
    from detserve.models.torchvision_export import parity_inputs

    named = list(zip(("noise", "grey 114", "blocks"), parity_inputs(size), strict=True))
    val = scenes(size, 2)
    return named + [(f"val scene {i}", val[i:i + 1]) for i in range(len(val))]


def check(root: Path) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from detserve.models.torchvision_export import build

    facts = json.loads((root / "export.json").read_text())
    model = build(facts["arch"], facts["input_size"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    torch.set_num_threads(2)
    session = ort.InferenceSession(str(root / "detector.onnx"), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    rows = []
    for name, x in _inputs(facts["input_size"]):
        with torch.no_grad():
            want = [t.numpy() for t in model(torch.from_numpy(x))]
        got = session.run(None, {"images": x})
        rows.append({"input": name, **matched_diff(want, got),
                     "score_range_torch": [float(want[2].min(initial=0)),
                                           float(want[2].max(initial=0))]})  # fmt: skip
        print(json.dumps({"arch": facts["arch"], **rows[-1]}), flush=True)
    return {"arch": facts["arch"], "package": str(root), "weights": facts["weights"],
            "per_input": rows,
            "max_abs_diff_boxes": max(r["max_abs_diff_boxes"] for r in rows),
            "max_abs_diff_scores": max(r["max_abs_diff_scores"] for r in rows),
            "max_abs_diff_sorted_scores": max(r["max_abs_diff_sorted_scores"] for r in rows),
            "tied_off": sum(r["tied_off"] for r in rows),
            "max_abs_diff_boxes_untied":
                max(r["max_abs_diff_boxes_untied"] for r in rows)}  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("packages", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    doc = {"command": " ".join(sys.argv), "packages": [check(root) for root in args.packages]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
