"""Open-loop Poisson arrivals at 50, 70 and 90 % of the capacity measured in the same run, on the
served default configuration (batching flags override its batching).

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

from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.resultsdoc import setting_entry
from detserve.client.bench.runner import LevelResult, LoadPlan, describe, run_plan


async def run(args: Any) -> None:
    _, requests, inputs_json, _ = load_requests(args)
    setting = batch_setting(args)
    doc = new_doc(args, inputs_json, {"setting": setting.to_yaml(),
                                      "fractions": args.fractions})
    settings = LoadSettings(warmup_s=args.warmup_s, duration_s=args.duration_s)
    progress = not args.no_progress

    def show(level: LevelResult) -> None:
        print(describe(level.summary), flush=True)

    model = model_entry(args)
    async with serving(model, setting, args.out, setting.name) as target:
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
    opts, role = model["engine_options"], role_of(args, setting)
    doc["settings"] += [
        setting_entry(f"{setting.name}-{part}", role, batching, target, levels,
                      engine_options=opts)
        for part, levels in (("capacity", capacity_levels), ("poisson", poisson),
                             ("constant", constant))
    ]
    for frac, level in zip(args.fractions, poisson, strict=True):
        s = level.summary
        delay = setting.max_queue_delay_ms
        bound = delay + 2 * s.server_ms["inference_ms"]
        print(f"Poisson at {frac:.0%} of capacity ({s.spec.rate_rps:.1f} req/s): p99 "
              f"{s.latency.p99_ms:.1f} ms vs max_queue_delay + 2 x batch compute = "
              f"{delay:g} + 2 x {s.server_ms['inference_ms']:.2f} = {bound:.1f} ms")
    c = constant[0].summary
    print(f"constant arrivals at 70 %: p99 {c.latency.p99_ms:.1f} ms")
    save(doc, args.out, args.slo_ms)


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/poisson")
    add_batching_flags(p)
    p.add_argument("--capacity-concurrency", type=int, default=32)
    p.add_argument("--fractions", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
