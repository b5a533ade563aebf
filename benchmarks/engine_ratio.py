"""Issue-2 ratio: server throughput / raw engine throughput at the same batch size, both
measured in this one run on the same inputs.

    .venv/bin/python benchmarks/engine_ratio.py --batch-size 8 --out benchmarks/results/engine_ratio

Raw engine: decode + letterbox + infer + decode/NMS in a loop, no server ("pipeline"), and
engine.infer alone ("infer only"). Server: a detserve-server subprocess with max_batch_size =
--batch-size, driven by a closed-loop ladder; its best throughput is the numerator.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import base_parser, load_requests, model_entry, new_doc, save, serving

from detserve.client.bench.baseline import raw_engine_baseline
from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.resultsdoc import setting_entry
from detserve.client.bench.runner import LoadPlan, describe, run_plan
from detserve.client.bench.server_proc import BatchSetting


async def run(args: Any) -> None:
    _, requests, inputs_json, inputs = load_requests(args)
    model = model_entry(args)
    doc = new_doc(args, inputs_json, {"batch_size": args.batch_size})
    (raw,) = raw_engine_baseline(model["package"], inputs.images, [args.batch_size],
                                 args.raw_duration_s, args.engine)
    doc["raw_engine"] = [raw.to_json()]
    print(f"raw engine, batch {raw.batch_size}: pipeline {raw.pipeline_images_per_s:.1f} img/s,"
          f" infer only {raw.infer_images_per_s:.1f} img/s", flush=True)
    setting = BatchSetting(args.batch_size, args.delay_ms, args.instances)
    settings = LoadSettings(warmup_s=args.warmup_s, duration_s=args.duration_s)
    levels_in = tuple(float(c) for c in args.concurrency)
    async with serving(model, setting, args.out, setting.name) as target:
        levels = await run_plan(target, requests, LoadPlan("closed", levels_in, settings),
                                setting.name, not args.no_progress,
                                on_level=lambda lv: print(describe(lv.summary), flush=True))
    doc["settings"].append(setting_entry(setting.name, "sweep", setting.to_yaml(), target,
                                         levels))
    clean = [lv.summary for lv in levels if not lv.summary.errors]
    best = max(clean, key=lambda s: s.throughput_rps)
    print(f"server/raw ratio at batch {args.batch_size}: {best.throughput_rps:.1f} req/s "
          f"(closed loop, concurrency {best.spec.level:g}) / {raw.pipeline_images_per_s:.1f} "
          f"img/s = {best.throughput_rps / raw.pipeline_images_per_s:.3f} "
          f"(vs infer only: {best.throughput_rps / raw.infer_images_per_s:.3f})")
    save(doc, args.out, args.slo_ms)


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/engine_ratio")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--delay-ms", type=float, default=2.0, help="max_queue_delay_ms")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32])
    p.add_argument("--raw-duration-s", type=float, default=10.0)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
