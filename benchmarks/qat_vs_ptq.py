"""QAT against PTQ on val, in one run: FP32, PTQ and QAT on ONNX Runtime INT8 and OpenVINO INT8.

Rows (all on the same val set through the server's path, `detserve.models.evaluate`):
- fp32: the fp32 package on ONNX Runtime (once);
- ORT INT8 PTQ: `quantize_int8` (= `detserve-model quantize PKG --int8 --n N`), made here;
- OpenVINO INT8 PTQ: `--ptq-openvino` (default: the served default shapes_320_int8, made by
  `detserve-model quantize PKG --int8 --engine openvino --n 200`);
- NNCF torch, step 0 (control, both engines): the QAT model before any fine-tune step, so the
  effect of NNCF's quantizer placement on the torch graph is told apart from the fine-tune's;
- QAT (both engines): `finetune` + `write_qat_package` (= `detserve-model quantize-qat PKG
  --engine E ...`); a finished fine-tune in WORK/finetune with the same settings is reused.
Writes OUT/results.json and OUT/report.md.

    .venv/bin/python benchmarks/qat_vs_ptq.py --steps 40 --warmup-steps 4 --lr 1e-4 \\
        --train-scenes 1200 --limit 300 --no-controls --wait-for-fine-tune

(the committed run, reusing the fine-tune of `detserve-model quantize-qat models/packages/shapes_320
--engine openvino --work-dir runs/qat_vs_ptq/finetune --steps 40 --warmup-steps 4 --lr 1e-4
--train-scenes 1200 --threads 1`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detserve.models.evaluate import evaluate_package
from detserve.models.qat import QatRun, finetune, quantize_torch, source_package
from detserve.models.qat_config import QatConfig
from detserve.models.qat_export import write_qat_package
from detserve.models.quantize import CalibrationSource, quantize_int8

# Within this many AP points of each other, two rows are read as the same (500 val scenes; this
# is a reading rule stated up front, not a significance test).
SAME_POINTS = 0.2
METRICS = ("mAP@0.5", "mAP@0.5:0.95", "AP_small@0.5:0.95", "AP_small@0.5", "AP_medium@0.5:0.95",
           "AP_large@0.5:0.95")  # fmt: skip


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    engine: str
    package: Path


def _args(argv: list[str] | None) -> argparse.Namespace:
    d = QatConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--package", type=Path, default=Path("models/packages/shapes_320"))
    p.add_argument("--ptq-openvino", type=Path, default=Path("models/packages/shapes_320_int8"))
    p.add_argument("--data", type=Path, default=Path("data/sets/val"))
    p.add_argument("--limit", type=int, default=None, help="first N val images")
    p.add_argument("--work", type=Path, default=Path("runs/qat_vs_ptq"))
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/qat"))
    p.add_argument("--n-calib", type=int, default=200)
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--train-scenes", type=int, default=d.train_scenes)
    p.add_argument("--threads", type=int, default=1, help="torch and engine threads")
    p.add_argument("--cache-dir", type=Path, default=Path("data/cache"))
    p.add_argument("--no-controls", action="store_true", help="skip the NNCF step-0 rows")
    p.add_argument("--wait-for-fine-tune", action="store_true",
                   help="an unfinished WORK/finetune checkpoint is another process's: wait for "
                        "it to finish instead of resuming it here")  # fmt: skip
    return p.parse_args(argv)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {"cpu": cpu, "logical_cpus": os.cpu_count(),
            "load_average_start": list(os.getloadavg())}  # fmt: skip


def versions() -> dict[str, str]:
    import nncf
    import onnxruntime
    import openvino
    import torch

    return {"torch": torch.__version__, "nncf": nncf.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__}


def _config(args: argparse.Namespace) -> QatConfig:
    return QatConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                     warmup_steps=args.warmup_steps, seed=args.seed,
                     train_scenes=args.train_scenes, threads=args.threads)  # fmt: skip


def build_ptq(args: argparse.Namespace, log: list[str]) -> list[Row]:
    """The rows that need no fine-tune: FP32, both PTQs, and (unless --no-controls) step 0."""
    work, source = args.work, CalibrationSource("synthetic", args.n_calib)
    package = source_package(args.package)
    rows = [Row("fp32", "FP32", "onnxruntime", args.package)]
    t = time.monotonic()
    ptq = quantize_int8(args.package, work / "ptq_onnxruntime", source)
    log.append(f"ORT PTQ made in {time.monotonic() - t:.0f} s")
    rows += [Row("ptq_ort", "PTQ (ORT quantize_static)", "onnxruntime", ptq.package),
             Row("ptq_ov", "PTQ (NNCF, served default)", "openvino", args.ptq_openvino)]
    if not args.no_controls:
        t = time.monotonic()
        cfg = _config(args)
        step0 = QatRun(quantize_torch(package, source, cfg.preset), package, cfg,
                       source.describe(), 0, [], 0.0, False, None)  # fmt: skip
        for engine, key in (("onnxruntime", "nncf0_ort"), ("openvino", "nncf0_ov")):
            out = write_qat_package(step0, work / f"nncf0_{engine}", engine).package
            rows.append(Row(key, "NNCF torch, step 0 (control)", engine, out))
        log.append(f"NNCF step-0 packages made in {time.monotonic() - t:.0f} s")
    return rows


def _wait_for(ck: Path, steps: int, log: list[str]) -> None:
    """Wait while another process (`detserve-model quantize-qat`) finishes the fine-tune."""
    import torch

    def done() -> bool:
        payload = torch.load(ck, map_location="cpu", weights_only=False) if ck.is_file() else {}
        return int(payload.get("step", 0)) >= steps

    t = time.monotonic()
    while not done():
        time.sleep(30)
    if time.monotonic() - t > 1:
        log.append(f"waited {time.monotonic() - t:.0f} s for the fine-tune in {ck.parent}")


def build_qat(args: argparse.Namespace, log: list[str]) -> tuple[list[Row], QatRun]:
    work, source = args.work, CalibrationSource("synthetic", args.n_calib)
    cfg, ck = _config(args), args.work / "finetune" / "qat_last.pt"
    if args.wait_for_fine_tune:
        _wait_for(ck, cfg.steps, log)
    run = finetune(args.package, cfg, source, work / "finetune", resume=ck.is_file(),
                   cache_dir=args.cache_dir, log=log.append)  # fmt: skip
    rows = []
    for engine, key in (("onnxruntime", "qat_ort"), ("openvino", "qat_ov")):
        out = write_qat_package(run, work / f"qat_{engine}", engine).package
        rows.append(Row(key, f"QAT ({run.steps} steps)", engine, out))
    return rows, run


def evaluate(row: Row, args: argparse.Namespace) -> dict[str, Any]:
    threads = ({"intra_op_threads": args.threads} if row.engine == "onnxruntime"
               else {"num_threads": args.threads})  # fmt: skip
    report = evaluate_package(row.package, args.data, row.engine, threads, limit=args.limit)
    m = report.metrics
    values = {"mAP@0.5": m.map50, "mAP@0.5:0.95": m.map,
              **{f"AP_{k}@0.5:0.95": v for k, v in m.ap_size.items()},
              **{f"AP_{k}@0.5": v for k, v in m.ap_size50.items()}}  # fmt: skip
    return {"key": row.key, "label": row.label, "engine": row.engine, "package": str(row.package),
            "metrics": {k: values.get(k) for k in METRICS}, "images": m.n_images,
            "objects": m.n_objects, "eval_seconds": round(report.seconds, 1)}  # fmt: skip


def _points(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else round((a - b) * 100, 2)


def verdicts(results: list[dict[str, Any]]) -> list[str]:
    """One sentence per engine: does QAT recover anything of PTQ's loss against FP32?"""
    by = {r["key"]: r["metrics"] for r in results}
    lines = []
    for engine, ptq, qat in (("ONNX Runtime INT8", "ptq_ort", "qat_ort"),
                             ("OpenVINO INT8", "ptq_ov", "qat_ov")):  # fmt: skip
        parts = []
        for metric in ("mAP@0.5", "mAP@0.5:0.95", "AP_small@0.5:0.95"):
            p, q = _points(by[ptq][metric], by["fp32"][metric]), _points(by[qat][metric],
                                                                           by["fp32"][metric])
            gain = _points(by[qat][metric], by[ptq][metric])
            parts.append(f"{metric} PTQ {p:+.2f}, QAT {q:+.2f} vs FP32 (QAT - PTQ {gain:+.2f})")
        gain_small = _points(by[qat]["AP_small@0.5:0.95"], by[ptq]["AP_small@0.5:0.95"]) or 0.0
        word = ("QAT recovers" if gain_small > SAME_POINTS else "QAT is worse than PTQ"
                if gain_small < -SAME_POINTS else "no difference beyond "
                f"{SAME_POINTS} point between QAT and PTQ")  # fmt: skip
        lines.append(f"{engine}: {word} on AP_small ({'; '.join(parts)}).")
        step0 = qat.replace("qat_", "nncf0_")
        if step0 in by:  # the same model before the fine-tune: what the steps themselves did
            d = _points(by[qat]["AP_small@0.5:0.95"], by[step0]["AP_small@0.5:0.95"]) or 0.0
            d50 = _points(by[qat]["mAP@0.5:0.95"], by[step0]["mAP@0.5:0.95"])
            lines.append(f"{engine}: the fine-tune itself, QAT against its own step 0 (NNCF "
                         f"placement, no steps): AP_small {d:+.2f}, mAP@0.5:0.95 {d50:+.2f} "
                         "points.")  # fmt: skip
    return lines


