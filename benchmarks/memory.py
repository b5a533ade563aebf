"""Memory budget: the engine's memory per input side (320, 640, 1280) and batch size (1/2/4/8),
whether 2x the side costs about 4x, and the served server's RSS.

    .venv/bin/python benchmarks/memory.py --out benchmarks/results/memory

1. Packages. 320 and 640 are the committed ones (FP32 ONNX `shapes_320` / `shapes_640`, the
   served OpenVINO INT8 IRs `shapes_320_int8` / `shapes_640_int8`). 1280 is made here, into
   --work, from the same weights (models/packages/shapes_320/model.pt, the float16 checkpoint
   the 320 and 640 packages were exported from): `detserve-model package --input-size 1280`,
   then `detserve-model quantize --int8 --engine openvino --n N` (the calibration count does
   not change an IR's memory, only its scales).
2. Engines, one subprocess per (engine, side, batch), so no allocator state carries over: RSS
   once the runtime is imported (base), once the engine is built and the float32 input batch
   allocated (loaded), and VmHWM over --runs inference runs, reset just before them (peak).
   Activation memory = peak − loaded. ONNX Runtime FP32 (the FP32 variants' engine) and OpenVINO
   INT8 with the served default's threads and precision, one dynamic-batch compiled model (so
   each batch's memory is allocated when it runs, not at load).
3. As served: OpenVINO INT8 with the served default's engine options (batch sizes 1/2/4/8
   compiled, pixel input), RSS after load per side: what a server holds before any request.
4. Server: each OpenVINO variant of server/default.yaml (shapes@320, shapes@640) in its own
   server subprocess: RSS when SERVING, peak (VmRSS every 50 ms) under a closed loop of
   --concurrency callers for --server-duration-s, 640x480 JPEGs.

Writes results.json, report.md and memory.png into --out (--report-only: the last two again,
from results.json).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from _common import PACKAGES, default_weights_at, model_cli, server_process

from detserve.client.bench import hostload
from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.memory_budget import EngineMemory, side_verdicts
from detserve.client.bench.procstat import MB, RssSampler, read_rss_bytes
from detserve.client.bench.resultsdoc import host_info, versions
from detserve.client.bench.runner import LoadPlan, run_plan
from detserve.client.bench.server_proc import BatchSetting
from detserve.client.bench.sweep import resolve_package

SIDES = (320, 640, 1280)
BATCHES = (1, 2, 4, 8)
OV_OPTIONS = {"num_threads": 2, "num_streams": 1, "performance_hint": "LATENCY",
              "precision": "int8"}
SERVED_OPTIONS = {**OV_OPTIONS, "static_batch_sizes": [1, 2, 4, 8], "pixel_input": True}
ENGINES = {"onnxruntime fp32": ("onnxruntime", {}, "shapes_{side}"),
           "openvino int8": ("openvino", OV_OPTIONS, "shapes_{side}_int8")}


# ---- child: one engine process -------------------------------------------------------------

def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / MB
    raise RuntimeError(f"/proc/self/status has no {key}")


def _rss_mb() -> float:
    gc.collect()
    return _status_mb("VmRSS")


def _peak_during(run: Any) -> float:
    """VmHWM over `run()`, reset to the current RSS first (/proc/self/clear_refs 5); where
    that is not allowed, the max of VmRSS sampled every 2 ms."""
    import os

    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        with RssSampler(os.getpid(), interval_s=0.002) as sampler:
            run()
        peak = sampler.stats().peak_mb
        if peak is None:
            raise RuntimeError("cannot read this process's RSS") from None
        return peak
    run()
    return _status_mb("VmHWM")


def child(cfg: dict[str, Any]) -> dict[str, Any]:
    import importlib

    import numpy as np

    from detserve.engines.factory import create_engine
    from detserve.engines.manifest import load_package

    importlib.import_module(cfg["engine"])  # the runtime's libraries count as base
    pkg = load_package(cfg["package"])
    base = _rss_mb()
    engine = create_engine(pkg, cfg["engine"], cfg["options"])
    side, batch = pkg.manifest.input_width, int(cfg["batch"])
    x = np.random.default_rng(0).random((batch, 3, side, side), dtype=np.float32)
    loaded = _rss_mb()
    out = {"side": side, "batch": batch, "base_mb": base, "loaded_mb": loaded,
           "input_mb": x.nbytes / MB}
    if cfg.get("runs", 0) > 0:
        out["peak_mb"] = _peak_during(lambda: [engine.infer(x) for _ in range(cfg["runs"])])
    engine.close()
    return out


# ---- parent ----------------------------------------------------------------------------------

def _run_child(cfg: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)],
                          capture_output=True, text=True, timeout=timeout_s, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {cfg} failed:\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def make_1280(work: Path, calib_n: int) -> dict[str, str]:
    """The 1280 packages from the committed weights (made once; kept in `work`)."""
    fp32 = default_weights_at(1280, work / "shapes_1280", "benchmarks/memory.py")
    int8 = work / "shapes_1280_int8"
    if not (int8 / "manifest.yaml").is_file():
        model_cli("quantize", str(fp32), "--int8", "--engine", "openvino", "--n", str(calib_n),
                  "--out", str(int8))
    return {"shapes_1280": str(fp32), "shapes_1280_int8": str(int8)}


def package_path(template: str, side: int, made: dict[str, str]) -> str:
    name = template.format(side=side)
    return made.get(name, str(PACKAGES / name))


def measure_engines(args: argparse.Namespace, made: dict[str, str]) -> list[EngineMemory]:
    rows = []
    for label, (kind, options, template) in ENGINES.items():
        for side in args.sides:
            for batch in args.batches:
                cfg = {"engine": kind, "options": options, "batch": batch, "runs": args.runs,
                       "package": package_path(template, side, made)}
                r = _run_child(cfg, args.child_timeout_s)
                rows.append(EngineMemory(label, r["side"], batch, r["base_mb"], r["loaded_mb"],
                                         r["peak_mb"], r["input_mb"]))
                m = rows[-1]
                print(f"{label} {side} batch {batch}: loaded {m.loaded_mb:.1f} MB, peak "
                      f"{m.peak_mb:.1f} MB, activation {m.activation_mb:.1f} MB", flush=True)
    return rows


def measure_as_served(args: argparse.Namespace, made: dict[str, str]) -> list[dict[str, Any]]:
    out = []
    for side in args.sides:
        cfg = {"engine": "openvino", "options": SERVED_OPTIONS, "batch": 1, "runs": 0,
               "package": package_path("shapes_{side}_int8", side, made)}
        r = _run_child(cfg, args.child_timeout_s)
        out.append({"side": side, "base_mb": r["base_mb"], "loaded_mb": r["loaded_mb"],
                    "model_mb": r["loaded_mb"] - r["base_mb"] - r["input_mb"],
                    "options": SERVED_OPTIONS})
        print(f"as served {side}: loaded {r['loaded_mb']:.1f} MB", flush=True)
    return out


def served_variants() -> list[tuple[dict[str, Any], BatchSetting, str]]:
    """The OpenVINO entries of server/default.yaml (the two served resolutions)."""
    from detserve.client.bench.served import default_config_path

    raw = yaml.safe_load(default_config_path().read_text())
    out = []
    for entry in raw["models"]:
        if entry.get("engine") != "openvino":
            continue
        model = {k: entry[k] for k in ("package", "name", "variant", "engine", "engine_options")
                 if k in entry}
        model["package"] = str(resolve_package(str(model["package"]), Path.cwd()))
        out.append((model, BatchSetting.from_yaml(entry["batching"]),
                    f"{entry['name']}@{entry['variant']}"))
    return out


async def measure_servers(args: argparse.Namespace) -> list[dict[str, Any]]:
    spec = InputSpec("synthetic", 32, 640, 480, "jpeg")
    requests = build_requests(load_inputs(spec).images)
    settings = LoadSettings(warmup_s=2.0, duration_s=args.server_duration_s)
    out = []
    for model, setting, label in served_variants():
        async with server_process(model, setting, args.out, label.replace("@", "_")) as proc:
            if proc.proc is None:
                raise RuntimeError("the server process did not start")
            serving = read_rss_bytes(proc.proc.pid)
            plan = LoadPlan("closed", (float(args.concurrency),), settings)
            with RssSampler(proc.proc.pid) as rss:
                (level,) = await run_plan(proc.target, requests, plan, label, False)
            stats = rss.stats()
        out.append({"model": label, "package": Path(model["package"]).name,
                    "serving_mb": None if serving is None else serving / MB,
                    "peak_mb": stats.peak_mb, "after_mb": stats.after_mb,
                    "concurrency": args.concurrency, "duration_s": args.server_duration_s,
                    "throughput_rps": level.summary.throughput_rps,
                    "inputs": spec.to_json()})
        print(f"server {label}: {out[-1]['serving_mb']:.1f} MB serving, peak "
              f"{stats.peak_mb:.1f} MB under load ({level.summary.throughput_rps:.1f} req/s)",
              flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/memory"))
    p.add_argument("--work", type=Path, default=Path("data/memory"),
                   help="where the 1280 packages are made (once)")
    p.add_argument("--sides", type=int, nargs="+", default=list(SIDES))
    p.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    p.add_argument("--runs", type=int, default=3, help="inference runs per measurement")
    p.add_argument("--calib-n", type=int, default=50, help="calibration images, 1280 INT8")
    p.add_argument("--concurrency", type=int, default=8, help="server load: closed-loop callers")
    p.add_argument("--server-duration-s", type=float, default=20.0)
    p.add_argument("--child-timeout-s", type=float, default=600.0)
    p.add_argument("--skip-servers", action="store_true", help="engines only")
    p.add_argument("--report-only", action="store_true",
                   help="write report.md and memory.png again from --out/results.json")
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(child(json.loads(args.child))))
        return
    from memory_report import write_memory_report

    if args.report_only:
        saved = json.loads((args.out / "results.json").read_text())
        print(f"wrote {write_memory_report(saved, args.out)}")
        return

    start = hostload.snapshot()
    made = make_1280(args.work, args.calib_n) if 1280 in args.sides else {}
    doc: dict[str, Any] = {"tool": "detserve-memory", "command": sys.argv,
                           "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                           "versions": versions(),
                           "host": host_info(), "packages": made,
                           "engine_options": {k: v[1] for k, v in ENGINES.items()}}
    rows = measure_engines(args, made)
    doc["engines"] = [r.to_json() for r in rows]
    doc["side_verdicts"] = [{"engine": v.engine, "small": v.small, "large": v.large,
                             "ratios": list(v.ratios), "mean": v.mean}
                            for v in side_verdicts(rows)]
    doc["as_served"] = measure_as_served(args, made)
    doc["servers"] = [] if args.skip_servers else asyncio.run(measure_servers(args))
    doc["host_load"] = hostload.between(start, hostload.snapshot())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out / 'results.json'} and {write_memory_report(doc, args.out)}")


if __name__ == "__main__":
    main()
