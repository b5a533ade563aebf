"""Overload: open-loop Poisson arrivals at 2x and 3x the measured capacity of the served default,
first with the plain client timeout, then with a 200 ms client deadline per call.

    .venv/bin/python benchmarks/overload.py --out benchmarks/results/overload
    .venv/bin/python benchmarks/overload.py --width 3840 --height 2880 --out /tmp/overload_4k

1. Capacity: closed loop at --capacity-concurrency; the throughput it reaches is "capacity".
2. Per phase (--factors x capacity, --duration-s each): goodput ÷ capacity, the share of each
   gRPC status, rejection and OK latency p50/p99 (from the scheduled send), mean formed and
   executed batch size, server RSS before/peak/after (VmRSS every 50 ms), and from the server's
   /metrics the calls decoded after their deadline, the decodes, and rejections by reason
   (counter differences over the phase, warm-up included; null where the server does not
   expose a counter). "Client saturated" marks a phase whose load generator may have been the
   bottleneck (CPU, send lag or backlog).
3. PASS/FAIL per target at the top factor (3x): without a deadline goodput ≥ 0.85 × capacity,
   rejection p99 ≤ 10 ms, OK p99 ≤ max_queue_wait_ms + 2 × batch compute (mean server
   inference ms of the phase's OK replies), RSS peak ≤ before + 300 MB, no CANCELLED; with the
   deadline goodput ≥ 0.75 × capacity and no call decoded after its deadline.

With --client-nice N the load generator runs N nice levels below the server: on a machine where
the two share the cores, the server then gets the CPU it would have with remote clients. The
offered rate is still the generator's; "client saturated" says when it fell behind.

Writes results.json (config, raw records per phase, "capacity", "phases", "targets"),
results.csv (one row per phase), report.md and its plots into --out.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import replace
from typing import Any

from _common import (
    add_batching_flags,
    base_parser,
    batch_setting,
    load_requests,
    model_entry,
    new_doc,
    role_of,
    served,
    server_process,
)

from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.overload import (
    PhaseStats,
    TargetCheck,
    check_targets,
    phase_stats,
    plan_phases,
    run_phase,
)
from detserve.client.bench.overload_report import write_overload_report, write_phase_csv
from detserve.client.bench.promtext import OVERLOAD_COUNTERS
from detserve.client.bench.resultsdoc import setting_entry, write_json
from detserve.client.bench.runner import LevelResult, LoadPlan, describe, run_plan
from detserve.client.bench.server_proc import free_port
from detserve.protos import detection_pb2 as pb


def show(level: LevelResult) -> None:
    print(describe(level.summary), flush=True)


async def capacity_of(args: argparse.Namespace, target: str,
                      requests: list[pb.DetectRequest], settings: LoadSettings) -> LevelResult:
    plan = LoadPlan("closed", (float(args.capacity_concurrency),), settings)
    (cap,) = await run_plan(target, requests, plan, "capacity", not args.no_progress,
                            on_level=show)
    print(f"capacity (closed loop, concurrency {args.capacity_concurrency}): "
          f"{cap.summary.throughput_rps:.1f} req/s", flush=True)
    return cap


async def measure(args: argparse.Namespace, doc: dict[str, Any],
                  requests: list[pb.DetectRequest]) -> list[PhaseStats]:
    setting, model = batch_setting(args), model_entry(args)
    port = free_port()
    fields = {**served(args).server, "metrics_port": port}
    if args.workers is not None:
        fields["workers"] = args.workers
    settings = LoadSettings(warmup_s=args.warmup_s, duration_s=args.duration_s,
                            timeout_s=args.timeout_s)
    role, opts = role_of(args, setting), model["engine_options"]
    phases: list[PhaseStats] = []
    async with server_process(model, setting, args.out, "overload", fields) as proc:
        if proc.proc is None:
            raise RuntimeError("the server process did not start")
        if args.client_nice:
            os.nice(args.client_nice)
        cap = await capacity_of(args, proc.target, requests, settings)
        capacity = cap.summary.throughput_rps
        doc["capacity"] = {"concurrency": args.capacity_concurrency, "throughput_rps": capacity}
        doc["settings"].append(setting_entry("capacity", role, setting.to_yaml(), proc.target,
                                             [cap], engine_options=opts))
        specs = plan_phases(capacity, args.factors, args.deadline_ms, args.timeout_s)
        for i, spec in enumerate(specs):
            level, server = await run_phase(
                proc.target, proc.proc.pid, f"http://127.0.0.1:{port}/metrics", requests, spec,
                replace(settings, seed=i), not args.no_progress,
                tree=int(fields.get("workers", 1)) > 1)
            show(level)
            phases.append(phase_stats(spec, level.summary, level.records, capacity, server))
            doc["settings"].append(setting_entry(spec.name, role, setting.to_yaml(), proc.target,
                                                 [level], engine_options=opts))
    return phases


def notes_for(phases: list[PhaseStats]) -> list[str]:
    notes = [f"{p.name}: client saturated ({p.saturation_reason}): the numbers may describe "
             f"the load generator, not the server" for p in phases if p.client_saturated]
    seen: list[str] = []
    for p in phases:
        for note in p.server.notes() if p.server else []:
            if note not in seen:
                seen.append(note)
    return notes + seen


def write(args: argparse.Namespace, doc: dict[str, Any], phases: list[PhaseStats],
          targets: list[TargetCheck]) -> None:
    notes = notes_for(phases)
    doc["phases"] = [p.to_json() for p in phases]
    doc["targets"] = [vars(t) for t in targets]
    doc["notes"] = notes
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(doc, args.out / "results.json")
    write_phase_csv(phases, args.out / "results.csv")
    write_overload_report(doc, args.out, args.slo_ms)  # report.md and its plots, from doc
    for t in targets:
        print(t.line())
    for note in notes:
        print(f"note: {note}")
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'} and "
          f"{args.out / 'report.md'}")


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/overload")
    add_batching_flags(p)
    p.add_argument("--capacity-concurrency", type=int, default=16)
    p.add_argument("--factors", type=float, nargs="+", default=[2.0, 3.0],
                   help="offered rate per phase, as a multiple of capacity")
    p.add_argument("--deadline-ms", type=float, default=200.0,
                   help="client deadline (per-call gRPC timeout) of the second round of phases")
    p.add_argument("--timeout-s", type=float, default=10.0,
                   help="per-call timeout of the capacity run and the phases without deadline")
    p.add_argument("--client-nice", type=int, default=0,
                   help="lower the load generator's CPU priority by this much once the server "
                        "runs (os.nice), so that on cores it shares with the server it takes "
                        "what the server leaves, as clients on other machines would; the "
                        "server keeps normal priority. Recorded in results.json")
    p.add_argument("--workers", type=int, default=None,
                   help="front-end processes (the server's `workers`; default: the served "
                        "default's); with more than one, RSS is summed over the process tree")
    p.set_defaults(duration_s=30.0)
    args = p.parse_args()
    setting = batch_setting(args)
    _, requests, inputs_json, _ = load_requests(args)
    doc = new_doc(args, inputs_json, {"setting": setting.to_yaml(),
                                      "metrics_counters": list(OVERLOAD_COUNTERS)})
    phases = asyncio.run(measure(args, doc, requests))
    write(args, doc, phases, check_targets(phases, setting.max_queue_wait_ms))


if __name__ == "__main__":
    main()
