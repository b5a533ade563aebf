"""The precision ladder (FP32 against INT8) and NMS placement (host against in-graph), measured
on this machine's CPU with ONNX Runtime; every ratio comes from timings taken in this one run,
interleaved (A, B, B, A, ...) so drift and a busy neighbour hit both sides alike.

    .venv/bin/python benchmarks/precision/bench_precision.py --out benchmarks/precision/results

1. Precision ladder: quantizes --package to INT8 (static PTQ, QDQ, calibration on synthetic
   scenes disjoint from val), evaluates both on a val set (mAP@0.5, AP_small, per class and per
   size, with flags beyond --margin) and times engine.infer per batch size.
2. NMS placement: the same FP32 model with host NMS (numpy, the server's decoder) and with NMS
   appended in the graph (`add-nms --target ort`), per stage (inference, postprocess) at several
   score thresholds; then NMS alone on 8400-anchor outputs with every anchor a candidate.
Writes results.json and results.md into --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.decode import decode_batch
from detserve.engines.manifest import Manifest, Postprocess, load_package
from detserve.engines.ort import OrtEngine
from detserve.engines.preprocess import prepare
from detserve.models.coco import load_coco
from detserve.models.efficient_nms_ref import NmsConfig
from detserve.models.nms_graph import OUTPUT_NAMES, add_nms_ort, add_nms_package
from detserve.models.precision_report import compare_packages
from detserve.models.quantize import CalibrationSource, quantize_int8
from detserve.models.scenes import write_coco


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--package", type=Path, default=Path("models/packages/shapes_320"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/precision/results"))
    p.add_argument("--work", type=Path, default=None, help="derived packages + val set (OUT/work)")
    p.add_argument("--n-calib", type=int, default=200, help="calibration images")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    p.add_argument("--float-head", action="store_true", help="keep the head's output convs float")
    p.add_argument("--n-val", type=int, default=200, help="val scenes for mAP")
    p.add_argument("--batch-sizes", default="1,2,4,8")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per side and setting")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = default)")
    p.add_argument("--nms-thresholds", default="0.25,0.01,0.001")
    p.add_argument("--nms-batch", type=int, default=1, help="batch size of the NMS placement runs")
    p.add_argument("--margin", type=float, default=1.0, help="flag AP losses above this (points)")
    p.add_argument("--skip-accuracy", action="store_true", help="timings only")
    return p.parse_args(argv)


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def interleaved(
    sides: dict[str, Callable[[], Any]], repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Milliseconds per call of each side, runs alternating A B / B A to cancel drift."""
    names = list(sides)
    for _ in range(warmup):
        for name in names:
            sides[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            sides[name]()
            times[name].append((time.perf_counter() - start) * 1000.0)
    return times


def _med(values: list[float]) -> float:
    return statistics.median(values)


def engine(path: Path, threads: int) -> OrtEngine:
    return OrtEngine(load_package(path), intra_op_threads=threads or None)


def val_images(coco_dir: Path, n: int) -> list[np.ndarray]:
    coco = load_coco(coco_dir)
    return [coco.read_rgb(img) for img in coco.images[:n]]


def ladder_latency(args: argparse.Namespace, fp32: Path, int8: Path,
                   images: list[np.ndarray]) -> list[dict[str, Any]]:  # fmt: skip
    engines = {"fp32": engine(fp32, args.threads), "int8": engine(int8, args.threads)}
    manifest = engines["fp32"].manifest
    rows = []
    for b in _ints(args.batch_sizes):
        batch = np.stack([prepare(images[i % len(images)], manifest).tensor for i in range(b)])
        sides: dict[str, Callable[[], Any]] = {
            k: partial(e.infer, batch) for k, e in engines.items()
        }
        t = interleaved(sides, args.repeats, args.warmup)
        f, q = _med(t["fp32"]), _med(t["int8"])
        rows.append({"batch": b, "fp32_ms": f, "int8_ms": q, "fp32_ms_per_image": f / b,
                     "int8_ms_per_image": q / b, "speedup_int8": f / q})  # fmt: skip
        print(f"batch {b}: fp32 {f:.2f} ms, int8 {q:.2f} ms, int8 speed-up x{f / q:.2f}",
              flush=True)  # fmt: skip
    return rows


def _candidates(raw: np.ndarray, thr: float) -> tuple[float, float]:
    scores = raw[:, 4:]
    anchors = (scores.max(axis=1) >= thr).sum(axis=1).mean()
    pairs = (scores >= thr).sum(axis=(1, 2)).mean()
    return float(anchors), float(pairs)


def _stages(eng: OrtEngine, batch: np.ndarray, boxes: list[Letterbox],
            params: list[DecodeParams]) -> Callable[[], tuple[float, float, int]]:  # fmt: skip
    def run() -> tuple[float, float, int]:
        t0 = time.perf_counter()
        out = eng.infer(batch)
        t1 = time.perf_counter()
        dets = decode_batch(out, eng.manifest, boxes, params)
        t2 = time.perf_counter()
        return (t1 - t0) * 1000.0, (t2 - t1) * 1000.0, sum(len(d) for d in dets)

    return run


def nms_placement(args: argparse.Namespace, fp32: Path, work: Path,
                  images: list[np.ndarray]) -> list[dict[str, Any]]:  # fmt: skip
    host = engine(fp32, args.threads)
    man = host.manifest
    prepared = [prepare(images[i % len(images)], man) for i in range(args.nms_batch)]
    batch = np.stack([p.tensor for p in prepared])
    boxes = [p.letterbox for p in prepared]
    rows = []
    for thr in _floats(args.nms_thresholds):
        cfg = NmsConfig(thr, man.postprocess.iou_threshold, 300)
        e2e = add_nms_package(fp32, work / f"nms_ort_{thr:g}", "ort", cfg)
        graph = engine(e2e, args.threads)
        params = [DecodeParams(thr, cfg.iou_threshold, 300)] * len(prepared)
        runs = {
            "host": _stages(host, batch, boxes, params),
            "in-graph": _stages(graph, batch, boxes, params),
        }
        samples: dict[str, list[tuple[float, float, int]]] = {k: [] for k in runs}
        for _ in range(args.warmup):
            for fn in runs.values():
                fn()
        for r in range(args.repeats):
            for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                samples[k].append(runs[k]())
        anchors, pairs = _candidates(np.asarray(host.infer(batch)[0]), thr)
        row: dict[str, Any] = {"score_threshold": thr, "batch": args.nms_batch,
                               "candidate_anchors": anchors, "candidate_pairs": pairs}  # fmt: skip
        for k, s in samples.items():
            inf, post = _med([x[0] for x in s]), _med([x[1] for x in s])
            row[k] = {"inference_ms": inf, "postprocess_ms": post, "total_ms": inf + post,
                      "detections": s[-1][2]}  # fmt: skip
        row["in_graph_over_host_total"] = row["in-graph"]["total_ms"] / row["host"]["total_ms"]
        rows.append(row)
        print(f"thr {thr:g}: {anchors:.0f} candidate anchors ({pairs:.0f} pairs); host "
              f"{row['host']['inference_ms']:.2f} + {row['host']['postprocess_ms']:.2f} ms, "
              f"in-graph {row['in-graph']['inference_ms']:.2f} + "
              f"{row['in-graph']['postprocess_ms']:.2f} ms", flush=True)  # fmt: skip
    return rows


def _identity_yolov8(nc: int, anchors: int) -> onnx.ModelProto:
    shape: list[str | int] = ["batch", 4 + nc, anchors]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["raw"], ["output0"])], "identity",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, shape)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def nms_only(args: argparse.Namespace, man: Manifest, anchors: int = 8400) -> list[dict[str, Any]]:
    """NMS alone on random outputs where every anchor passes the threshold (>= 8400 candidates)."""
    nc, thr, iou = man.num_classes, 0.01, man.postprocess.iou_threshold
    rng = np.random.default_rng(0)
    raw = np.empty((1, 4 + nc, anchors), np.float32)
    raw[0, 0:2] = rng.uniform(0, 640, (2, anchors))
    raw[0, 2:4] = rng.uniform(8, 160, (2, anchors))
    raw[0, 4:] = rng.uniform(thr, 1.0, (nc, anchors))
    cfg = NmsConfig(thr, iou, 300)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(add_nms_ort(_identity_yolov8(nc, anchors), cfg).SerializeToString(),
                                opts, providers=["CPUExecutionProvider"])  # fmt: skip
    box = [Letterbox(1.0, 1.0, 0.0, 0.0, 640, 640)]
    params = [DecodeParams(thr, iou, 300)]

    def host(top_k: int) -> Callable[[], Any]:
        post = Postprocess(thr, iou, 300, pre_nms_top_k=top_k)
        m = Manifest(name="nms", version="1", classes=man.classes, input_width=640,
                     input_height=640, postprocess=post)  # fmt: skip
        return lambda: decode_batch([raw], m, box, params)

    top_k = man.postprocess.pre_nms_top_k
    sides: dict[str, Callable[[], Any]] = {
        f"host (pre_nms_top_k {top_k})": host(top_k),
        "host (pre_nms_top_k 4096)": host(4096),
        "in-graph ORT (EfficientNMS semantics, top 4096)": partial(
            sess.run, list(OUTPUT_NAMES), {"raw": raw}
        ),
    }
    t = interleaved(sides, args.repeats, args.warmup)
    rows = [{"nms": k, "anchors": anchors, "candidate_pairs": anchors * nc, "ms": _med(v)}
            for k, v in t.items()]  # fmt: skip
    for r in rows:
        print(
            f"NMS only, {anchors} anchors x {nc} classes: {r['nms']}: {r['ms']:.2f} ms", flush=True
        )
    return rows


