"""Verdicts and tables of benchmarks/model_families.py: which CPU path is the fastest verified
one per row, the markdown report and the CSV (one line per row and path)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# FP32 paths must match ONNX Runtime FP32 to rounding: pixels for boxes, probability for scores.
FP32_LIMITS = {"boxes": 0.05, "scores": 1e-3}
LABELS = {"ort-fp32": "ORT FP32", "ov-fp32": "OpenVINO FP32", "ov-int8": "OpenVINO INT8 (served)"}
CSV_COLUMNS = ("key", "model", "input", "path", "verified", "ms_per_image_b1", "ms_per_image_b8",
               "peak_rss_mib", "rss_loaded_mib", "activation_mib_b1", "activation_mib_b8",
               "check_boxes", "check_scores", "error")  # fmt: skip


def check_figures(result: dict[str, Any]) -> tuple[float, float] | None:
    """(boxes, scores) max abs diff against ORT FP32; torchvision rows: the untied boxes
    and the score-sorted scores (model_families_measure.matched_diff)."""
    check = result.get("check")
    if check is None:
        return None
    boxes = check.get("max_abs_diff_boxes_untied", check["max_abs_diff_boxes"])
    scores = check.get("max_abs_diff_sorted_scores", check["max_abs_diff_scores"])
    return float(boxes), float(scores)


def verdict(result: dict[str, Any], verified_by: str) -> str:
    """'reference', 'verified: ...' or 'not verified: ...' for one path's result."""
    if "error" in result:
        return f"not verified: failed ({result['error'][:120]})"
    if result["path"] == "ort-fp32":
        return "reference"
    if verified_by:  # INT8: its accuracy was checked on val, a max diff says nothing about it
        return f"verified: {verified_by}"
    figures = check_figures(result)
    if figures is None:
        return "not verified: no output check"
    counts = result["check"].get("detections")
    if counts is not None and (counts[0] != counts[1] or result["check"]["labels_unmatched"]):
        return (f"not verified: {counts[1]} detections against ORT FP32's {counts[0]}, "
                f"{result['check']['labels_unmatched']} of a label ORT did not return")
    boxes, scores = figures
    if boxes <= FP32_LIMITS["boxes"] and scores <= FP32_LIMITS["scores"]:
        return f"verified: max diff vs ORT FP32 {boxes:.2g} px, scores {scores:.2g}"
    return f"not verified: max diff vs ORT FP32 {boxes:.2g} px, scores {scores:.2g}"


def fastest(paths: Sequence[dict[str, Any]], batch: int) -> dict[str, Any] | None:
    """The verified (or reference) path with the lowest ms per image at `batch`."""
    timed = [p for p in paths if not p["verdict"].startswith("not")
             and f"ms_per_image_b{batch}" in p]  # fmt: skip
    return min(timed, key=lambda p: p[f"ms_per_image_b{batch}"], default=None)


def _ms(p: dict[str, Any] | None, batch: int) -> str:
    if p is None or f"ms_per_image_b{batch}" not in p:
        return "not run"
    return f"{p[f'ms_per_image_b{batch}']:.1f}"


def _mib(p: dict[str, Any] | None, key: str) -> str:
    return "—" if p is None or key not in p else f"{p[key]:.0f}"


def selection_table(rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]]) -> str:
    head = ("| model | input | params | GFLOPs | ORT FP32 ms/img b1 | ORT b8 | fastest verified "
            "CPU path | its ms/img b1 | fastest b8 | peak RSS MiB (ORT) | activation MiB b1 / b8 "
            "(ORT) | parity vs torch |\n" + "|---" * 12 + "|\n")
    lines = []
    for r in rows:
        ort = next((p for p in r["paths"] if p["path"] == "ort-fp32" and "error" not in p), None)
        best, best8 = r["fastest_b1"], r["fastest_b8"]
        label = LABELS[best["path"]] if best else "—"
        if best and best8 and best8["path"] != best["path"]:
            label += f" (b8: {LABELS[best8['path']]})"
        par = r["parity_vs_torch"]
        untied = r.get("parity_vs_torch_untied")
        par_text = "—" if par is None else f"{par:.2g}"
        if untied is not None:  # torchvision: nearest-box diff, then without tied copies
            par_text = f"{untied:.2g} ({r['tied_off']} tied copies apart; nearest {par:.2g})"
        lines.append(
            f"| {r['model']} | {r['input']} | {r['parameters'] / 1e6:.2f} M | {r['gflops']:.2f} "
            f"| {_ms(ort, 1)} | {_ms(ort, 8)} | {label} "
            f"| {_ms(best, 1)} | {_ms(best8, 8)} | {_mib(ort, 'peak_rss_mib')} "
            f"| {_mib(ort, 'activation_mib_b1')} / {_mib(ort, 'activation_mib_b8')} "
            f"| {par_text} |")
    for s in skipped:
        lines.append(f"| {s['model']} | {s['input']} |" + " |" * 9 + f" {s['reason']} |")
    return head + "\n".join(lines) + "\n"


def paths_table(rows: Sequence[dict[str, Any]]) -> str:
    head = ("| model | input | path | ms/img b1 | ms/img b8 | peak RSS MiB | RSS loaded MiB | "
            "activation MiB b1 | activation MiB b8 | check |\n" + "|---" * 10 + "|\n")
    lines = [
        f"| {r['model']} | {r['input']} | {LABELS[p['path']]} | {_ms(p, 1)} | {_ms(p, 8)} "
        f"| {_mib(p, 'peak_rss_mib')} | {_mib(p, 'rss_loaded_mib')} "
        f"| {_mib(p, 'activation_mib_b1')} | {_mib(p, 'activation_mib_b8')} | {p['verdict']} |"
        for r in rows for p in r["paths"]
    ]
    return head + "\n".join(lines) + "\n"


def resolution_table(rows: Sequence[dict[str, Any]]) -> str:
    """The default model's sides against its first: compute, latency and activation ratios."""
    own = [r for r in rows if r["key"].startswith("default_")]
    if not own:
        return ""

    def ort(r: dict[str, Any]) -> dict[str, Any]:
        return next(p for p in r["paths"] if p["path"] == "ort-fp32")

    b, base = own[0], ort(own[0])
    x = f"× {b['input']}"
    head = (f"| input | GFLOPs | {x} | ORT ms/img b1 | {x} | ORT ms/img b8 | {x} | activation "
            f"MiB b1 | {x} | activation MiB b8 | {x} |\n" + "|---" * 11 + "|\n")
    lines = []
    for r in own:
        p = ort(r)
        cells = [f"{r['input']}", f"{r['gflops']:.2f}", f"{r['gflops'] / b['gflops']:.2f}"]
        for key in ("ms_per_image_b1", "ms_per_image_b8", "activation_mib_b1",
                    "activation_mib_b8"):
            cells += [f"{p[key]:.1f}", f"{p[key] / base[key]:.2f}"] if key in p else ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        for r in rows:
            for p in r["paths"]:
                figures = check_figures(p) or (math.nan, math.nan)
                writer.writerow({
                    "key": r["key"], "model": r["model"], "input": r["input"],
                    "path": p["path"], "verified": p["verdict"],
                    **{k: p.get(k, "") for k in CSV_COLUMNS[5:11]},
                    "check_boxes": figures[0], "check_scores": figures[1],
                    "error": p.get("error", ""),
                })  # fmt: skip
