"""Issue-2 ratio: server throughput / raw engine throughput at the same batch size, both
measured in this one run on the same inputs, on the served default configuration (its engine,
engine options and batching; --batch-size defaults to its max_batch_size).

    .venv/bin/python benchmarks/engine_ratio.py --batch-size 8 --out benchmarks/results/engine_ratio

Raw engine: decode + letterbox + infer + decode/NMS in a loop, no server ("pipeline"), and
engine.infer alone ("infer only"), with the process CPU it used per image. Server: a
detserve-server subprocess with max_batch_size = --batch-size, driven by a closed-loop ladder;
its best throughput is the numerator. Each level records the server's CPU per request by role
(client/bench/proccpu.py), and the end states the CPU bound: with every core busy on the
measured work per request, the most the server could reach as a share of inference alone.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from _common import (
    add_batching_flags,
    base_parser,
    batch_setting,
    load_requests,
    measure_level,
    model_entry,
    new_doc,
    role_of,
    save,
    server_process,
)

from detserve.client.bench.baseline import RawResult, raw_engine_baseline
from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.resultsdoc import setting_entry
from detserve.client.bench.runner import LevelResult, LoadPlan, describe


async def run(args: Any) -> None:
    _, requests, inputs_json, inputs = load_requests(args)
    model = model_entry(args)
    setting = batch_setting(args)
    b = setting.max_batch_size
    doc = new_doc(args, inputs_json, {"batch_size": b, "setting": setting.to_yaml()})
    (raw,) = raw_engine_baseline(model["package"], inputs.images, [b], args.raw_duration_s,
                                 model["engine"], model["engine_options"])
    doc["raw_engine"] = [raw.to_json()]
    print(f"raw engine, batch {raw.batch_size}: pipeline {raw.pipeline_images_per_s:.1f} img/s,"
          f" infer only {raw.infer_images_per_s:.1f} img/s "
          f"({raw.infer_cpu_us_per_image:.0f} µs of CPU per image)", flush=True)
    settings = LoadSettings(warmup_s=args.warmup_s, duration_s=args.duration_s)
    levels: list[tuple[LevelResult, dict[str, Any]]] = []
    async with server_process(model, setting, args.out, setting.name) as proc:
        if proc.proc is None:
            raise RuntimeError(f"server {setting.name} has no process after it started")
        if args.client_nice:
            os.nice(args.client_nice)  # the server, started first, keeps its priority
        for c in args.concurrency:
            plan = LoadPlan("closed", (float(c),), settings)
            level = await measure_level(proc.proc.pid, proc.target, requests, plan,
                                        setting.name, not args.no_progress)
            print(f"{describe(level[0].summary)}; server CPU per request: front end "
                  f"{level[1]['frontend_us_per_request']} µs, engine "
                  f"{level[1]['engine_us_per_request']} µs", flush=True)
            levels.append(level)
        target = proc.target
    entry = setting_entry(setting.name, role_of(args, setting), setting.to_yaml(), target,
                          [lv for lv, _ in levels], engine_options=model["engine_options"])
    for level_json, (_, cpu) in zip(entry["levels"], levels, strict=True):
        level_json["server_cpu"] = cpu
    doc["settings"].append(entry)
    clean = [(lv.summary, cpu) for lv, cpu in levels if not lv.summary.errors]
    best, cpu = max(clean, key=lambda pair: pair[0].throughput_rps)
    print(f"server/raw ratio at batch {b}: {best.throughput_rps:.1f} req/s "
          f"(closed loop, concurrency {best.spec.level:g}) / {raw.pipeline_images_per_s:.1f} "
          f"img/s = {best.throughput_rps / raw.pipeline_images_per_s:.3f} "
          f"(vs infer only: {best.throughput_rps / raw.infer_images_per_s:.3f})")
    bound = cpu_bound(best, cpu, raw)
    doc["cpu_bound"] = bound
    print(bound["text"])
    save(doc, args.out, args.slo_ms)


def cpu_bound(best: Any, cpu: dict[str, Any], raw: RawResult) -> dict[str, Any]:
    """What the CPU allows: with every core busy on the server's and the load generator's work
    per request (as measured at the best level), the highest rate the server could reach, as a
    share of inference alone; and the CPU per request outside inference that 0.8 would allow."""
    cores = os.cpu_count() or 1
    client_us = best.client_cpu_cores / best.throughput_rps * 1e6 if best.throughput_rps else 0.0
    per_request_us = cpu["frontend_us_per_request"] + cpu["engine_us_per_request"] + client_us
    ceiling = cores * 1e6 / per_request_us / raw.infer_images_per_s
    allowed_us = cores * 1e6 / (0.8 * raw.infer_images_per_s) - raw.infer_cpu_us_per_image
    outside_us = per_request_us - raw.infer_cpu_us_per_image
    text = (f"CPU per request at that level: front end {cpu['frontend_us_per_request']:.0f} µs +"
            f" engine thread(s) (inference, output decode, NMS) "
            f"{cpu['engine_us_per_request']:.0f} µs + load generator {client_us:.0f} µs = "
            f"{per_request_us:.0f} µs; inference alone {raw.infer_cpu_us_per_image:.0f} µs per "
            f"image. With all {cores} cores busy the server could reach at most "
            f"{ceiling:.3f} of inference alone; 0.8 would allow {allowed_us:.0f} µs per request "
            f"outside inference, against {outside_us:.0f} µs measured.")
    return {"cores": cores, "client_us_per_request": round(client_us, 1),
            "cpu_us_per_request": round(per_request_us, 1),
            "infer_cpu_us_per_image": round(raw.infer_cpu_us_per_image, 1),
            "ceiling_vs_infer_only": round(ceiling, 3),
            "outside_inference_us_allowed_for_0_8": round(allowed_us, 1),
            "outside_inference_us_measured": round(outside_us, 1), "text": text}


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/engine_ratio")
    add_batching_flags(p, "--batch-size")
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--raw-duration-s", type=float, default=10.0)
    p.add_argument("--client-nice", type=int, default=0,
                   help="lower the load generator's CPU priority once the server runs, so on "
                        "cores it shares with the server it takes what the server leaves")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
