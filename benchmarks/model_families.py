"""Model-selection and resolution tables, measured on this CPU in one run.

    .venv/bin/python benchmarks/model_families.py --torchvision runs/tv/ssdlite_320 \\
        runs/tv/fasterrcnn_320 --out benchmarks/results/model_families

Rows: the default model's weights (models/packages/shapes_320/model.pt) exported at 320, 640
and 1280 (the same weights, so the rows differ only in input size), and the torchvision packages
that `python -m detserve.models.torchvision_export` wrote in its own environment (their params,
GFLOPs and parity come from its export.json, since torchvision is not installed here), and
the YOLOv8 packages of benchmarks/yolo_families.sh (--ultralytics; random weights, so speed and
size only; see benchmarks/yolo_rows.py).

Each package is measured in a subprocess of its own, so its peak RSS (VmHWM) is its own:
ONNX Runtime FP32 on the CPU (2 intra-op threads), `engine.infer` + `decode_batch` (the served
compute path: host NMS for yolov8, the graph's own for torchvision) on rendered val scenes,
median ms per image over at least MIN_RUNS runs and MIN_S seconds after one warm-up run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from model_families_serve import detect_once
from yolo_rows import YoloRowError, parse_spec, yolo_row

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.decode import decode_batch
from detserve.engines.manifest import load_package, write_manifest
from detserve.engines.ort import OrtEngine

MIN_RUNS = 5
MIN_S = 3.0
THREADS = 2
DEFAULT_CHECKPOINT = Path("models/packages/shapes_320/model.pt")
DEFAULT_SIZES = (320, 640, 1280)


def _rss_mib() -> float:
    """Peak RSS of this process (VmHWM). Not ru_maxrss: Linux carries that over exec from the
    forking parent, so every child would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status")


def _scenes(size: int, batch: int) -> np.ndarray:
    from detserve.models.scenes import render_scene, split_seeds

    images = [render_scene(s, size, size).image for s in split_seeds("val", batch)]
    return np.stack([im.transpose(2, 0, 1) for im in images]).astype(np.float32) / 255


def measure_one(package_dir: Path, batches: list[int]) -> dict[str, Any]:
    """Runs in the subprocess: latency per batch size and the process's peak RSS."""
    package = load_package(package_dir)
    m = package.manifest
    rss_before = _rss_mib()
    engine = OrtEngine(package, intra_op_threads=THREADS)
    rss_loaded = _rss_mib()
    p = m.postprocess
    params = DecodeParams(p.score_threshold, p.iou_threshold, p.max_detections, None)
    out: dict[str, Any] = {"rss_mib_before_load": round(rss_before, 1),
                           "rss_mib_after_load": round(rss_loaded, 1)}  # fmt: skip
    for b in batches:
        x = _scenes(m.input_width, b)
        boxes = [Letterbox(1.0, 1.0, 0.0, 0.0, m.input_width, m.input_height)] * b
        decode_batch(engine.infer(x), m, boxes, [params] * b)  # warm-up
        times: list[float] = []
        start = time.monotonic()
        while len(times) < MIN_RUNS or time.monotonic() - start < MIN_S:
            t0 = time.perf_counter()
            decode_batch(engine.infer(x), m, boxes, [params] * b)
            times.append(time.perf_counter() - t0)
        out[f"ms_per_image_b{b}"] = round(float(np.median(times)) * 1e3 / b, 2)
        out[f"runs_b{b}"] = len(times)
    out["peak_rss_mib"] = round(_rss_mib(), 1)
    return out


