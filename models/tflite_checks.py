"""The checks of `detserve-model export-tflite`, on arrays: raw-output diffs against ONNX Runtime,
COCO metrics through detserve's own yolov8 decoder and NMS, and the markdown report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.decode import decode_batch
from detserve.engines.manifest import Manifest
from detserve.models.evaluate import EVAL_MAX_DETECTIONS, EVAL_SCORE_THRESHOLD
from detserve.models.evaluate_metrics import ImageDetections, coco_metrics

FloatArray = npt.NDArray[np.float32]
METRIC_KEYS = ("mAP@0.5", "mAP@0.5:0.95", "AP_small@0.5:0.95")


def raw_diff(reference: FloatArray, got: FloatArray, score_threshold: float) -> dict[str, Any]:
    """Max and mean abs diff of raw yolov8 outputs `[n, 4 + nc, N]`: box rows (cx, cy, w, h in
    input pixels) and score rows apart, since they differ in scale by hundreds; over all
    anchors, and over the anchors whose reference best score reaches `score_threshold` (the
    serving one): most anchors are background, whose boxes nobody reads."""
    if reference.shape != got.shape or reference.ndim != 3 or reference.shape[1] < 5:
        raise ValueError(f"raw outputs must share one [n, 4 + nc, N] shape, got "
                         f"{reference.shape} and {got.shape}")  # fmt: skip
    diff = np.abs(got.astype(np.float64) - reference.astype(np.float64))
    boxes, scores = diff[:, :4], diff[:, 4:]
    hit = reference[:, 4:].max(axis=1) >= score_threshold  # [n, N]
    hit_boxes = boxes.transpose(0, 2, 1)[hit]  # [anchors, 4]
    hit_scores = scores.transpose(0, 2, 1)[hit]
    return {"max_abs_diff_boxes_px": float(boxes.max()),
            "mean_abs_diff_boxes_px": float(boxes.mean()),
            "max_abs_diff_scores": float(scores.max()),
            "mean_abs_diff_scores": float(scores.mean()),
            "confident": {"score_threshold": score_threshold, "anchors": int(hit.sum()),
                          "max_abs_diff_boxes_px": float(hit_boxes.max(initial=0.0)),
                          "mean_abs_diff_boxes_px": float(hit_boxes.mean()) if hit.any()
                          else 0.0,
                          "max_abs_diff_scores": float(hit_scores.max(initial=0.0))}}  # fmt: skip


def round_like_outputs(raw: FloatArray, outputs: Sequence[Mapping[str, Any]]) -> FloatArray:
    """`raw` [n, 4 + nc, N] with each row block rounded as an int8 model's quantized outputs
    round it (boxes: the 4-row output's scale and zero point, scores: the other's): the loss
    the int8 output tensors alone would cause, apart from the quantized layers before them."""
    out = raw.astype(np.float32, copy=True)
    for o in outputs:
        q = o.get("quantization")
        if q is None:
            continue
        rows = slice(0, 4) if o["shape"][1] == 4 else slice(4, raw.shape[1])
        scale, zero = np.float32(q["scale"]), np.float32(q["zero_point"])
        levels = np.clip(np.round(out[:, rows] / scale) + zero, -128, 127)
        out[:, rows] = (levels - zero) * scale
    return out


def detections(raw: FloatArray, manifest: Manifest, letterboxes: Sequence[Letterbox],
               image_ids: Sequence[int]) -> list[ImageDetections]:
    """Decode raw yolov8 outputs as `detserve-model eval` does: score >= 0.001, the manifest's
    NMS IoU, at most 100 per image."""
    if not len(raw) == len(letterboxes) == len(image_ids):
        raise ValueError(f"{len(raw)} outputs, {len(letterboxes)} letterboxes and "
                         f"{len(image_ids)} image ids must match")  # fmt: skip
    params = DecodeParams(EVAL_SCORE_THRESHOLD, manifest.postprocess.iou_threshold,
                          EVAL_MAX_DETECTIONS)  # fmt: skip
    dets = decode_batch([raw], manifest, letterboxes, [params] * len(raw))
    return [ImageDetections(i, d) for i, d in zip(image_ids, dets, strict=True)]


def metrics(gt: Mapping[str, Any], preds: Sequence[ImageDetections],
            classes: Sequence[str]) -> dict[str, float | None]:
    m = coco_metrics(dict(gt), preds, classes)
    small = m.ap_size.get("small")
    return {"mAP@0.5": round(m.map50, 4), "mAP@0.5:0.95": round(m.map, 4),
            "AP_small@0.5:0.95": None if small is None else round(small, 4)}  # fmt: skip


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v else f"{v:.{digits}f}".rstrip("0")
    return str(v)


def _io_line(io: Mapping[str, Any]) -> str:
    def one(t: Mapping[str, Any]) -> str:
        q = t.get("quantization")
        quant = "" if q is None else f", scale {q['scale']:.6g}, zero point {q['zero_point']}"
        return f"`{t['name']}` {t['dtype']} {t['shape']}{quant}"

    ins = "; ".join(one(t) for t in io["inputs"])
    outs = "; ".join(one(t) for t in io["outputs"])
    return f"in: {ins}. out: {outs}"


def report_markdown(results: Mapping[str, Any]) -> str:
    """The report of one export-tflite run (its checks.json) as markdown."""
    val, ort = results["val"], results["onnxruntime"]
    lines = [
        f"# TFLite export of {results['package']}", "",
        f"Command: `{results['command']}`", "",
        f"Machine: {results['machine']['cpu']}, {results['machine']['logical_cpus']} logical "
        f"CPUs (load average {results['machine'].get('load_average_1m_start')} at the start, "
        f"{results['machine'].get('load_average_1m_end')} at the end: a shared host); "
        f"interpreter and ONNX Runtime at 1 thread, batch 1.", "",
        f"Val: {val['dataset']} ({val['images']} images); decoded by detserve's yolov8 decoder "
        f"and NMS at score >= {EVAL_SCORE_THRESHOLD}, at most {EVAL_MAX_DETECTIONS} per image.",
        "",
        "Raw-output diffs against ONNX Runtime on the same tensors, max abs over all anchors; in "
        "brackets over the confident anchors (ONNX Runtime's best score >= the serving "
        "threshold), whose boxes become detections.", "",
        "| model | bytes | ms/img (median, p90) | boxes px: max (confident max, mean) "
        "| scores: max (confident max) | mAP@0.5 | mAP@0.5:0.95 | AP_small |",
        "|---|---|---|---|---|---|---|---|",
        f"| ONNX (onnxruntime) | {ort['bytes']} | {ort['bench']['ms_median']}, "
        f"{ort['bench']['ms_p90']} | (reference) | (reference) | "
        + " | ".join(_fmt(ort["metrics"][k]) for k in METRIC_KEYS) + " |",
    ]
    for name, v in results["variants"].items():
        d = v["diff_vs_onnxruntime"]
        c = d["confident"]
        lines.append(
            f"| {name} | {v['bytes']} | {v['bench']['ms_median']}, {v['bench']['ms_p90']} | "
            f"{_fmt(d['max_abs_diff_boxes_px'])} ({_fmt(c['max_abs_diff_boxes_px'])}, "
            f"{_fmt(c['mean_abs_diff_boxes_px'])}) | {_fmt(d['max_abs_diff_scores'])} "
            f"({_fmt(c['max_abs_diff_scores'])}) | "
            + " | ".join(_fmt(v["metrics"][k]) for k in METRIC_KEYS) + " |")
    for name, v in results["variants"].items():
        r = v.get("onnxruntime_with_output_rounding")
        if r:
            lines += ["", f"ONNX Runtime's outputs rounded as {name}'s int8 output tensors "
                      "round them (no other quantization): " + ", ".join(
                          f"{k} {_fmt(r[k])}" for k in METRIC_KEYS) + "."]
    lines += ["", "Input/output tensors:", ""]
    lines += [f"- {name}: {_io_line(v['io'])}" for name, v in results["variants"].items()]
    lines += ["", *[f"- {note}" for note in results.get("notes", ())]]
    cal = results.get("calibration")
    if cal:
        lines += ["", f"Calibration: {cal['images']} images of the {cal.get('split')} split "
                  f"(seeds {cal.get('seeds')}), disjoint from val and test."]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items())]
    return "\n".join(lines) + "\n"
