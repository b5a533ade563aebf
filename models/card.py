"""`detserve-model card`: MODEL_CARD.md from a package's manifest and its eval reports.

The card never states a number no command printed, and never a provenance the manifest does not
record: a package `detserve-model package` made from a checkpoint trained here says how it was
trained; one `detserve-model import` made from an Ultralytics export says where it came from and
that its training is not recorded. Needs no optional extra (no torch).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detserve.engines.manifest import Manifest, load_package

CARD_FILE = "MODEL_CARD.md"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _eval_rows(reports: Sequence[Mapping[str, Any]]) -> list[str]:
    rows = ["| input | images | objects | mAP@0.5 | mAP@0.5:0.95 | AP_small@0.5:0.95 | "
            "AP_medium@0.5:0.95 | AP_large@0.5:0.95 | AP_small@0.5 |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in reports:
        m = r["metrics"]
        size, size50 = m["ap_size"], m["ap_size50"]
        rows.append(f"| {r['input_size']} | {m['n_images']} | {m['n_objects']} | "
                    f"{_fmt(m['map50'])} | {_fmt(m['map'])} | {_fmt(size.get('small'))} | "
                    f"{_fmt(size.get('medium'))} | {_fmt(size.get('large'))} | "
                    f"{_fmt(size50.get('small'))} |")
    return rows


def _class_rows(report: Mapping[str, Any]) -> list[str]:
    rows = ["| class | AP@0.5 | AP@0.5:0.95 |", "|---|---|---|"]
    for name, c in report["metrics"]["per_class"].items():
        rows.append(f"| {name} | {_fmt(c['ap50'])} | {_fmt(c['ap'])} |")
    return rows


def _candidates_in_words(multi_label: bool) -> str:
    if multi_label:
        return ("class-aware, every (cell, class) pair above the threshold a candidate "
                "(`postprocess.multi_label: true`, as EfficientNMS)")
    return "class-aware, each cell proposing its best class only"


def _preprocess_in_words(man: Manifest) -> str:
    pre = man.preprocess
    scale = "/255" if abs(pre.scale * 255.0 - 1.0) < 1e-9 else f"x{pre.scale:g}"
    resize = f"letterbox (pad {pre.pad_value})" if pre.resize == "letterbox" else pre.resize
    return f"Preprocessing: {resize}, {pre.color_order}, {scale}."


def _trained_lines(man: Manifest) -> list[str]:
    meta = man.metadata
    det, tr = meta.get("detector", {}), meta.get("training", {})
    lines = [
        f"A {det.get('parameters', '?')}-parameter anchor-free detector (strides 8/16/32, "
        f"width x{det.get('width_mult')}, depth x{det.get('depth_mult')}) trained from scratch on "
        "detserve's synthetic scenes. Classes: " + ", ".join(man.classes) + ".",
        "Output: YOLOv8 layout `[B, 4+nc, N]` (cx, cy, w, h in input pixels, sigmoid scores); "
        f"host NMS, {_candidates_in_words(man.postprocess.multi_label)}. "
        + _preprocess_in_words(man), "",
        "## Training", "",
        f"- Command: `{tr.get('command')}`",
        f"- Data: {tr.get('data')}",
        f"- Steps: {tr.get('steps')}; machine: {tr.get('machine')}",
    ]
    history = tr.get("history") or []
    if history:
        # Per-epoch "minutes" restart at every resume, so no total is derived from them here.
        lines.append(f"- Epochs: {history[-1].get('epoch')}; the in-training quick val mAP per "
                     "epoch (PyTorch, 300 val scenes) is under metadata.training.history in "
                     "manifest.yaml.")
    return lines


def _imported_lines(man: Manifest) -> list[str]:
    meta = man.metadata
    imp = meta.get("import") or {}
    exporter = ", ".join(
        f"{label} {meta[key]}" for label, key in (
            ("Ultralytics", "ultralytics_version"), ("exported", "ultralytics_date"),
            ("author", "ultralytics_author"), ("license", "ultralytics_license"))
        if meta.get(key))  # fmt: skip
    source = imp.get("source", "an ONNX file")
    lines = [
        f"An Ultralytics {meta.get('ultralytics_task', 'detect')} model, imported by "
        f"`detserve-model import` from the ONNX export `{source}`"
        + (f" ({exporter})" if exporter else "") + ". It was not trained by detserve: its "
        "training data and command are not recorded in this package. "
        f"Classes ({man.num_classes}): " + ", ".join(man.classes) + ".",
        "Output: YOLOv8 layout `[B, 4+nc, N]` (cx, cy, w, h in input pixels, per-class scores); "
        f"host NMS, {_candidates_in_words(man.postprocess.multi_label)}. "
        + _preprocess_in_words(man), "",
        "## Import", "",
    ]
    if imp.get("command"):
        lines.append(f"- Command: `{imp['command']}`")
    lines += [f"- Weights: {man.precision}; batch: {imp.get('batch', 'not recorded')}",
              f"- Class count read from: {imp.get('class_count_from', 'not recorded')}"]
    return lines


def _unknown_lines(man: Manifest) -> list[str]:
    return [f"A {man.output_format}-layout detector. Classes: " + ", ".join(man.classes) + ".",
            "Its provenance (training or import) is not recorded in the manifest. "
            + _preprocess_in_words(man)]


def _export_lines(man: Manifest) -> list[str]:
    exp = man.metadata.get("export", {})
    parity = exp.get("parity", {})
    if not parity:
        return []
    limits = parity.get("limits", {})
    checkpoint = man.metadata.get("torch_checkpoint", "model.pt")
    return ["## Export", "",
            f"ONNX opset {exp.get('opset')}, dynamic batch, BatchNorm folded. ONNX Runtime vs "
            f"PyTorch on {parity.get('inputs')}: max abs diff boxes "
            f"{parity.get('max_abs_diff_boxes_px', float('nan')):.3g} px (limit "
            f"{limits.get('boxes_px')}), scores "
            f"{parity.get('max_abs_diff_scores', float('nan')):.3g} (limit "
            f"{limits.get('scores')}). "
            f"`{checkpoint}` holds the same weights (float16) for the PyTorch engines.", ""]


def _threshold_line(man: Manifest, choice: Mapping[str, Any]) -> str:
    post = man.postprocess
    if not choice:
        return (f"Score threshold: {post.score_threshold} (not chosen on val; "
                f"`detserve-model eval --choose-threshold` chooses it). NMS IoU "
                f"{post.iou_threshold}.")
    return (f"Score threshold: {post.score_threshold} ({choice.get('method')}; F1 "
            f"{choice.get('f1')}, precision {choice.get('precision')}, recall "
            f"{choice.get('recall')}). NMS IoU {post.iou_threshold}.")


def write_model_card(package_dir: str | Path, reports: Sequence[Mapping[str, Any]],
                     notes: Sequence[str] = ()) -> Path:
    """MODEL_CARD.md from the manifest and `detserve-model eval --out` reports (eval.json)."""
    pkg = load_package(package_dir)
    man = pkg.manifest
    meta = man.metadata
    if not reports:
        raise ValueError("write_model_card needs at least one eval report")
    own = [r for r in reports if r["input_size"] == f"{man.input_width}x{man.input_height}"]
    choice = meta.get("score_threshold_choice", {})
    if meta.get("training"):
        about = _trained_lines(man)
    elif meta.get("imported_from"):
        about = _imported_lines(man)
    else:
        about = _unknown_lines(man)
    lines = [f"# Model card: {man.name}@{man.version}, input {man.input_width}x{man.input_height}",
             "", *about]
    lines += ["", "## Validation (val split, through the server's engine and decoder)", ""]
    lines += _eval_rows(reports)
    lines += ["", "AP_small is COCO's small (box area < 32^2 in original pixels). The same "
              "weights at a larger input see small objects at more pixels.", ""]
    if own:
        lines += [f"Per class at {own[0]['input_size']}:", "", *_class_rows(own[0]), ""]
    lines += [_threshold_line(man, choice), ""]
    lines += _export_lines(man)
    for note in notes:  # one paragraph each
        lines += [note, ""]
    path = pkg.root / CARD_FILE
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def read_reports(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    out = []
    for p in paths:
        data = json.loads(Path(p).read_text())
        if not isinstance(data, dict) or "metrics" not in data:
            raise ValueError(f"{str(p)!r} is not a detserve-model eval report (eval.json)")
        out.append(data)
    return out