def _measure(package_dir: Path, batches: list[int]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--one", str(package_dir),
           "--batches", ",".join(map(str, batches))]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"measuring {package_dir} failed: {done.stderr.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _default_packages(work: Path) -> list[tuple[Path, dict[str, Any]]]:
    """The default model's weights exported at each size, with its GFLOPs and parameters."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from detserve.models.detector import count_parameters, load_checkpoint
    from detserve.models.export import check_parity, export_onnx

    model, _ = load_checkpoint(DEFAULT_CHECKPOINT)
    base = load_package(DEFAULT_CHECKPOINT.parent).manifest
    rows = []
    for size in DEFAULT_SIZES:
        root = work / f"shapes_{size}"
        root.mkdir(parents=True, exist_ok=True)
        export_onnx(model, root / "model.onnx", size)
        parity = check_parity(model, root / "model.onnx", size)
        write_manifest(replace(base, input_width=size, input_height=size, metadata={}), root)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            model.fuse()(torch.zeros(1, 3, size, size))
        rows.append((root, {
            "model": "default (shapes, YOLOv8 layout)", "input": size,
            "weights": f"trained ({DEFAULT_CHECKPOINT})",
            "parameters": count_parameters(model),
            "gflops": round(counter.get_total_flops() / 1e9, 2),
            "onnx_bytes": (root / "model.onnx").stat().st_size,
            "parity_max_abs_diff": max(parity.max_abs_diff_boxes, parity.max_abs_diff_scores),
        }))  # fmt: skip
    return rows


def _torchvision_packages(dirs: list[Path]) -> list[tuple[Path, dict[str, Any]]]:
    rows = []
    for root in dirs:
        facts = json.loads((root / "export.json").read_text())
        par = facts["parity"]
        rows.append((root, {
            "model": facts["arch"], "input": facts["input_size"], "weights": facts["weights"],
            "parameters": facts["parameters"], "gflops": facts["gflops"],
            "onnx_bytes": facts["onnx_bytes"],
            "parity_max_abs_diff": max(par["matched_max_abs_diff_boxes"],
                                       par["matched_max_abs_diff_scores"]),
            "exporter": facts["exporter"], "batch_probe": facts["batch_probe"],
            "torch_ms_batch1": facts["torch_ms_batch1"],
        }))  # fmt: skip
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("| model | input | params | GFLOPs | ONNX MB | ORT ms/img b1 | ORT ms/img b8 | "
            "peak RSS MiB | parity max diff |\n|---|---|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r['model']} | {r['input']} | {r['parameters'] / 1e6:.2f} M | {r['gflops']:.2f} | "
        f"{r['onnx_bytes'] / 2**20:.1f} | {r['ms_per_image_b1']:.1f} | "
        f"{r.get('ms_per_image_b8', float('nan')):.1f} | {r['peak_rss_mib']:.0f} | "
        f"{r['parity_max_abs_diff']:.2g} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def _resolution_table(rows: list[dict[str, Any]]) -> str:
    """The default model's rows against its 320 row: compute and measured latency ratios."""
    own = [r for r in rows if r["model"].startswith("default")]
    if not own:
        return ""
    base = own[0]
    head = (f"| input | GFLOPs | × {base['input']} | ms/img b1 | × {base['input']} | ms/img b8 | "
            f"× {base['input']} |\n|---|---|---|---|---|---|---|\n")
    lines = [
        f"| {r['input']} | {r['gflops']:.2f} | {r['gflops'] / base['gflops']:.2f} | "
        f"{r['ms_per_image_b1']:.1f} | {r['ms_per_image_b1'] / base['ms_per_image_b1']:.2f} | "
        f"{r['ms_per_image_b8']:.1f} | {r['ms_per_image_b8'] / base['ms_per_image_b8']:.2f} |"
        for r in own if "ms_per_image_b8" in r and "ms_per_image_b8" in base
    ]
    return head + "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--torchvision", nargs="*", type=Path, default=[],
                   help="torchvision package dirs written by detserve.models.torchvision_export")
    p.add_argument("--ultralytics", nargs="*", default=[], metavar="DIR[:BATCHES]",
                   help="YOLOv8 packages from benchmarks/yolo_families.sh; ':1' times batch 1 only")
    p.add_argument("--no-default", action="store_true",
                   help="skip the default model's rows (measure only the packages named)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/model_families"))
    p.add_argument("--work", type=Path, default=Path("runs/model_families"))
    p.add_argument("--one", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--batches", default="1,8", help="batch sizes for the default model")
    args = p.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    if args.one is not None:
        print(json.dumps(measure_one(args.one, batches)))
        return 0
    try:  # before any timing: a wrong folder fails in a second, not after the default rows
        yolo = [(spec, yolo_row(spec)) for spec in map(parse_spec, args.ultralytics)]
    except YoloRowError as e:
        print(f"model_families: {e}", file=sys.stderr)
        return 2
    started = time.time()
    load_start = os.getloadavg()
    rows = []
    for root, facts in [] if args.no_default else _default_packages(args.work):
        rows.append({**facts, **_measure(root, batches)})
        print(json.dumps(rows[-1]), flush=True)
    for root, facts in _torchvision_packages(args.torchvision):
        # One-image graphs run image by image, so batch 8 costs 8 batch-1 runs: batch 1 only.
        rows.append({**facts, **_measure(root, [1]), "served": detect_once(root)})
        print(json.dumps(rows[-1]), flush=True)
    for spec, facts in yolo:
        rows.append({**facts, **_measure(spec.root, list(spec.batches))})
        print(json.dumps(rows[-1]), flush=True)
    load_end = os.getloadavg()
    doc: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
                   f"({_cpu_model()}), ONNX Runtime CPU FP32, {THREADS} intra-op threads",
        "command": " ".join(sys.argv), "started_unix": int(started),
        "wall_s": round(time.time() - started, 1),
        "loadavg_start": load_start, "loadavg_end": load_end, "rows": rows,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    served = "".join(
        f"- {r['model']}: served as {r['served']['served_as']} ({r['served']['output_format']}, "
        f"NMS {r['served']['nms']}), one Detect: {r['served']['detections']} detections\n"
        for r in rows if "served" in r
    )
    resolution = _resolution_table(rows)
    report = (f"# Model families\n\nMachine: {doc['machine']}; load average "
              f"{load_start[0]:.2f} at the start, {load_end[0]:.2f} at the end.\n\n"
              f"`{doc['command']}`\n\n{_table(rows)}")
    if resolution:  # absent with --no-default
        report += f"\n## Resolution (the default model's weights)\n\n{resolution}"
    if served:
        report += f"\n## Served\n\n{served}"
    (args.out / "report.md").write_text(report)
    print(report)
    return 0


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


if __name__ == "__main__":
    raise SystemExit(main())
