"""Accuracy against input side, in one run: the default model's weights at 320, 640 and 1280 on
the val split, through the server's own engine and decoder (`detserve-model eval`).

    .venv/bin/python benchmarks/resolution_ap.py --out benchmarks/results/resolution_ap

- 320 and 640 are the committed FP32 packages (`models/packages/shapes_320`, `shapes_640`); 1280
  is made here, into --work, from the same float16 checkpoint (models/packages/shapes_320/
  model.pt) by `detserve-model package --input-size 1280`, as benchmarks/memory.py makes it.
  Same weights at every side, so only the input differs.
- Every side runs on OpenVINO at f32 (`--engine openvino --engine-option precision=f32`): the
  fastest FP32 path here, and the same one for all three, so the comparison is not an INT8
  calibration's.
- The val split is `detserve-model make-dataset data/sets -n 500 --split val` (made if absent).
- Reports mAP@0.5, mAP@0.5:0.95 and AP by COCO size per side, with each eval's wall time per
  image (a speed indication only: eval is not the served path).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from _common import PACKAGES, default_weights_at, model_cli

REPO = Path(__file__).resolve().parents[1]
SIDES = (320, 640, 1280)


def make_1280(work: Path) -> Path:
    """The 1280 FP32 package from the committed weights (made once; kept in `work`)."""
    return default_weights_at(1280, work / "shapes_1280", "benchmarks/resolution_ap.py")


def ensure_val(data: Path) -> Path:
    if not (data / "annotations.json").is_file():
        model_cli("make-dataset", str(data.parent), "-n", "500", "--split", "val")
    return data


def evaluate(package: Path, data: Path, out: Path, side: int, limit: int | None) -> dict[str, Any]:
    args = ["eval", str(package), "--data", str(data), "--engine", "openvino",
            "--engine-option", "precision=f32", "--out", str(out), "--stem", f"eval_{side}"]
    if limit is not None:
        args += ["--limit", str(limit)]
    model_cli(*args)
    result: dict[str, Any] = json.loads((out / f"eval_{side}.json").read_text())
    return result


def row(side: int, package: Path, ev: dict[str, Any]) -> dict[str, Any]:
    m = ev["metrics"]
    return {"input": side, "package": str(package.relative_to(REPO)
                                          if package.is_relative_to(REPO) else package),
            "map50": m["map50"], "map": m["map"], "ap_small": m["ap_size"]["small"],
            "ap_medium": m["ap_size"]["medium"], "ap_large": m["ap_size"]["large"],
            "images": m["n_images"], "objects": m["n_objects"],
            "eval_s_per_image": ev["seconds"] / max(1, m["n_images"])}


def report(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Accuracy against input side ({meta['date_utc']})", "",
             f"Command: `{' '.join(meta['command'])}`", "",
             f"Host: {meta['cpu']}, {meta['cpu_count']} CPUs; load average before "
             f"{meta['loadavg_before']}, after {meta['loadavg_after']}.", "",
             "Same weights (models/packages/shapes_320/model.pt) at every side; OpenVINO f32; "
             "val split; AP by COCO object size at IoU 0.5:0.95.", "",
             "| input | mAP@0.5 | mAP@0.5:0.95 | AP_small | AP_medium | AP_large | images | "
             "eval s/img |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['input']} | {r['map50']:.4f} | {r['map']:.4f} | {r['ap_small']:.4f} "
                     f"| {r['ap_medium']:.4f} | {r['ap_large']:.4f} | {r['images']} | "
                     f"{r['eval_s_per_image']:.3f} |")
    return "\n".join(lines) + "\n"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/resolution_ap")
    ap.add_argument("--work", type=Path, default=REPO / "data/resolution",
                    help="where the 1280 package is made (once)")
    ap.add_argument("--data", type=Path, default=REPO / "data/sets/val")
    ap.add_argument("--limit", type=int, default=None, help="first N val images only")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    meta: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]], "cpu": _cpu(),
        "cpu_count": os.cpu_count(), "loadavg_before": os.getloadavg()}
    data = ensure_val(args.data)
    packages = {320: PACKAGES / "shapes_320", 640: PACKAGES / "shapes_640",
                1280: make_1280(args.work)}
    rows = [row(side, packages[side], evaluate(packages[side], data, args.out, side, args.limit))
            for side in SIDES]
    meta["loadavg_after"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = report(rows, meta)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
