"""The ship checklist: each item, whether it passes, and the evidence, from the package, its
evaluation on val and the benchmark results given (soak, sweep, memory).

The results files are read as JSON (their layout is the benchmarks'; models never imports the
client). Every item says what it saw, so a ❌ tells a reader what to run or fix.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detserve.engines.manifest import Manifest

SOAK_MIN_S = 300.0  # "worst-case latency measured after 5 minutes"
RSS_GROWTH_LIMIT = 0.10  # last minute over first: more than 10 % reads as a leak


@dataclass(frozen=True)
class Check:
    key: str  # the section that holds the details
    title: str
    passed: bool
    evidence: str


def read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {str(path)!r}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{str(path)!r} is not a results document")
    return doc


def read_soak(path: Path) -> dict[str, Any]:
    doc = read_json(path, "soak results")
    if "soak" not in doc or "summary" not in doc["soak"]:
        raise ValueError(f"{str(path)!r} is not a soak results file (detserve-bench soak)")
    return doc


def read_sweep(path: Path) -> dict[str, Any]:
    doc = read_json(path, "sweep results")
    if doc.get("tool") != "detserve-bench" or "settings" not in doc or "soak" in doc:
        raise ValueError(f"{str(path)!r} is not a sweep results file (detserve-bench sweep "
                         "or benchmarks/unary_sweep.py)")
    return doc


def read_memory(path: Path) -> dict[str, Any]:
    doc = read_json(path, "memory results")
    if doc.get("tool") != "detserve-memory":
        raise ValueError(f"{str(path)!r} is not a memory results file (benchmarks/memory.py)")
    return doc


def split_of_dataset(path_text: str) -> tuple[str | None, str]:
    """The split a recorded dataset path names: its COCO info.split when the file is here,
    else a path part called train/val/test/calib; with how it was found."""
    path = Path(path_text)
    if path.is_file():
        try:
            info = json.loads(path.read_text()).get("info") or {}
            if info.get("split"):
                return str(info["split"]), f"info.split of {path_text}"
        except (json.JSONDecodeError, AttributeError):
            pass
    for part in reversed(path.parts):
        if part in ("train", "val", "test", "calib"):
            return part, f"the folder name in {path_text}"
    return None, f"{path_text} does not say"


def threshold_choice(man: Manifest) -> tuple[Mapping[str, Any] | None, str]:
    """The manifest's record of how score_threshold was chosen, and whose it is: the package's
    own, or (a quantized package keeps its FP32 parent's threshold) its parent's."""
    meta = man.metadata
    if isinstance(meta.get("score_threshold_choice"), Mapping):
        return meta["score_threshold_choice"], "this package"
    if isinstance(meta.get("fp32_score_threshold_choice"), Mapping):
        return meta["fp32_score_threshold_choice"], "its FP32 parent (kept by quantization)"
    return None, ""


def check_map(map50: float, map5095: float, n_images: int, n_objects: int,
              split: str | None) -> Check:
    seen = (f"mAP@0.5 = {map50:.3f}, mAP@0.5:0.95 = {map5095:.3f} (COCO AP, IoU 0.50:0.05:0.95)"
            f" on {n_images} images / {n_objects} objects through the server's engine and "
            "decoder")
    if split != "val":
        return Check("accuracy", "val mAP documented with its IoU thresholds", False,
                     f"{seen}; but the set's COCO info says split {split!r}, not 'val'")
    return Check("accuracy", "val mAP documented with its IoU thresholds", True,
                 f"{seen}; split 'val' (the set's COCO info)")


def check_threshold(man: Manifest, best: float | None, f1_best: float | None,
                    f1_served: float) -> Check:
    title = "score_threshold chosen on val, not test"
    choice, whose = threshold_choice(man)
    served = man.postprocess.score_threshold
    here = (f" On this val set: F1 {f1_served:.3f} at the served {served:g}"
            + (f"; the max-F1 threshold here is {best:.3f} (F1 {f1_best:.3f})."
               if best is not None and f1_best is not None else "."))
    if choice is None:
        return Check("threshold", title, False, f"score_threshold {served:g} has no record of "
                     "how it was chosen (run detserve-model eval --choose-threshold on val)."
                     + here)
    split, how = split_of_dataset(str(choice.get("dataset", "")))
    said = (f"score_threshold {served:g}, chosen by {whose}: {choice.get('method')} on "
            f"{choice.get('dataset')} (split {split!r}, from {how}; F1 {choice.get('f1')}).")
    return Check("threshold", title, split == "val", said + here)


def check_preprocessing(man: Manifest) -> Check:
    pre = man.preprocess
    scale = "1/255" if abs(pre.scale * 255 - 1) < 1e-9 else f"{pre.scale:g}"
    text = (f"{pre.color_order} channel order, {pre.resize} to {man.input_width}×"
            f"{man.input_height}" + (f" (pad value {pre.pad_value})" if pre.resize == "letterbox"
                                     else "") + f", scale {scale}, mean {list(pre.mean)}, "
            f"std {list(pre.std)} (from manifest.yaml)")
    return Check("preprocessing", "preprocessing documented (RGB order, mean/std, resize)",
                 True, text)


def _f(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}{unit}"


def soak_identity(doc: Mapping[str, Any], man: Manifest) -> str | None:
    """None when the soak's server said it served this package's model; else what it served."""
    info = (doc.get("settings") or [{}])[0].get("target_info") or {}
    if not info or "error" in info:
        return "the soak did not record what its server served"
    name = str(info.get("name", "")).split("@")[0]
    size = list(info.get("input_size") or [])
    ours = (man.name, man.version, man.precision, [man.input_width, man.input_height])
    theirs = (name, str(info.get("version")), info.get("precision"), size)
    if theirs != ours:
        return (f"the soak served {info.get('name')} v{info.get('version')} "
                f"{info.get('precision')} at {size}, not this package")
    return None


def check_soak(doc: Mapping[str, Any] | None, man: Manifest) -> Check:
    title = "worst-case latency measured after 5 minutes (thermal throttling)"
    if doc is None:
        return Check("latency", title, False, "no soak given (detserve-bench soak --minutes 5, "
                     "then --soak RESULTS)")
    s, buckets = doc["soak"]["summary"], doc["soak"]["buckets"]
    worst, last = buckets[s["worst_bucket"]], buckets[-1]
    text = (f"{s['duration_s'] / 60:.1f} min soak: worst minute p99 {_f(s['worst_p99_ms'])} ms "
            f"(minute {s['worst_bucket'] + 1}, p50 {_f(worst['p50_ms'])} ms); last minute p99 "
            f"{_f(last['p99_ms'])} ms at {_f(last['throughput_rps'])} req/s; first ÷ last "
            f"minute: throughput {_f(s['first_over_last_throughput'], digits=3)}, p99 "
            f"{_f(s['first_over_last_p99'], digits=3)}; {s['errors']} errors")
    others = _other_cpu(buckets)
    if others is not None:
        text += (f"; other processes on the host took {others:.2f} cores on average (the soak "
                 "shares the machine: read a trend against that)")
    wrong = soak_identity(doc, man)
    if wrong:
        return Check("latency", title, False, f"{text}; but {wrong}")
    if s["duration_s"] < SOAK_MIN_S - 1:
        return Check("latency", title, False, f"{text}; shorter than 5 minutes")
    return Check("latency", title, True, text)


def _other_cpu(buckets: Sequence[Mapping[str, Any]]) -> float | None:
    """Mean CPU cores of everything but the server and the load generator, per bucket."""
    keys = ("host_busy_cores", "server_cpu_cores", "client_cpu_cores")
    rows = [b for b in buckets if all(b.get(k) is not None for k in keys)]
    if not rows:
        return None
    return float(sum(b[keys[0]] - b[keys[1]] - b[keys[2]] for b in rows)) / len(rows)


def sweep_peak_rss(doc: Mapping[str, Any] | None) -> float | None:
    """The highest server RSS any sweep level recorded (None: the sweep predates the field)."""
    if doc is None:
        return None
    peaks = [lv["server_rss_peak_mb"] for s in doc["settings"] for lv in s["levels"]
             if lv.get("server_rss_peak_mb") is not None]
    return max(peaks) if peaks else None


def memory_lines(soak: Mapping[str, Any] | None, sweep: Mapping[str, Any] | None,
                 memory: Mapping[str, Any] | None, man: Manifest) -> tuple[list[str], bool]:
    """Evidence lines for the memory item, and whether they show a leak."""
    lines, leak = [], False
    if memory is not None:
        for srv in memory.get("servers", []):
            lines.append(f"server {srv['model']}: {_f(srv['serving_mb'])} MB when serving, "
                         f"peak {_f(srv['peak_mb'])} MB under load")
        by_engine: dict[str, list[str]] = {}
        for v in memory.get("side_verdicts", []):
            by_engine.setdefault(v["engine"], []).append(
                f"{v['small']}→{v['large']} ×{_f(v['mean'], digits=2)}")
        for engine, steps in by_engine.items():
            lines.append(f"2× the side: {engine} activation {', '.join(steps)} (expected ≈ ×4)")
        ours = [r for r in memory.get("engines", []) if r["side"] == man.input_width
                and r["engine"].endswith(man.precision)]
        for r in ours[-1:]:
            lines.append(f"{r['engine']} at {r['side']}, batch {r['batch']}: activation "
                         f"{_f(r['activation_mb'])} MB on {_f(r['loaded_mb'])} MB loaded")
    if soak is not None:
        s = soak["soak"]["summary"]
        if s.get("rss_peak_mb") is not None:
            first, last = s["rss_first_mb"], s["rss_last_mb"]
            leak = last > first * (1 + RSS_GROWTH_LIMIT)
            lines.append(f"soak: server RSS {_f(first)} MB in the first minute, {_f(last)} MB "
                         f"in the last ({last - first:+.1f} MB), peak {_f(s['rss_peak_mb'])} MB")
    peak = sweep_peak_rss(sweep)
    if sweep is not None:
        lines.append(f"sweep: peak server RSS {_f(peak)} MB over its levels" if peak is not None
                     else "sweep: no per-level RSS recorded (a sweep older than that column)")
    return lines, leak


def check_memory(soak: Mapping[str, Any] | None, sweep: Mapping[str, Any] | None,
                 memory: Mapping[str, Any] | None, man: Manifest) -> Check:
    title = "memory budget measured (server RSS; activation memory per side and batch)"
    lines, leak = memory_lines(soak, sweep, memory, man)
    measured = memory is not None or any(line.startswith("soak: server RSS") for line in lines)
    if not measured:
        return Check("memory", title, False, "no memory measurement given (--memory from "
                     "benchmarks/memory.py, or a --soak that traced the server)")
    if leak:
        lines.append(f"RSS grew more than {RSS_GROWTH_LIMIT:.0%} over the soak: a leak?")
    return Check("memory", title, not leak, "; ".join(lines))


def check_precision(precision: Mapping[str, Any] | None, man: Manifest) -> Check | None:
    """FP32 against this lower-precision package; None for an FP32 package (nothing to do)."""
    if man.precision == "fp32":
        return None
    margin = float(precision["margin_points"]) if precision else 1.0
    title = f"{man.precision.upper()} within {margin:g} AP point(s) of FP32 on every row"
    if precision is None:
        return Check("precision", title, False, f"a {man.precision} package without "
                     "precision.json (detserve-model compare-precision FP32 THIS --out PACKAGE)")
    rows: Sequence[Mapping[str, Any]] = precision["rows"]
    worst = min((r for r in rows if r.get("delta_points") is not None),
                key=lambda r: r["delta_points"], default=None)
    flagged = list(precision.get("flagged", []))
    text = (f"{len(rows)} rows compared ({precision['base']} vs {precision['other']}), "
            f"{len(flagged)} lose more than {precision['margin_points']:g} point(s)")
    if worst is not None:
        text += f"; largest loss {worst['metric']} {worst['delta_points']:+.2f} points"
    return Check("precision", title, not flagged, text)


def check_gallery(n_fp: int, n_fn: int, shown: int, reviewed_by: str | None) -> Check:
    text = (f"{n_fp} false positives and {n_fn} false negatives at the served threshold; "
            f"the worst {shown} drawn below, by class and size")
    if not reviewed_by:
        return Check("gallery", "failure gallery reviewed by the team", False,
                     f"{text}; not reviewed yet (after the review, run again with "
                     "--reviewed-by NAMES)")
    return Check("gallery", "failure gallery reviewed by the team", True,
                 f"{text}; reviewed by {reviewed_by}")
