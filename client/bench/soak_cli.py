"""The `detserve-bench soak` subcommand: arguments, the run, and its files.

    detserve-bench soak --serve --minutes 5 --out benchmarks/results/soak
    detserve-bench soak --target host:50051 --server-pid 1234 --mode open --rate 40 --out soak

Writes into --out: results.json (config, host, host load, the raw per-request records, the
RSS/CPU samples, per-minute buckets and the summary), results.csv (one row per minute),
report.md and its plots (soak_minutes.png, soak_resources.png).
"""

from __future__ import annotations

import argparse
import csv
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from detserve.client.bench import hostload
from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.recorder import SaturationLimits
from detserve.client.bench.resultsdoc import new_document, setting_entry, write_json
from detserve.client.bench.schedule import ARRIVALS
from detserve.client.bench.soak import SOAK_MODES, SoakPlan, run_soak, served_default_server
from detserve.client.bench.soak_stats import BucketStats

CSV_COLUMNS = ("minute", "start_s", "end_s", "ok", "errors", "throughput_rps", "p50_ms",
               "p95_ms", "p99_ms", "max_ms", "mean_batch_size", "rss_max_mb", "rss_mean_mb",
               "server_cpu_cores", "client_cpu_cores", "host_busy_cores")


def add_soak_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `soak`; returns its parser (the caller adds the shared input flags)."""
    p: argparse.ArgumentParser = sub.add_parser(
        "soak", help="hold one load for minutes: per-minute throughput and latency, server RSS "
        "and CPU over time, worst minute, first ÷ last",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--target", default=None, help="server host:port (default: --serve)")
    where.add_argument("--serve", action="store_true",
                       help="start the served default (server/default.yaml) as a subprocess "
                            "and trace it (the default when no --target is given)")
    p.add_argument("--server-pid", type=int, default=None,
                   help="with --target: the server's pid, to trace its RSS and CPU")
    p.add_argument("--model", default="", help='"name" or "name@variant"; empty = default')
    p.add_argument("--minutes", type=float, default=5.0, help="measured minutes")
    p.add_argument("--bucket-s", type=float, default=60.0, help="statistics per this many s")
    p.add_argument("--mode", choices=SOAK_MODES, default="closed",
                   help="closed: N callers back to back; open: requests at --rate")
    p.add_argument("--concurrency", type=int, default=4, help="closed-loop callers")
    p.add_argument("--rate", type=float, default=20.0, help="open-loop requests/s")
    p.add_argument("--arrivals", choices=ARRIVALS, default="poisson", help="open-loop arrivals")
    p.add_argument("--warmup-s", type=float, default=10.0, help="unmeasured warm-up")
    p.add_argument("--timeout-s", type=float, default=10.0, help="per-call deadline")
    p.add_argument("--sample-s", type=float, default=1.0, help="RSS/CPU sampling period")
    p.add_argument("--max-client-cpu", type=float, default=0.9,
                   help="client CPU (cores) above which the run is flagged 'client saturated'")
    p.add_argument("--slo-ms", type=float, default=100.0, help="p99 line drawn on the plots")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true", help="no per-minute lines")
    return p


def plan_from_args(args: argparse.Namespace) -> SoakPlan:
    if args.server_pid is not None and args.target is None:
        raise ValueError("--server-pid goes with --target (with --serve the soak traces the "
                         "server it starts)")
    return SoakPlan(minutes=args.minutes, mode=args.mode, concurrency=args.concurrency,
                    rate_rps=args.rate, arrivals=args.arrivals, warmup_s=args.warmup_s,
                    bucket_s=args.bucket_s, timeout_s=args.timeout_s, sample_s=args.sample_s)


def _csv_value(v: Any) -> Any:
    return "" if v is None else round(v, 3) if isinstance(v, float) else v


def write_minutes_csv(buckets: list[BucketStats], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for b in buckets:
            row = b.to_json()
            row["minute"], row["errors"] = b.index + 1, sum(b.errors.values())
            w.writerow([_csv_value(row[c]) for c in CSV_COLUMNS])


async def cmd_soak(args: argparse.Namespace) -> int:
    from detserve.client.bench.soak_report import summary_lines, write_soak_report

    plan = plan_from_args(args)
    spec = InputSpec(args.inputs, args.input_count, args.width, args.height, args.format)
    inputs = load_inputs(spec)
    requests = build_requests(inputs.images, args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    started = hostload.snapshot()  # the document is made after the run: its load starts here
    async with AsyncExitStack() as stack:
        if args.target is None:
            target, pid, batching = await stack.enter_async_context(
                served_default_server(args.out))
            role = "served_default"
        else:
            target, pid, batching, role = args.target, args.server_pid, None, "external"
            from detserve.client.bench import targetinfo

            await targetinfo.fetch_and_remember(target, args.model)
        print(f"soak: {plan.mode} {plan.level:g} against {target} for {plan.minutes:g} min "
              f"(+{plan.warmup_s:g} s warm-up), tracing "
              f"{'pid ' + str(pid) if pid else 'no server process'}", flush=True)
        run = await run_soak(target, requests, plan, pid, None if args.no_progress else
                             (lambda line: print(line, flush=True)),
                             SaturationLimits(max_cpu_cores=args.max_client_cpu))
    config = {"target": target, "model": args.model, "soak": plan.to_json(),
              "server": "served default (started by the soak)" if role == "served_default"
              else "external"}
    if role == "served_default":
        from detserve.client.bench.served import load_served_default

        config["served"] = load_served_default().to_json()
    doc = new_document(config, {**spec.to_json(), "mean_bytes": inputs.mean_bytes})
    doc["host_load"] = hostload.between(started, started)  # write_json records the end
    doc["settings"].append(setting_entry("soak", role, batching, target, [run.level],
                                         args.model))
    doc["soak"] = run.to_json(plan)
    write_json(doc, args.out / "results.json")
    write_minutes_csv(run.buckets, args.out / "results.csv")
    report = write_soak_report(doc, args.out, args.slo_ms)
    print("\n".join(summary_lines(run.summary, run.buckets)))
    print(f"wrote {args.out / 'results.json'}, {args.out / 'results.csv'} and {report}")
    return 0
