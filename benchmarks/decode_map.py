"""Does decoding JPEGs reduced (DCT scaling, engines/preprocess.jpeg_decode_size) cost accuracy?
COCO AP of the served default on val scenes, JPEG-encoded, with the full decode and with the
reduced one, through the server's own data path (decode, letterbox, engine, host NMS).

    .venv/bin/python benchmarks/decode_map.py --out benchmarks/results/decode_map

Scenes are the val split at --sizes (default 640x480 and 1280x720: at 320 input both are at
least twice the model side, so both are decoded reduced), JPEG quality 90. Writes results.json
and report.md into --out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from detserve.client.bench.served import load_served_default
from detserve.engines.base import DecodeParams, Engine
from detserve.engines.decode import decode_batch
from detserve.engines.factory import create_engine
from detserve.engines.manifest import load_package
from detserve.engines.pipeline import infer_pixels
from detserve.engines.preprocess import (
    decode_encoded_native,
    jpeg_decode_size,
    prepare_decoded,
    read_header,
)
from detserve.models.coco import load_coco
from detserve.models.evaluate import EVAL_MAX_DETECTIONS, EVAL_SCORE_THRESHOLD
from detserve.models.evaluate_metrics import CocoMetrics, ImageDetections, coco_metrics
from detserve.models.scenes import write_coco
from detserve.server.config import resolve_package


def predict(engine: Engine, files: list[tuple[int, bytes]], reduced: bool,
            batch: int = 8) -> list[ImageDetections]:
    m = engine.manifest
    params = DecodeParams(EVAL_SCORE_THRESHOLD, m.postprocess.iou_threshold, EVAL_MAX_DETECTIONS)
    out: list[ImageDetections] = []
    for start in range(0, len(files), batch):
        chunk = files[start : start + batch]
        prepared = [prepare_decoded(decode_encoded_native(data, 1 << 30, m if reduced else None), m)
                    for _, data in chunk]
        outputs = infer_pixels(engine, np.stack([p.pixels for p in prepared]))
        dets = decode_batch(outputs, m, [p.letterbox for p in prepared], [params] * len(chunk))
        out += [ImageDetections(i, d) for (i, _), d in zip(chunk, dets, strict=True)]
    return out


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summary(metrics: CocoMetrics) -> dict[str, Any]:
    return {"map50": metrics.map50, "map": metrics.map, "ap_size50": metrics.ap_size50,
            "ap_size": metrics.ap_size, "n_images": metrics.n_images}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/decode_map"))
    p.add_argument("-n", type=int, default=200, help="val scenes")
    p.add_argument("--sizes", nargs="+", default=["640x480", "1280x720"])
    args = p.parse_args()
    sizes = [(int(s.split("x")[0]), int(s.split("x")[1])) for s in args.sizes]
    served = load_served_default()
    package = load_package(resolve_package(served.model["package"], Path.cwd(), "default"))
    engine = create_engine(package, served.engine, served.engine_options)
    with tempfile.TemporaryDirectory() as tmp:
        coco = load_coco(write_coco(tmp, "val", args.n, sizes, "jpg"))
        files = [(i.id, coco.image_path(i).read_bytes()) for i in coco.images]
        factors = sorted({str(jpeg_decode_size(read_header(d), package.manifest))
                          for _, d in files})
        full = coco_metrics(coco.raw, predict(engine, files, False), package.manifest.classes)
        reduced = coco_metrics(coco.raw, predict(engine, files, True), package.manifest.classes)
    doc = {"when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "command": f"benchmarks/decode_map.py -n {args.n} --sizes {' '.join(args.sizes)}",
           "package": served.model["package"], "engine": served.engine,
           "decode_sizes": factors, "full": summary(full), "reduced": summary(reduced)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# Reduced JPEG decode vs full decode ({doc['when']})", "",
             f"Command: `{doc['command']}`; package {doc['package']} on {doc['engine']}; "
             f"reduced decode to (width, height): {factors}.", "",
             "| decode | mAP@0.5 | mAP@0.5:0.95 | AP_small@0.5 | AP_small |",
             "|---|---|---|---|---|"]
    for name, m in (("full", full), ("reduced", reduced)):
        lines.append(f"| {name} | {m.map50:.4f} | {m.map:.4f} | {_f(m.ap_size50['small'])} | "
                     f"{_f(m.ap_size['small'])} |")
    text = "\n".join(lines) + "\n"
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