def report_md(doc: dict[str, Any]) -> str:
    head = "| row | engine | " + " | ".join(METRICS) + " | Δ AP_small vs FP32 (points) |"
    lines = ["# QAT against PTQ", "", f"Command: `{doc['command']}`", "",
             f"Machine: {doc['machine']['cpu']}, {doc['machine']['logical_cpus']} logical CPUs; "
             f"load average {doc['machine']['load_average_start'][0]:.2f} at the start, "
             f"{doc['machine']['load_average_end'][0]:.2f} at the end (shared host); "
             f"{doc['threads']} thread(s) for torch and the engines.", "",
             f"Val: {doc['results'][0]['images']} images, {doc['results'][0]['objects']} "
             f"objects ({doc['data']}).", "", head,
             "|" + "---|" * (len(METRICS) + 3)]  # fmt: skip
    fp32 = doc["results"][0]["metrics"]["AP_small@0.5:0.95"]
    for r in doc["results"]:
        vals = " | ".join("n/a" if r["metrics"][k] is None else f"{r['metrics'][k]:.4f}"
                          for k in METRICS)  # fmt: skip
        delta = _points(r["metrics"]["AP_small@0.5:0.95"], fp32)
        lines.append(f"| {r['label']} | {r['engine']} | {vals} | "
                     f"{'' if delta is None else f'{delta:+.2f}'} |")  # fmt: skip
    q = doc["qat"]
    lines += ["", f"QAT fine-tune: {q['steps']} steps of batch {q['batch_size']}, peak lr "
              f"{q['lr']:g} (warmup {q['warmup_steps']}, cosine to 0), seed {q['seed']}, "
              f"{q['train_scenes']} train-split scenes, {q['fine_tune_seconds']:.0f} s of "
              f"fine-tune loop ({'reused from ' + q['checkpoint'] if q['reused'] else 'run here'}"
              f"); loss {q['loss_first']:.4f} at the first step, mean of the last 50 "
              f"{q['loss_last_50_mean']:.4f}.", "", "## Reading", ""]  # fmt: skip
    lines += [f"- {v}" for v in doc["verdicts"]]
    lines += [f"- Rule: rows within {SAME_POINTS} point of each other are read as the same."]
    lines += ["", "## Log", ""] + [f"- {line}" for line in doc["log"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    import torch

    args = _args(argv)
    # Before any torch work (the step-0 calibration runs before the fine-tune sets it): with 2
    # torch threads on the loaded 2-core host it had not finished after 13 min, where
    # quantize-qat's 1-thread calibration took 2 min 43 s.
    torch.set_num_threads(args.threads)
    started = time.monotonic()
    doc: dict[str, Any] = {"command": " ".join([".venv/bin/python", *sys.argv]),
                           "machine": machine(), "versions": versions(),
                           "data": str(args.data), "threads": args.threads}  # fmt: skip
    log: list[str] = []
    results: list[dict[str, Any]] = []

    def measure(rows: list[Row]) -> None:
        for row in rows:
            results.append(evaluate(row, args))
            log.append(f"{row.key}: evaluated in {results[-1]['eval_seconds']} s")
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)

    measure(build_ptq(args, log))
    qat_rows, run = build_qat(args, log)
    measure(qat_rows)
    tail = run.losses[-50:]
    doc.update({"results": results, "verdicts": verdicts(results), "log": log,
                "qat": {**run.config.settings(), "steps": run.steps,
                        "fine_tune_seconds": round(run.seconds, 1), "reused": run.reused,
                        "checkpoint": str(run.checkpoint), "loss_first": run.losses[0],
                        "loss_last_50_mean": sum(tail) / len(tail)},
                "wall_seconds": round(time.monotonic() - started, 1)})  # fmt: skip
    doc["machine"]["load_average_end"] = list(os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (args.out / "report.md").write_text(report_md(doc))
    print(report_md(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
