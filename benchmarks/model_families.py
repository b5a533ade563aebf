"""The model-selection table, measured on this CPU in one run: every row, every CPU path.

    bash benchmarks/model_families.sh

builds what is missing (the YOLOv8 and torchvision exports, in their own environments), checks
the torchvision exports against PyTorch (benchmarks/tv_parity.py) and then runs

    .venv/bin/python benchmarks/model_families.py --out benchmarks/results/model_families

Rows (benchmarks/model_families_rows.py): the default model at 320/640/1280, YOLOv8 n/s/m/x at
320/640/1280 (random weights), SSDlite-MobileNetV3 and Faster R-CNN R50-FPN (random weights).
Each (row, CPU path) is measured in a subprocess of its own (benchmarks/model_families_measure.py:
latency, peak RSS, activation memory, outputs against ONNX Runtime FP32); the fastest verified
path of a row is the quickest at batch 1 among ORT FP32 and the paths whose outputs passed
(benchmarks/model_families_report.py). Writes results.json, results.csv and report.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from model_families_measure import THREADS, measure
from model_families_report import (
    fastest,
    paths_table,
    resolution_table,
    selection_table,
    verdict,
    write_csv,
)
from model_families_rows import Row, Skipped, default_rows, tv_rows, yolo_rows
from model_families_serve import detect_once

from detserve.client.bench import hostload

TV_DEFAULT = (Path("runs/tv/ssdlite_320"), Path("runs/tv/fasterrcnn_320"))
HOW = ("ms/img: median over at least 5 runs and 3 s, or 3 runs once 12 s have passed, after one "
       "warm-up run; `engine.infer` + the served decode (host NMS for the YOLOv8 layout, the "
       "graph's own for torchvision) on rendered val scenes. Memory per (row, path) process: "
       "peak RSS = VmHWM over import, load and all runs; activation = the peak during one batch "
       "size's runs (VmHWM reset by /proc/self/clear_refs before them) minus VmRSS once the "
       "engine was made (weights resident; freed heap handed back by malloc_trim before both "
       "readings) minus the input tensor; ONNX Runtime keeps its arena, "
       "so batch 8's figure holds what batch 1 left there.")


def _measure(path: str, package: Path, batches: tuple[int, ...], save: Path | None,
             reference: Path | None) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", path, str(package),
           "--batches", ",".join(map(str, batches))]  # fmt: skip
    if save is not None:
        cmd += ["--save", str(save)]
    if reference is not None:
        cmd += ["--reference", str(reference)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        lines = done.stderr.strip().splitlines() or [f"exit {done.returncode}"]
        return {"path": path, "package": str(package), "error": lines[-1]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_row(row: Row, outputs: Path) -> dict[str, Any]:
    ref = outputs / f"{row.key}.npz"
    ref.unlink(missing_ok=True)  # a stale one would check this run's paths against an old run
    results = []
    for p in row.paths:
        first = p.name == "ort-fp32"
        got = _measure(p.name, p.package, row.batches, ref if first else None,
                       None if first or not ref.is_file() else ref)
        got["verdict"] = verdict(got, p.verified_by)
        results.append(got)
    done = {"key": row.key, **row.facts, "batches": list(row.batches), "notes": list(row.notes),
            "paths": results}  # fmt: skip
    done["fastest_b1"], done["fastest_b8"] = fastest(results, 1), fastest(results, 8)
    return done


def _tv_parity(path: Path | None) -> dict[str, dict[str, Any]]:
    if path is None or not path.is_file():
        return {}
    doc = json.loads(path.read_text())
    return {Path(p["package"]).name: p for p in doc["packages"]}


def _machine() -> str:
    import onnxruntime
    import openvino

    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "unknown CPU")  # fmt: skip
    return (f"{platform.machine()}, {os.cpu_count()} CPUs ({cpu}), ONNX Runtime "
            f"{onnxruntime.__version__} and OpenVINO {openvino.get_version().split('-')[0]} on "
            f"the CPU, {THREADS} threads each")


def build_rows(args: argparse.Namespace) -> tuple[list[Row], list[Skipped]]:
    parity = _tv_parity(args.tv_parity)
    yolo, skipped = yolo_rows(args.yolo) if args.yolo else ([], [])
    rows = [*default_rows(args.work), *tv_rows(args.torchvision, lambda r: parity.get(r.name)),
            *yolo]  # fmt: skip
    if args.only:
        rows = [r for r in rows if r.key in args.only]
        skipped = []
    return rows, skipped


def missing_inputs(args: argparse.Namespace) -> list[str]:
    """Folders the rows need, checked before any timing: a wrong one fails in a second."""
    need = [(root, "detserve-model export-torchvision") for root in args.torchvision]
    if args.yolo:
        need += [(args.yolo / f"yolov8{s}", "benchmarks/yolo_families.sh") for s in "nsmx"]
    return [f"{root}: needs manifest.yaml and export.json (made by {by})" for root, by in need
            if not ((root / "manifest.yaml").is_file() and (root / "export.json").is_file())]


def report(doc: dict[str, Any]) -> str:
    notes = sorted({n for r in doc["rows"] for n in r["notes"]})
    text = (f"# Model families: the selection table\n\nMachine: {doc['machine']}; load average "
            f"{doc['loadavg_start'][0]:.2f} at the start, {doc['loadavg_end'][0]:.2f} at the "
            f"end; CPU busy {doc['host_busy_pct']}% over the run's {doc['wall_s'] / 60:.1f} "
            f"min (this run included).\n\n`{doc['command']}`\n\n"
            f"{selection_table(doc['rows'], doc['skipped'])}\n{HOW}\n\n")
    if notes:
        text += "Notes:\n" + "".join(f"- {n}\n" for n in notes) + "\n"
    text += f"## Every path\n\n{paths_table(doc['rows'])}"
    resolution = resolution_table(doc["rows"])
    if resolution:
        text += f"\n## Resolution (the default model's weights)\n\n{resolution}"
    served = "".join(
        f"- {r['model']}: served as {r['served']['served_as']} ({r['served']['output_format']},"
        f" NMS {r['served']['nms']}), one Detect: {r['served']['detections']} detections\n"
        for r in doc["rows"] if "served" in r
    )
    if served:
        text += f"\n## Served\n\n{served}"
    return text


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torchvision", nargs="*", type=Path, default=list(TV_DEFAULT),
                   help="torchvision package dirs (detserve-model export-torchvision)")
    p.add_argument("--tv-parity", type=Path, default=None,
                   help="benchmarks/tv_parity.py's JSON for the torchvision rows' torch check")
    p.add_argument("--yolo", type=Path, default=Path("runs/yolo"),
                   help="benchmarks/yolo_families.sh's folder; '' for no YOLOv8 rows")
    p.add_argument("--only", nargs="*", default=[], help="row keys to run (e.g. default_320)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/model_families"))
    p.add_argument("--work", type=Path, default=Path("runs/model_families"))
    p.add_argument("--one", nargs=2, default=None, help=argparse.SUPPRESS)
    p.add_argument("--batches", default="1,8", help=argparse.SUPPRESS)
    p.add_argument("--save", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--reference", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one is not None:
        batches = [int(b) for b in args.batches.split(",")]
        print(json.dumps(measure(args.one[0], Path(args.one[1]), batches, args.save,
                                 args.reference)))  # fmt: skip
        return 0
    if str(args.yolo) in ("", "."):
        args.yolo = None
    missing = missing_inputs(args)
    if missing:
        print(f"model_families: {missing[0]}", file=sys.stderr)
        return 2
    started, start = time.monotonic(), hostload.snapshot()
    rows, skipped = build_rows(args)
    outputs = args.work / "outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    done = []
    for row in rows:
        done.append(measure_row(row, outputs))
        if row.serve_check:
            done[-1]["served"] = detect_once(row.paths[0].package)
        print(json.dumps(done[-1]), flush=True)
    load = hostload.between(start, hostload.snapshot())
    doc: dict[str, Any] = {
        "machine": _machine(), "command": " ".join(sys.argv),
        "wall_s": round(time.monotonic() - started, 1),
        "loadavg_start": load["before"]["loadavg"], "loadavg_end": load["after"]["loadavg"],
        "host_busy_pct": load["busy_pct"], "rows": done,
        "skipped": [asdict(s) for s in skipped], "how": HOW,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    write_csv(done, args.out / "results.csv")
    text = report(doc)
    (args.out / "report.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