def markdown(doc: dict[str, Any]) -> str:
    lines = [f"# Precision ladder and NMS placement: {doc['package']}", "",
             f"Host: {doc['host']}; onnxruntime {doc['onnxruntime']}; command: `{doc['command']}`.",
             "", "## FP32 against INT8: latency (median ms of engine.infer)", "",
             "| batch | FP32 ms | INT8 ms | FP32 ms/img | INT8 ms/img | INT8 speed-up |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in doc["ladder_latency"]:
        lines.append(f"| {r['batch']} | {r['fp32_ms']:.2f} | {r['int8_ms']:.2f} | "
                     f"{r['fp32_ms_per_image']:.2f} | {r['int8_ms_per_image']:.2f} | "
                     f"x{r['speedup_int8']:.2f} |")  # fmt: skip
    if doc.get("accuracy_markdown"):
        lines += ["", "## FP32 against INT8: accuracy", "", doc["accuracy_markdown"].rstrip()]
    lines += ["", "## NMS placement (median ms per stage)", "",
              "| score thr | candidate anchors | pairs | host infer | host NMS+decode | "
              "in-graph infer (incl. NMS) | in-graph decode | in-graph ÷ host total |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in doc["nms_placement"]:
        h, g = r["host"], r["in-graph"]
        lines.append(f"| {r['score_threshold']:g} | {r['candidate_anchors']:.0f} | "
                     f"{r['candidate_pairs']:.0f} | {h['inference_ms']:.2f} | "
                     f"{h['postprocess_ms']:.2f} | {g['inference_ms']:.2f} | "
                     f"{g['postprocess_ms']:.2f} | "
                     f"{r['in_graph_over_host_total']:.2f} |")  # fmt: skip
    lines += ["", "## NMS alone, every anchor a candidate", "", "| NMS | anchors | pairs | ms |",
              "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['nms']} | {r['anchors']} | {r['candidate_pairs']} | {r['ms']:.2f} |"
              for r in doc["nms_only"]]  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.work or args.out / "work"
    work.mkdir(parents=True, exist_ok=True)
    fp32 = args.package
    man = load_package(fp32).manifest
    int8 = work / f"{fp32.name}_int8"
    source = CalibrationSource("synthetic", args.n_calib)
    q = quantize_int8(fp32, int8, source, args.calib_method, float_head=args.float_head)
    print(f"int8 package {q.package}: {q.quantized_nodes} DequantizeLinear, "
          f"{q.float_nodes} float tail nodes", flush=True)  # fmt: skip
    coco_dir = work / "val"
    if not (coco_dir / "annotations.json").is_file():
        write_coco(work, "val", args.n_val)
    images = val_images(coco_dir, max([*_ints(args.batch_sizes), args.nms_batch]))
    doc: dict[str, Any] = {
        "package": str(fp32),
        "command": " ".join(sys.argv if argv is None else ["bench_precision.py", *argv]),
        "host": f"{platform.processor() or platform.machine()}, {platform.platform()}",
        "onnxruntime": ort.__version__, "args": {k: str(v) for k, v in vars(args).items()},
    }  # fmt: skip
    doc["ladder_latency"] = ladder_latency(args, fp32, int8, images)
    if not args.skip_accuracy:
        cmp = compare_packages(fp32, int8, coco_dir, args.n_val, args.margin)
        doc["accuracy"], doc["accuracy_markdown"] = cmp.to_dict(), cmp.to_markdown()
        print(cmp.to_markdown(), flush=True)
    doc["nms_placement"] = nms_placement(args, fp32, work, images)
    doc["nms_only"] = nms_only(args, man)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(doc))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
