"""Distillation at a short CPU budget: a --width-mult 0.5 student trained with and without
`--teacher` (the same steps, seed, pool and batches), against the teacher, in one run.

    .venv/bin/python benchmarks/distill.py --out benchmarks/results/distill

1. Renders the training pool once (data/cache, the pool `detserve-model train` reads).
2. Runs `detserve-model train` twice, the two arms at once (one torch thread each): the labels
   alone, and the labels plus `--teacher models/packages/shapes_320`.
3. Packages each student's last.pt (`write_package`: ONNX with parity check, multi-label host
   NMS like the teacher's package) and evaluates teacher and students with `evaluate_package`
   on data/sets/val (what `detserve-model eval` runs: the server's engine and decoder, ORT).
4. Times the served compute path (ORT FP32 `engine.infer` + `decode_batch`) at batch 1 and 8,
   the three packages in interleaved rounds so a change in the shared machine's load hits all.

Writes results.json and report.md into --out, with the machine and this command.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TEACHER = "models/packages/shapes_320"
VAL_SET = "data/sets/val"
CACHE = "data/cache"
MAX_SIDE = 416  # the trainer's --max-side default
BATCH = 16
QUICK_VAL = 50  # scenes for the trainer's own end-of-run quick eval (history.jsonl only)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def _train_command(args: argparse.Namespace, arm: str) -> list[str]:
    per_epoch = args.train_scenes // BATCH
    cmd = [str(Path(sys.executable).with_name("detserve-model")), "train",
           "--out-dir", str(args.work / arm), "--width-mult", str(args.width_mult),
           "--epochs", str(args.steps // per_epoch), "--train-scenes", str(args.train_scenes),
           "--val-scenes", str(QUICK_VAL), "--eval-every", str(args.steps // per_epoch),
           "--warmup-steps", str(args.warmup_steps), "--threads", "1", "--seed", str(args.seed),
           "--save-every", "100000",
           "--cache-dir", CACHE]
    if arm == "distilled":
        cmd += ["--teacher", args.teacher, "--distill-weight", str(args.distill_weight),
                "--distill-box-weight", str(args.distill_box_weight),
                "--distill-temperature", str(args.distill_temperature)]
    return cmd


def _train_arms(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Both arms at once; returns each one's command, wall time and last history record."""
    from detserve.models.scenes import TRAIN_SIZES, VAL_SIZES
    from detserve.models.train_data import render_pool

    # Rendered here first: two trainers rendering the same missing pool would race on its file.
    render_pool("train", args.train_scenes, TRAIN_SIZES, MAX_SIDE, Path(CACHE), False)
    render_pool("val", QUICK_VAL, VAL_SIZES, None, Path(CACHE), False)
    procs: dict[str, tuple[subprocess.Popen[bytes], float, list[str]]] = {}
    for arm in ("baseline", "distilled"):
        out = args.work / arm
        out.mkdir(parents=True, exist_ok=True)
        for stale in ("last.pt", "history.jsonl"):  # a fresh run, never a resumed one
            (out / stale).unlink(missing_ok=True)
        cmd = _train_command(args, arm)
        log = (args.work / f"{arm}.log").open("wb")
        procs[arm] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT),
                      time.monotonic(), cmd)
    arms: dict[str, dict[str, Any]] = {}
    for arm, (proc, started, cmd) in procs.items():
        if proc.wait():
            tail = (args.work / f"{arm}.log").read_text()[-2000:]
            raise RuntimeError(f"training {arm} failed ({proc.returncode}):\n{tail}")
        history = (args.work / arm / "history.jsonl").read_text().strip().splitlines()
        arms[arm] = {"command": shlex.join(["detserve-model", *cmd[1:]]),
                     "wall_s": round(time.monotonic() - started, 1),
                     "last_epoch": json.loads(history[-1])}
    return arms


def _package(args: argparse.Namespace, arm: str, command: str) -> Path:
    from detserve.models.package import TrainingFacts, machine_description, write_package
    from detserve.models.scenes import CLASSES

    data = (f"train: split_seeds('train', {args.train_scenes}), max side {MAX_SIDE}; "
            f"val: {VAL_SET}")
    facts = TrainingFacts(command, data, machine_description())
    root: Path = args.work / f"pkg_{arm}"
    write_package(args.work / arm / "last.pt", root, 320, CLASSES, facts, name=f"shapes-{arm}",
                  multi_label=True)
    return root


