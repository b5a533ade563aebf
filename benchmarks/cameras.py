"""8 cameras at 15 fps over DetectStream, once under the `latest` policy and once under `block`,
on the served default configuration (batching flags override its batching).

    .venv/bin/python benchmarks/cameras.py --out benchmarks/results/cameras

Each frame's latency counts from its capture time (asyncio-throttle paces the cameras). Under
`latest` the server skips stale frames (counted as dropped); under `block` it applies
backpressure, so frames queue and latency grows if the server cannot keep up. A reply older than
one frame period (1000/fps ms) counts as stale.
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
from detserve.client.bench.runner import LoadPlan, describe, run_plan

POLICIES = ("latest", "block")


async def run(args: Any) -> None:
    _, requests, inputs_json, _ = load_requests(args)
    setting = batch_setting(args)
    doc = new_doc(args, inputs_json, {"setting": setting.to_yaml(), "cameras": args.cameras,
                                      "fps": args.fps})
    model = model_entry(args)
    async with serving(model, setting, args.out, setting.name) as target:
        for policy in POLICIES:
            settings = LoadSettings(transport="stream", warmup_s=args.warmup_s,
                                    duration_s=args.duration_s, stream_policy=policy)
            plan = LoadPlan("camera", (float(args.cameras),), settings, fps=args.fps)
            levels = await run_plan(target, requests, plan, policy, not args.no_progress)
            s = levels[0].summary
            print(f"{policy}: {describe(s)}", flush=True)
            print(f"{policy}: {s.ok} frames answered, {s.dropped} dropped, {s.stale} stale "
                  f"(> {1000 / args.fps:.0f} ms), delivered {s.throughput_rps:.1f} fps in total "
                  f"of {args.cameras * args.fps:g} offered", flush=True)
            name = f"{args.cameras}cams-{args.fps:g}fps-{policy}"
            doc["settings"].append(setting_entry(name, role_of(args, setting), setting.to_yaml(),
                                                 target, levels,
                                                 engine_options=model["engine_options"]))
    save(doc, args.out, args.slo_ms)


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/cameras")
    p.add_argument("--cameras", type=int, default=8)
    p.add_argument("--fps", type=float, default=15.0)
    add_batching_flags(p)
    p.set_defaults(duration_s=20.0)
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
