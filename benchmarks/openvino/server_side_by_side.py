"""The server side by side: ORT FP32 against the serving default, same batching, one run.

    .venv/bin/python benchmarks/openvino/server_side_by_side.py

Issue 8, item 6. Two paths, each a detserve-server subprocess serving shapes@320:
- "ORT FP32": the fp32 package (builtin:shapes_320) on onnxruntime, `--threads` intra-op threads;
- "default": the default model of server/default.yaml as configured there (package, engine,
  engine options), i.e. OpenVINO INT8.
Both get the default model's batching settings from default.yaml. Per path and round:
1. saturation: closed loop at `--concurrency`; its throughput is the path's capacity;
2. open-loop Poisson arrivals at 70 % of that capacity; p99 from the scheduled send time.
Rounds alternate the order (ABBA...), so drift in the shared machine's load hits both alike.
Prints default / ORT FP32 at saturation; writes server_side_by_side.md and .json beside this file.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/_common.py

from _common import load_requests, serving
from run import cpu_facts, versions

from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.runner import LevelResult, LoadPlan, run_plan
from detserve.client.bench.server_proc import BatchSetting
from detserve.protos import detection_pb2 as pb
from detserve.server.config import ModelConfig, load_config

HERE = Path(__file__).resolve().parent
LOAD_FRACTION = 0.7


@dataclass(frozen=True)
class ServedPath:
    key: str
    label: str
    model: dict[str, Any]  # a detserve-server models[] entry (batching added by serving())


@dataclass
class Measured:
    path: str
    round: int
    saturation: LevelResult
    at70: LevelResult


def default_model() -> ModelConfig:
    return next(m for m in load_config(None, env={}).models if m.default)


def paths(args: argparse.Namespace, default: ModelConfig) -> list[ServedPath]:
    ort = {"package": str(args.fp32_package), "engine": "onnxruntime",
           "engine_options": {"intra_op_threads": args.threads}}  # fmt: skip
    new = {"package": str(default.package), "engine": default.engine,
           "engine_options": dict(default.engine_options)}  # fmt: skip
    label = f"default ({default.engine}, {default.package.name})"
    return [ServedPath("ort-fp32", "ORT FP32", ort), ServedPath("default", label, new)]


def batch_setting(default: ModelConfig) -> BatchSetting:
    b = default.batching
    return BatchSetting(b.max_batch_size, b.max_queue_delay_s * 1000.0, b.instances,
                        b.max_queue_size, tuple(b.preferred_batch_sizes))  # fmt: skip


async def measure(path: ServedPath, rnd: int, setting: BatchSetting,
                  requests: list[pb.DetectRequest], args: argparse.Namespace,
                  workdir: Path) -> Measured:  # fmt: skip
    settings = LoadSettings(warmup_s=args.warmup_s, duration_s=args.duration_s)
    name = f"{path.key}-r{rnd}"
    async with serving(path.model, setting, workdir, name) as target:
        sat = await run_plan(target, requests, LoadPlan("closed", (float(args.concurrency),),
                             settings), f"{name} saturation", False)  # fmt: skip
        rate = round(sat[0].summary.throughput_rps * LOAD_FRACTION, 2)
        at70 = await run_plan(target, requests, LoadPlan("open", (rate,), settings, "poisson"),
                              f"{name} poisson", False)  # fmt: skip
    m = Measured(path.key, rnd, sat[0], at70[0])
    s, p = m.saturation.summary, m.at70.summary
    print(f"round {rnd} {path.label}: saturation {s.throughput_rps:.1f} req/s (batch "
          f"{s.mean_batch_size:.2f}, p99 {s.latency.p99_ms:.1f} ms); Poisson at "
          f"{p.offered_rps:.1f} req/s: p50 {p.latency.p50_ms:.1f} p99 {p.latency.p99_ms:.1f} ms "
          f"(batch {p.mean_batch_size:.2f}, errors {p.errors or 'none'})", flush=True)
    return m


def _summary(level: LevelResult) -> dict[str, Any]:
    s = level.summary
    return {"throughput_rps": s.throughput_rps, "offered_rps": s.offered_rps, "ok": s.ok,
            "errors": s.errors, "mean_batch_size": s.mean_batch_size,
            "latency_ms": {"p50": s.latency.p50_ms, "p99": s.latency.p99_ms,
                           "p999": s.latency.p999_ms, "mean": s.latency.mean_ms},
            "server_ms": s.server_ms, "client_saturated": s.client_saturated,
            "saturation_reason": s.saturation_reason}  # fmt: skip


def ratios(results: list[Measured]) -> tuple[list[float], float]:
    """Per-round default / ORT FP32 capacity, and the ratio of the median capacities."""
    by = {(m.path, m.round): m.saturation.summary.throughput_rps for m in results}
    rounds = sorted({m.round for m in results})
    per_round = [by[("default", r)] / by[("ort-fp32", r)] for r in rounds]
    med = {k: statistics.median(by[(k, r)] for r in rounds) for k in ("default", "ort-fp32")}
    return per_round, med["default"] / med["ort-fp32"]


def _errors(level: dict[str, Any]) -> int:
    return sum(level["errors"].values())


def markdown(doc: dict[str, Any]) -> str:
    cpu, cfg = doc["cpu"], doc["config"]
    lines = [
        "# The server side by side: ORT FP32 vs the serving default (shapes@320)", "",
        f"Written by `benchmarks/openvino/server_side_by_side.py`; run {doc['created_utc']}: "
        f"`{' '.join(doc['command'])}`.", "",
        f"CPU: {cpu['model']} ({cpu['flags']}; OpenVINO reports {cpu['openvino_capabilities']}),"
        f" {cfg['cpus']} logical CPUs shared by the server and the load generator (and other "
        f"jobs on this machine). Versions: "
        + ", ".join(f"{k} {v}" for k, v in doc["versions"].items()) + ".", "",
        "Batching (server/default.yaml's default model, both paths): "
        f"`{json.dumps(cfg['batching'])}`."
        f" Inputs: {cfg['inputs']['count']} synthetic {cfg['inputs']['width']}x"
        f"{cfg['inputs']['height']} JPEG images, decoded and letterboxed by the server.", "",
        "| path | engine | engine options |", "|---|---|---|",
    ]  # fmt: skip
    for p in cfg["paths"]:
        lines.append(f"| {p['label']} | {p['model']['engine']} | "
                     f"`{json.dumps(p['model']['engine_options'])}` |")  # fmt: skip
    lines += [
        "", f"Per round and path: saturation = closed loop, {cfg['concurrency']} requests in "
        f"flight, {cfg['warmup_s']:g} s warm-up + {cfg['duration_s']:g} s; then open-loop "
        f"Poisson arrivals at {LOAD_FRACTION:.0%} of that path's own saturation throughput, "
        "latency from the scheduled send time. Rounds alternate the order.", "",
        "| round | path | saturation req/s | batch | p99 ms | 70 % load req/s | p50 ms | p99 ms "
        "| batch | errors |", "|---|---|---|---|---|---|---|---|---|---|",
    ]  # fmt: skip
    for r in doc["results"]:
        s, p = r["saturation"], r["at70"]
        flag = " (client saturated)" if s["client_saturated"] or p["client_saturated"] else ""
        lines.append(
            f"| {r['round']} | {r['label']}{flag} | {s['throughput_rps']:.1f} | "
            f"{s['mean_batch_size']:.2f} | {s['latency_ms']['p99']:.1f} | {p['offered_rps']:.1f} | "
            f"{p['latency_ms']['p50']:.1f} | {p['latency_ms']['p99']:.1f} | "
            f"{p['mean_batch_size']:.2f} | {_errors(s) + _errors(p)} |"
        )
    rt = doc["ratio"]
    lines += ["", f"**Default ÷ ORT FP32 at saturation: {rt['of_medians']:.2f}×** (ratio of the "
              "median capacities over the rounds; per round: "
              + ", ".join(f"{x:.2f}×" for x in rt["per_round"]) + ").", ""]  # fmt: skip
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> None:
    default = default_model()
    setting = batch_setting(default)
    _, requests, inputs_json, _ = load_requests(args)
    chosen = paths(args, default)
    results: list[Measured] = []
    with tempfile.TemporaryDirectory(prefix="detserve-side-by-side-") as tmp:
        for rnd in range(1, args.rounds + 1):
            order = chosen if rnd % 2 else list(reversed(chosen))
            for path in order:
                results.append(await measure(path, rnd, setting, requests, args, Path(tmp)))
    per_round, of_medians = ratios(results)
    print(f"default / ORT FP32 at saturation: {of_medians:.2f}x (per round: "
          + ", ".join(f"{x:.2f}x" for x in per_round) + ")", flush=True)
    labels = {p.key: p.label for p in chosen}
    doc = {
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": ["python", *sys.argv], "cpu": cpu_facts(), "versions": versions(),
        "config": {"batching": setting.to_yaml(), "concurrency": args.concurrency,
                   "warmup_s": args.warmup_s, "duration_s": args.duration_s,
                   "rounds": args.rounds, "cpus": os.cpu_count(),
                   "inputs": inputs_json,
                   "paths": [{"key": p.key, "label": p.label, "model": p.model} for p in chosen]},
        "results": [{"round": m.round, "path": m.path, "label": labels[m.path],
                     "saturation": _summary(m.saturation), "at70": _summary(m.at70)}
                    for m in results],
        "ratio": {"per_round": per_round, "of_medians": of_medians},
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "server_side_by_side.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "server_side_by_side.md").write_text(markdown(doc))
    print(f"wrote {args.out / 'server_side_by_side.md'} and .json")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fp32-package", type=Path,
                   default=HERE.parents[1] / "models" / "packages" / "shapes_320")
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads (the baseline)")
    p.add_argument("--rounds", type=int, default=2, help="alternations of the two paths")
    p.add_argument("--concurrency", type=int, default=32, help="closed-loop requests in flight")
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--duration-s", type=float, default=12.0, help="measurement per load level")
    p.add_argument("--input-count", type=int, default=32, help="distinct synthetic images")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args()
    for name in ("rounds", "concurrency", "threads", "input_count"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
