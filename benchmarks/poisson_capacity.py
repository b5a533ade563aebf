"""Open-loop Poisson arrivals at 50, 70 and 90 % of the capacity measured in the same run.

    .venv/bin/python benchmarks/poisson_capacity.py --out benchmarks/results/poisson

1. Capacity: closed loop at --capacity-concurrency; the throughput it reaches is "capacity".
2. Poisson at 50/70/90 % of it, latency from the scheduled send time (no coordinated
   omission); plus constant arrivals at 70 % for comparison.
3. Prints p99 at 70 % against max_queue_delay + 2 x the batch compute time (the server's mean
   inference ms at that level).
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import base_parser, load_requests, model_entry, new_doc, save, serving

from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.resultsdoc import setting_entry
from detserve.client.bench.runner import LevelResult, LoadPlan, describe, run_plan
from detserve.client.bench.server_proc import BatchSetting


async def run(args: Any) -> None:
    _, requests, inputs_json, _ = load_requests(args)
    setting = BatchSetting(args.max_batch_size, args.delay_ms, args.instances)
    doc = new_doc(args, inputs_json, {"setting": setting.to_yaml(),
                                      "fractions": args.fractions})
    settings = LoadSettings(warmup_s=args.warmup_s, duration_s=args.duration_s)
    progress = not args.no_progress

    def show(level: LevelResult) -> None:
        print(describe(level.summary), flush=True)

    async with serving(model_entry(args), setting, args.out, setting.name) as target:
        cap_plan = LoadPlan("closed", (float(args.capacity_concurrency),), settings)
        capacity_levels = await run_plan(target, requests, cap_plan, "capacity", progress,
                                         on_level=show)
        capacity = capacity_levels[0].summary.throughput_rps
        print(f"capacity (closed loop, concurrency {args.capacity_concurrency}): "
              f"{capacity:.1f} req/s", flush=True)
        rates = tuple(round(capacity * f, 2) for f in args.fractions)
        poisson = await run_plan(target, requests, LoadPlan("open", rates, settings, "poisson"),
                                 "poisson", progress, on_level=show)
        at70 = round(capacity * 0.7, 2)
        constant = await run_plan(target, requests,
                                  LoadPlan("open", (at70,), settings, "constant"),
                                  "constant", progress, on_level=show)
    batching = setting.to_yaml()
    doc["config"]["capacity_rps"] = capacity
    doc["settings"] += [
        setting_entry(f"{setting.name}-capacity", "sweep", batching, target, capacity_levels),
        setting_entry(f"{setting.name}-poisson", "sweep", batching, target, poisson),
        setting_entry(f"{setting.name}-constant", "sweep", batching, target, constant),
    ]
    for frac, level in zip(args.fractions, poisson, strict=True):
        s = level.summary
        bound = args.delay_ms + 2 * s.server_ms["inference_ms"]
        print(f"Poisson at {frac:.0%} of capacity ({s.spec.rate_rps:.1f} req/s): p99 "
              f"{s.latency.p99_ms:.1f} ms vs max_queue_delay + 2 x batch compute = "
              f"{args.delay_ms:g} + 2 x {s.server_ms['inference_ms']:.2f} = {bound:.1f} ms")
    c = constant[0].summary
    print(f"constant arrivals at 70 %: p99 {c.latency.p99_ms:.1f} ms")
    save(doc, args.out, args.slo_ms)


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/poisson")
    p.add_argument("--max-batch-size", type=int, default=8)
    p.add_argument("--delay-ms", type=float, default=2.0, help="max_queue_delay_ms")
    p.add_argument("--instances", type=int, default=1)
    p.add_argument("--capacity-concurrency", type=int, default=32)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