def _evaluate(package: Path, limit: int | None) -> dict[str, Any]:
    from detserve.models.evaluate import evaluate_package

    report = evaluate_package(package, VAL_SET, "onnxruntime", {"intra_op_threads": 1}, limit)
    m = report.metrics
    return {"mAP@0.5": round(m.map50, 4), "mAP@0.5:0.95": round(m.map, 4),
            "AP_small@0.5:0.95": m.ap_size.get("small"), "images": m.n_images,
            "eval_s": round(report.seconds, 1)}


def _model_facts(package: Path) -> dict[str, Any]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from detserve.models.detector import count_parameters, load_checkpoint

    model, cfg = load_checkpoint(package / "model.pt")
    params = count_parameters(model)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.float().fuse()(torch.zeros(1, 3, 320, 320))
    return {"width_mult": cfg.width_mult, "parameters": params,
            "gflops": round(counter.get_total_flops() / 1e9, 3)}


def _speed(packages: dict[str, Path], threads: int, rounds: int, seconds: float
           ) -> dict[str, dict[str, float]]:
    """Median ms per image of ORT infer + the served decode, per package and batch size."""
    from detserve.engines.base import DecodeParams, Letterbox
    from detserve.engines.decode import decode_batch
    from detserve.engines.manifest import load_package
    from detserve.engines.ort import OrtEngine
    from detserve.models.scenes import render_scene, split_seeds

    images = [render_scene(s, 320, 320).image for s in split_seeds("val", 8)]
    x8 = (np.stack([im.transpose(2, 0, 1) for im in images]) / 255).astype(np.float32)
    engines = {k: OrtEngine(load_package(p), intra_op_threads=threads)
               for k, p in packages.items()}
    times: dict[tuple[str, int], list[float]] = {(k, b): [] for k in engines for b in (1, 8)}
    for _ in range(rounds):
        for name, engine in engines.items():
            m = engine.manifest
            p = m.postprocess
            for b in (1, 8):
                params = [DecodeParams(p.score_threshold, p.iou_threshold, p.max_detections,
                                       None)] * b
                boxes = [Letterbox(1.0, 1.0, 0.0, 0.0, m.input_width, m.input_height)] * b
                decode_batch(engine.infer(x8[:b]), m, boxes, params)  # warm-up
                start = time.monotonic()
                while time.monotonic() - start < seconds:
                    t0 = time.perf_counter()
                    decode_batch(engine.infer(x8[:b]), m, boxes, params)
                    times[(name, b)].append((time.perf_counter() - t0) * 1e3 / b)
    for engine in engines.values():
        engine.close()
    return {name: {f"ms_per_image_b{b}": round(float(np.median(times[(name, b)])), 2)
                   for b in (1, 8)} | {f"runs_b{b}": len(times[(name, b)]) for b in (1, 8)}
            for name in engines}


def _verdict(rows: dict[str, dict[str, Any]], margin: float) -> str:
    base, dist = rows["baseline"], rows["distilled"]
    deltas = {k: (dist[k] - base[k]) * 100 for k in ("mAP@0.5", "mAP@0.5:0.95")}
    small = (dist["AP_small@0.5:0.95"] or 0.0) - (base["AP_small@0.5:0.95"] or 0.0)
    deltas["AP_small@0.5:0.95"] = small * 100
    text = ", ".join(f"{k} {v:+.1f}" for k, v in deltas.items())
    if deltas["mAP@0.5:0.95"] >= margin and deltas["mAP@0.5"] >= 0:
        word = "helped"
    elif deltas["mAP@0.5:0.95"] <= -margin:
        word = "hurt"
    else:
        word = "made no clear difference"
    return (f"Distillation {word} at this budget: distilled minus labels-only student, in "
            f"points: {text} (one seed; a difference under {margin:g} point of mAP@0.5:0.95 "
            f"is not counted as an effect).")


