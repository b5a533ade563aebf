"""The CPU precision ladder in one run: ONNX Runtime and OpenVINO, FP32 / BF16 / INT8.

For each package (default: the shipped shapes@320): quantize it for ORT (static INT8 QDQ) and for
OpenVINO (NNCF INT8 IR) on calibration scenes disjoint from val, time every path at each batch
size with interleaved repetitions (so machine noise hits all paths alike), evaluate each path on
val scenes through the serving path (`detserve.models.evaluate.predict_set`: preprocessing, engine,
decoder), then pick the fastest path whose val mAP@0.5 is within 0.5 point of ORT FP32 and whose
AP_small is within 1 point, and write it all to RESULTS.md (and results.json). See README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from detserve.engines.base import Engine
from detserve.engines.factory import create_engine
from detserve.engines.manifest import load_package
from detserve.engines.preprocess import prepare
from detserve.models.coco import load_coco
from detserve.models.evaluate import predict_set
from detserve.models.evaluate_metrics import coco_metrics
from detserve.models.quantize import CalibrationSource, quantize_int8
from detserve.models.quantize_openvino import quantize_openvino
from detserve.models.scenes import write_coco

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MAP50_TOLERANCE = 0.005  # 0.5 point
SMALL_TOLERANCE = 0.01  # 1 point
BASELINE = "ort-fp32"


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    engine: str
    package: Path
    options: dict[str, Any]
    twin: str = ""  # a variant with the same outputs (static compile): accuracy is shared


@dataclass
class Result:
    variant: Variant
    precision: str = ""  # what the engine reports it runs at
    ms: dict[int, list[float]] = field(default_factory=dict)  # batch -> ms per batch, per rep
    metrics: dict[str, float | None] = field(default_factory=dict)

    def median_ms(self, batch: int) -> float:
        # Not the best repetition: load from other processes comes in bursts, and a quiet burst
        # that lands on one path's window only would decide the ranking.
        return float(np.median(self.ms[batch]))

    def img_s(self, batch: int) -> float:
        return batch * 1000.0 / self.median_ms(batch)


def log(msg: str, started: float) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)


def variants(
    pkg: Path, ort_int8: Path, ov_int8: Path, threads: int, batches: list[int]
) -> list[Variant]:
    ov = {"num_threads": threads, "num_streams": 1, "performance_hint": "LATENCY"}
    static = {**ov, "static_batch_sizes": batches}
    return [
        Variant(BASELINE, "ORT FP32", "onnxruntime", pkg, {"intra_op_threads": threads}),
        Variant("ov-f32", "OpenVINO FP32", "openvino", pkg, {**ov, "precision": "f32"}),
        Variant("ov-bf16", "OpenVINO BF16", "openvino", pkg, {**ov, "precision": "bf16"}),
        Variant("ort-int8", "ORT INT8 QDQ", "onnxruntime", ort_int8, {"intra_op_threads": threads}),
        Variant("ov-int8", "OpenVINO INT8 NNCF", "openvino", ov_int8, {**ov, "precision": "int8"}),
        Variant("ov-bf16-static", "OpenVINO BF16, per-size compile", "openvino", pkg,
                {**static, "precision": "bf16"}, twin="ov-bf16"),
        Variant("ov-int8-static", "OpenVINO INT8, per-size compile", "openvino", ov_int8,
                {**static, "precision": "int8"}, twin="ov-int8"),
    ]  # fmt: skip


def time_batch(engine: Engine, batch: np.ndarray, window_s: float) -> float:
    """Milliseconds per engine call, averaged over a window of back-to-back calls (at least one:
    a large batch on a loaded machine may take longer than the window)."""
    n, started = 0, time.perf_counter()
    while True:
        engine.infer(batch)
        n += 1
        elapsed = time.perf_counter() - started
        if elapsed >= window_s:
            return elapsed * 1000.0 / n


def measure_speed(
    engines: dict[str, Engine],
    results: dict[str, Result],
    inputs: np.ndarray,
    batches: list[int],
    reps: int,
    window_s: float,
) -> None:
    keys = list(engines)
    for b in batches:  # warm-up: first calls at a new shape pay for kernel selection
        for key in keys:
            engines[key].infer(inputs[:b])
            engines[key].infer(inputs[:b])
    for rep in range(reps):
        order = keys[rep % len(keys) :] + keys[: rep % len(keys)]  # rotate: no fixed position
        for b in batches:
            for key in order:
                ms = time_batch(engines[key], inputs[:b], window_s)
                results[key].ms.setdefault(b, []).append(ms)


def measure_accuracy(engine: Engine, val_json: Path, classes: tuple[str, ...]) -> dict[str, Any]:
    coco = load_coco(val_json)
    m = coco_metrics(coco.raw, predict_set(engine, coco, batch_size=8), classes)
    return {"mAP@0.5": m.map50, "mAP@0.5:0.95": m.map, "AP_small": m.ap_size["small"],
            "AP_medium": m.ap_size["medium"], "AP_large": m.ap_size["large"],
            "images": m.n_images, "objects": m.n_objects}  # fmt: skip


def eligible(r: Result, base: Result) -> bool:
    m, b = r.metrics, base.metrics
    ok50 = m["mAP@0.5"] is not None and m["mAP@0.5"] >= (b["mAP@0.5"] or 0.0) - MAP50_TOLERANCE
    if b["AP_small"] is None:  # no small objects in the val subset: nothing to hold against
        return ok50
    return ok50 and m["AP_small"] is not None and m["AP_small"] >= b["AP_small"] - SMALL_TOLERANCE


def choose(results: dict[str, Result], batch: int) -> Result:
    """The fastest verified path at `batch` (the server's full batch); a per-size compile only
    where it is faster than the dynamic model at every batch size."""
    base = results[BASELINE]
    ok = [r for r in results.values() if eligible(r, base)]
    best = max(ok, key=lambda r: r.img_s(batch))
    twin = results.get(best.variant.twin)
    # One compiled model per batch size is worth its compile time and padding only if it beats
    # the dynamic-batch model at every batch size measured.
    if twin is not None and any(twin.img_s(b) >= best.img_s(b) for b in best.ms):
        return twin
    return best


def cpu_facts() -> dict[str, str]:
    name = platform.processor() or "unknown"
    flags: list[str] = []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
            if line.startswith("Flags:"):
                flags = line.split(":", 1)[1].split()
    except (OSError, subprocess.CalledProcessError):
        pass
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8")
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return {
        "model": name,
        "flags": " ".join(f for f in wanted if f in flags) or "none of interest",
        "openvino_capabilities": " ".join(map(str, caps)),
    }


def versions() -> dict[str, str]:
    import nncf
    import onnxruntime
    import openvino

    return {
        "openvino": openvino.__version__,
        "onnxruntime": onnxruntime.__version__,
        "nncf": nncf.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _ratio(r: Result, base: Result, b: int) -> str:
    per_rep = [x / y for x, y in zip(base.ms[b], r.ms[b], strict=True)]
    ratio = base.median_ms(b) / r.median_ms(b)
    return f"{ratio:.2f}× ({min(per_rep):.2f}–{max(per_rep):.2f})"


def _pt(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _delta(r: Result, base: Result, key: str) -> str:
    """Points gained (+) or lost (-) against the baseline, to 2 decimals."""
    a, b = r.metrics[key], base.metrics[key]
    return "n/a" if a is None or b is None else f"{100 * (a - b):+.2f}"


def section(
    name: str, results: dict[str, Result], batches: list[int], chosen: Result,
    meta: dict[str, Any], at: int,
) -> str:
    base = results[BASELINE]
    head = "| path | runs at |" + "".join(
        f" b{b} ms | b{b} img/s | b{b} ×ORT FP32 |" for b in batches
    )
    head += " mAP@0.5 | Δ pt | mAP@.5:.95 | AP_small | Δ pt | within tolerance |"
    lines = [f"## {name}", "", f"CPU: {meta['cpu']['model']} ({meta['cpu']['flags']}; OpenVINO "
             f"reports {meta['cpu']['openvino_capabilities']}), {meta['threads']} threads. "
             f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.", "",
             f"Run {meta['date']}: `{meta['command']}`, {meta['reps']} interleaved repetitions "
             f"of {meta['window_s']} s per path and batch size, path order rotated; ms = median "
             "over repetitions; ×ORT FP32 = ratio of the medians (min–max of the "
             "per-repetition ratios).", "",
             f"Val: {meta['val']}. Calibration (INT8): {meta['calibration']}.", "",
             head, "|" + "---|" * (head.count("|") - 1)]  # fmt: skip
    for r in results.values():
        m = r.metrics
        row = f"| {r.variant.label} | {r.precision} |"
        for b in batches:
            row += f" {r.median_ms(b):.1f} | {r.img_s(b):.1f} | {_ratio(r, base, b)} |"
        same = f" (= {results[r.variant.twin].variant.label})" if r.variant.twin else ""
        row += (
            f" {_pt(m['mAP@0.5'])} | {_delta(r, base, 'mAP@0.5')} | {_pt(m['mAP@0.5:0.95'])} |"
            f" {_pt(m['AP_small'])} | {_delta(r, base, 'AP_small')} |"
            f" {'yes' if eligible(r, base) else 'no'}{same} |"
        )
        lines.append(row)
    b = at
    cm = chosen.metrics
    lines += ["", f"**Choice: {chosen.variant.label}** (engine `{chosen.variant.engine}`, "
              f"runs at {chosen.precision}): {chosen.img_s(b):.1f} img/s at batch {b}, "
              f"{_ratio(chosen, base, b)} ORT FP32 in this run; val mAP@0.5 "
              f"{_pt(cm['mAP@0.5'])} ({_delta(chosen, base, 'mAP@0.5')} pt vs FP32), AP_small "
              f"{_pt(cm['AP_small'])} ({_delta(chosen, base, 'AP_small')} pt).",
              "", f"Rule: the highest img/s at batch {b} among paths whose val mAP@0.5 is within "
              "0.5 point of ORT FP32 and AP_small within 1 point.", "",
              "Server configuration for this choice:", "", "```yaml",
              f"engine: {chosen.variant.engine}",
              f"engine_options: {json.dumps(chosen.variant.options)}",
              f"# package used in this run: {meta['packages'][chosen.variant.key]}",
              "```", ""]  # fmt: skip
    if chosen.variant.twin:
        lines += ["Batches between the compiled sizes run padded up to the next one.", ""]
    if chosen.variant.package != base.variant.package:
        lines += [
            "That package is made by this run's quantization (see Calibration above); "
            "serve a package made the same way.",
            "",
        ]
    return "\n".join(lines)


def prepare_inputs(val_json: Path, pkg: Path, n: int) -> np.ndarray:
    coco = load_coco(val_json)
    man = load_package(pkg).manifest
    return np.stack([prepare(coco.read_rgb(i), man).tensor for i in coco.images[:n]])


def reusable(out: Path, src: Path, calib: int, quantizer: Any) -> bool:
    """A quantized package from an earlier run: newer than its source model and the quantizer's
    code, and calibrated on as many images."""
    manifest = out / "manifest.yaml"
    if not manifest.is_file():
        return False
    made = manifest.stat().st_mtime
    code = Path(sys.modules[quantizer.__module__].__file__ or "")
    newer = made > load_package(src).model_path.stat().st_mtime and made > code.stat().st_mtime
    meta = load_package(out).manifest.metadata.get("calibration", {})
    return newer and isinstance(meta, dict) and meta.get("images") == calib


def run_package(pkg: Path, args: argparse.Namespace, started: float) -> tuple[str, dict[str, Any]]:
    man = load_package(pkg).manifest
    name = f"{man.name}@{man.input_width}"
    work = Path(args.work) / f"{man.name}_{man.input_width}"
    val_json = work / "data" / "val" / "annotations.json"
    if not (args.reuse and val_json.is_file() and len(load_coco(val_json).images) == args.val):
        val_json = write_coco(work / "data", "val", args.val)
    log(f"{name}: {args.val} val scenes written", started)
    source = CalibrationSource("synthetic", args.calib)
    ort_int8, ov_int8 = work / "ort_int8", work / "ov_int8"
    if not (args.reuse and reusable(ort_int8, pkg, args.calib, quantize_int8)):
        quantize_int8(pkg, ort_int8, source, "minmax")
    log(f"{name}: ORT INT8 QDQ package ready", started)
    if not (args.reuse and reusable(ov_int8, pkg, args.calib, quantize_openvino)):
        quantize_openvino(pkg, ov_int8, source)
    log(f"{name}: OpenVINO NNCF INT8 package ready", started)
    batches = sorted(set(args.batches))
    vs = variants(pkg, ort_int8, ov_int8, args.threads, batches)
    engines = {v.key: create_engine(load_package(v.package), v.engine, v.options) for v in vs}
    results = {v.key: Result(v, engines[v.key].manifest.precision) for v in vs}
    for v in vs:
        if not v.twin:
            results[v.key].metrics = measure_accuracy(engines[v.key], val_json, man.classes)
            log(f"{name}: {v.label} val {results[v.key].metrics}", started)
    for v in vs:
        if v.twin:
            results[v.key].metrics = results[v.twin].metrics
    inputs = prepare_inputs(val_json, pkg, max(batches))
    measure_speed(engines, results, inputs, batches, args.reps, args.window)
    for e in engines.values():
        e.close()
    at = args.choose_at if args.choose_at in batches else max(batches)
    chosen = choose(results, at)
    for r in results.values():
        log(f"{name}: {r.variant.label}: " + ", ".join(
            f"b{b} {r.img_s(b):.1f} img/s {_ratio(r, results[BASELINE], b)}" for b in batches),
            started)  # fmt: skip
    log(f"{name}: choice {chosen.variant.label}", started)
    meta = {
        "cpu": cpu_facts(), "versions": versions(), "threads": args.threads, "reps": args.reps,
        "window_s": args.window, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join(["python", "benchmarks/openvino/run.py", *sys.argv[1:]]),
        "val": f"{args.val} synthetic val scenes (detserve.models.scenes val split, VAL_SIZES)",
        "calibration": json.dumps(source.describe()),
        "packages": {v.key: str(v.package) for v in vs},
    }  # fmt: skip
    data = {"model": name, "meta": meta, "choice": chosen.variant.key,
            "results": {k: {"variant": asdict(r.variant) | {"package": str(r.variant.package)},
                            "precision": r.precision, "ms": r.ms, "metrics": r.metrics}
                        for k, r in results.items()}}  # fmt: skip
    return section(name, results, batches, chosen, meta, at), data


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--package",
        action="append",
        default=None,
        help="fp32 package dir (repeatable); default models/packages/shapes_320",
    )
    p.add_argument("--val", type=int, default=200, help="val scenes for the accuracy check")
    p.add_argument("--calib", type=int, default=200, help="calibration scenes (100-500)")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16])
    p.add_argument("--choose-at", type=int, default=8,
                   help="batch size whose img/s picks the default (the server's max_batch_size)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=10, help="interleaved repetitions")
    p.add_argument("--window", type=float, default=0.5, help="seconds per timing window")
    p.add_argument(
        "--work",
        default="/tmp/detserve-openvino-bench",
        help="scratch dir: val scenes and the quantized packages",
    )
    p.add_argument(
        "--reuse",
        action="store_true",
        help="reuse INT8 packages in --work from an earlier run (same source, --calib)",
    )
    p.add_argument("--out", default=str(HERE / "RESULTS.md"))
    args = p.parse_args(argv)
    for name in ("val", "calib", "threads", "reps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if min(args.batches) < 1:
        p.error(f"--batches must be >= 1, got {args.batches}")
    if args.window <= 0:
        p.error(f"--window must be > 0, got {args.window}")
    return args


TITLE = (
    "# OpenVINO vs ONNX Runtime on the CPU: speed and accuracy per precision\n\n"
    "Written by `benchmarks/openvino/run.py` (see README.md), one section per model; a run "
    "replaces the sections of the models it measured. Do not edit by hand.\n"
)


def merge_sections(old: str, new: dict[str, str]) -> str:
    """`old` markdown with the `## <model>` sections in `new` replaced (or added), in order."""
    kept: dict[str, str] = {}
    for chunk in old.split("\n## ")[1:]:
        kept[chunk.split("\n", 1)[0].strip()] = "## " + chunk.rstrip() + "\n"
    kept.update(new)
    return TITLE + "\n" + "\n".join(kept[k] for k in sorted(kept))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    packages = [Path(p) for p in (args.package or [REPO / "models/packages/shapes_320"])]
    sections: dict[str, str] = {}
    data: dict[str, Any] = {}
    for pkg in packages:
        text, raw = run_package(pkg, args, started)
        sections[raw["model"]] = text
        data[raw["model"]] = raw
    out = Path(args.out)
    out.write_text(merge_sections(out.read_text() if out.is_file() else "", sections))
    js = out.with_name("results.json")
    old = json.loads(js.read_text()) if js.is_file() else {}
    js.write_text(json.dumps({**(old if isinstance(old, dict) else {}), **data}, indent=2) + "\n")
    log(f"wrote {out} and {js.name}", started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
