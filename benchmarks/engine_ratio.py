"""Issue-2 ratio: server throughput / raw engine throughput at the same batch size, both
measured in this one run on the same inputs, on the served default configuration (its engine,
engine options and batching; --batch-size defaults to its max_batch_size).

    .venv/bin/python benchmarks/engine_ratio.py --batch-size 8 --out benchmarks/results/engine_ratio

Raw engine: decode + letterbox + infer + decode/NMS in a loop, no server ("pipeline"), and
engine.infer alone ("infer only"). Server: a detserve-server subprocess with max_batch_size =
--batch-size, driven by a closed-loop ladder; its best throughput is the numerator.
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
    model_entry,
    new_doc,
    role_of,
    save,
    serving,
)

from detserve.client.bench.baseline import raw_engine_baseline
from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.resultsdoc import setting_entry
from detserve.client.bench.runner import LoadPlan, describe, run_plan


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
          f" infer only {raw.infer_images_per_s:.1f} img/s", flush=True)
    settings = LoadSettings(warmup_s=args.warmup_s, duration_s=args.duration_s)
    levels_in = tuple(float(c) for c in args.concurrency)
    async with serving(model, setting, args.out, setting.name) as target:
        if args.client_nice:
            os.nice(args.client_nice)  # the server, started first, keeps its priority
        levels = await run_plan(target, requests, LoadPlan("closed", levels_in, settings),
                                setting.name, not args.no_progress,
                                on_level=lambda lv: print(describe(lv.summary), flush=True))
    role = role_of(args, setting)
    doc["settings"].append(setting_entry(setting.name, role, setting.to_yaml(), target, levels,
                                         engine_options=model["engine_options"]))
    clean = [lv.summary for lv in levels if not lv.summary.errors]
    best = max(clean, key=lambda s: s.throughput_rps)
    print(f"server/raw ratio at batch {b}: {best.throughput_rps:.1f} req/s "
          f"(closed loop, concurrency {best.spec.level:g}) / {raw.pipeline_images_per_s:.1f} "
          f"img/s = {best.throughput_rps / raw.pipeline_images_per_s:.3f} "
          f"(vs infer only: {best.throughput_rps / raw.infer_images_per_s:.3f})")
    save(doc, args.out, args.slo_ms)


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