def _report(doc: dict[str, Any]) -> str:
    head = ("| model | width | params | GFLOPs | mAP@0.5 | mAP@0.5:0.95 | AP_small@0.5:0.95 | "
            "ORT ms/img b1 | ORT ms/img b8 | train wall s |\n|---|---|---|---|---|---|---|---|"
            "---|---|\n")
    lines = []
    for name, r in doc["rows"].items():
        small = r["AP_small@0.5:0.95"]
        lines.append(
            f"| {name} | {r['width_mult']} | {r['parameters'] / 1e6:.2f} M | {r['gflops']:.2f} "
            f"| {r['mAP@0.5']:.3f} | {r['mAP@0.5:0.95']:.3f} | "
            f"{'n/a' if small is None else f'{small:.3f}'} | {r['ms_per_image_b1']:.1f} | "
            f"{r['ms_per_image_b8']:.1f} | {r.get('train_wall_s', '—')} |")
    cmds = "\n".join(f"- {arm}: `{a['command']}`" for arm, a in doc["arms"].items())
    return (f"# Distillation\n\nMachine: {doc['machine']}; load average "
            f"{doc['loadavg_start'][0]:.2f} at the start, {doc['loadavg_end'][0]:.2f} at the "
            f"end (other jobs shared the cores).\n\n`{doc['command']}`\n\n"
            f"{doc['steps']} steps of batch {BATCH} per student on "
            f"{doc['train_scenes']} pool scenes, seed {doc['seed']}; val: {VAL_SET} "
            f"({doc['rows']['teacher']['images']} images, `evaluate_package`, ONNX Runtime). "
            f"Speed: ORT FP32 infer + served decode, {doc['speed_threads']} intra-op thread(s), "
            f"median over {doc['speed_rounds']} interleaved rounds.\n\n{head}"
            + "\n".join(lines) + f"\n\n**{doc['verdict']}**\n\nTraining commands (run at once, "
            f"one torch thread each):\n\n{cmds}\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/distill"))
    p.add_argument("--work", type=Path, default=Path("runs/distill"))
    p.add_argument("--teacher", default=TEACHER)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup-steps", type=int, default=50)
    p.add_argument("--train-scenes", type=int, default=1600)
    p.add_argument("--width-mult", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--distill-weight", type=float, default=1.0)
    p.add_argument("--distill-box-weight", type=float, default=1.0)
    p.add_argument("--distill-temperature", type=float, default=1.0)
    p.add_argument("--eval-limit", type=int, default=None, help="first N val images only")
    p.add_argument("--speed-threads", type=int, default=1)
    p.add_argument("--speed-rounds", type=int, default=3)
    p.add_argument("--speed-seconds", type=float, default=2.0, help="per batch size per round")
    p.add_argument("--margin", type=float, default=0.5,
                   help="mAP@0.5:0.95 points below which a difference is not called an effect")
    p.add_argument("--skip-train", action="store_true",
                   help="reuse WORK's trained arms (WORK/arms.json) and only measure")
    args = p.parse_args()
    per_epoch = args.train_scenes // BATCH
    if args.steps % per_epoch:
        p.error(f"--steps must be a multiple of train_scenes // {BATCH} = {per_epoch}")
    started, load_start = time.time(), os.getloadavg()
    saved = args.work / "arms.json"
    if args.skip_train:  # a rerun of the measuring steps after a failure past training
        arms = json.loads(saved.read_text())
    else:
        arms = _train_arms(args)
        saved.write_text(json.dumps(arms, indent=2) + "\n")
    packages = {"teacher": Path(args.teacher)}
    packages |= {arm: _package(args, arm, a["command"]) for arm, a in arms.items()}
    rows: dict[str, dict[str, Any]] = {}
    for name, pkg in packages.items():
        rows[name] = {**_model_facts(pkg), **_evaluate(pkg, args.eval_limit)}
        if name in arms:
            rows[name]["train_wall_s"] = arms[name]["wall_s"]
        print(json.dumps({name: rows[name]}), flush=True)
    for name, speed in _speed(packages, args.speed_threads, args.speed_rounds,
                              args.speed_seconds).items():
        rows[name].update(speed)
    doc: dict[str, Any] = {
        "machine": f"{_cpu_model()}, {os.cpu_count()} logical CPUs, shared",
        "command": shlex.join([".venv/bin/python", *sys.argv]), "started_unix": int(started),
        "wall_s": round(time.time() - started, 1), "loadavg_start": load_start,
        "loadavg_end": os.getloadavg(), "steps": args.steps, "batch_size": BATCH,
        "train_scenes": args.train_scenes, "seed": args.seed, "teacher": args.teacher,
        "speed_threads": args.speed_threads, "speed_rounds": args.speed_rounds,
        "skip_train": args.skip_train,
        "arms": arms, "rows": rows, "verdict": _verdict(rows, args.margin)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    report = _report(doc)
    (args.out / "report.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
