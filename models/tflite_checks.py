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
        rows = slice(0, 4) if o["shape"][1] == 4 else slice(4, raw.shape[1])
        out[:, rows] = _round(out[:, rows], o.get("quantization"))
    return out


def matching_output(shape: Sequence[int],
                    outputs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The model output (its io entry) that carries an NCHW tensor of `shape` [n, C, H, W],
    in that layout or onnx2tf's NHWC; batch 1 either way."""
    nchw = [1, *shape[1:]]
    nhwc = [1, *shape[2:], shape[1]]
    found = [o for o in outputs if list(o["shape"]) in (nchw, nhwc)]
    if len(found) != 1:
        raise ValueError(f"{len(found)} outputs of shape {nchw} or {nhwc} in "
                         f"{[o['shape'] for o in outputs]}; expected one")  # fmt: skip
    return found[0]


def _round(x: FloatArray, q: Mapping[str, Any] | None) -> FloatArray:
    """`x` rounded to an int8 tensor's levels (scale, zero point), clipped to its range."""
    if q is None:
        return x.astype(np.float32, copy=True)
    scale, zero = np.float32(q["scale"]), np.float32(q["zero_point"])
    out: FloatArray = (np.clip(np.round(x / scale) + zero, -128, 127) - zero) * scale
    return out.astype(np.float32)


def round_like_body(reference: Mapping[str, FloatArray],
                    outputs: Sequence[Mapping[str, Any]]) -> dict[str, FloatArray]:
    """Each body output of `reference` (ONNX Runtime's) rounded as the int8 model's matching
    output tensor rounds it: the loss the int8 outputs alone cause."""
    return {name: _round(v, matching_output(v.shape, outputs).get("quantization"))
            for name, v in reference.items()}  # fmt: skip


def body_diffs(reference: Mapping[str, FloatArray], got: Mapping[str, FloatArray],
               outputs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per body output: ONNX Runtime's range on val, the int8 output's step, and the max and
    mean abs diff of the interpreter's dequantized values against ONNX Runtime's."""
    facts = {}
    for name, ref in reference.items():
        if name not in got or got[name].shape != ref.shape:
            raise ValueError(f"body output {name!r}: {ref.shape} from ONNX Runtime, "
                             f"{got[name].shape if name in got else 'none'} from TFLite")
        q = matching_output(ref.shape, outputs).get("quantization")
        diff = np.abs(got[name].astype(np.float64) - ref)
        facts[name] = {"shape": list(ref.shape[1:]), "onnxruntime_min": float(ref.min()),
                       "onnxruntime_max": float(ref.max()),
                       "int8_scale": None if q is None else q["scale"],
                       "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean())}
    return facts


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


def _tail_ms(bench: Mapping[str, Any]) -> str:
    t = bench.get("tail_ms_median")
    return "" if t is None else f" (float tail {t})"


def _body_lines(name: str, body: Mapping[str, Any] | None) -> list[str]:
    if not body:
        return []
    lines = ["", f"{name}'s outputs (the head convs' logits, dequantized) against ONNX Runtime's "
             "outputs of the same body graph on val:", "",
             "| tensor | shape (C, H, W) | ONNX Runtime range | int8 step | max abs diff "
             "| mean abs diff |", "|---|---|---|---|---|---|"]
    for tensor, b in body.items():
        lines.append(f"| {tensor} | {b['shape']} | {_fmt(b['onnxruntime_min'])} .. "
                     f"{_fmt(b['onnxruntime_max'])} | {_fmt(b['int8_scale'])} | "
                     f"{_fmt(b['max_abs_diff'])} | {_fmt(b['mean_abs_diff'])} |")
    return lines


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
        "| model | bytes | ms/img (median, p90; of it the host's float tail) "
        "| boxes px: max (confident max, mean) "
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
            f"| {name} | {v['bytes']} | {v['bench']['ms_median']}, {v['bench']['ms_p90']}"
            f"{_tail_ms(v['bench'])} | "
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
    for name, v in results["variants"].items():
        lines += _body_lines(name, v.get("body_outputs"))
    lines += ["", "Input/output tensors:", ""]
    lines += [f"- {name}: {_io_line(v['io'])}" for name, v in results["variants"].items()]
    lines += ["", *[f"- {note}" for note in results.get("notes", ())]]
    cal = results.get("calibration")
    if cal:
        lines += ["", f"Calibration: {cal['images']} images of the {cal.get('split')} split "
                  f"(seeds {cal.get('seeds')}), disjoint from val and test."]
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in results["versions"].items())]
    return "\n".join(lines) + "\n"
