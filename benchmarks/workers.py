"""Front-end workers on this CPU, in one run: throughput at saturation with `--workers 2` against
`--workers 1`, and the front end's CPU time per request, on the served default (its engine,
engine options and batching) with 640x480 JPEGs.

    .venv/bin/python benchmarks/workers.py --out benchmarks/results/workers

Settings run in rounds (both in each round, see below), each a detserve-server
subprocess driven by closed loops at --concurrency, the load spread over --channels
connections (so the kernel hands calls to both front ends). Around each level the script reads
the server's CPU time from /proc (detserve.client.bench.proccpu):

- workers 2: the front-end processes' CPU time (every thread) ÷ the requests the level sent;
  the engine process and the supervisor are reported apart, not in it;
- workers 1: the process's CPU time minus its engine threads' (named `ds-engine`: the engine
  library's threads, started from the thread that built the engines; `ds-batch`: the batch
  runs), ÷ the requests. Batch forming and admission run on this process's event loop, so
  they are in its front-end share here, and in the engine process with workers.

Saturation is each setting's best clean level (no errors). Each round runs both settings back
to back, in turn first (this machine's speed drifts by more than the effect over minutes), and
gives one ratio, workers 2 ÷ workers 1; the headline is the median of the rounds' ratios, with
the ratio of the means beside it. Writes results.json, results.csv and
report.md (the standard per-level report and plots) and summary.md (the figures above).
"""

from __future__ import annotations

import asyncio
import collections
import statistics
from pathlib import Path
from typing import Any

from _common import (
    add_batching_flags,
    base_parser,
    batch_setting,
    load_requests,
    measure_level,
    model_entry,
    new_doc,
    save,
    server_process,
)

from detserve.client.bench import hostload
from detserve.client.bench.loads import DEFAULT_CHANNELS, LoadSettings
from detserve.client.bench.resultsdoc import setting_entry
from detserve.client.bench.runner import LoadPlan, describe
from detserve.client.bench.served import load_served_default


def best_clean(levels: list[dict[str, Any]]) -> dict[str, Any] | None:
    clean = [lv for lv in levels if not lv["summary"].errors]
    return max(clean, key=lambda lv: lv["summary"].throughput_rps) if clean else None


def summary_lines(rows: list[dict[str, Any]]) -> list[str]:
    out = ["# Front-end workers on this CPU", "",
           "By `benchmarks/workers.py` (module docstring: how CPU is split by role). One row per "
           "setting and concurrency; saturation is each server's best clean level.", "",
           "| setting | workers | callers | req/s | p99 ms | mean batch | front-end µs/req | "
           "engine µs/req | supervisor µs/req | client CPU cores |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for lv in row["levels"]:
            s, cpu = lv["summary"], lv["cpu"]
            out.append(f"| {row['name']} | {row['workers']} | {s.spec.level:g} | "
                       f"{s.throughput_rps:.1f} | {s.latency.p99_ms:.1f} | "
                       f"{s.mean_batch_size:.2f} | {cpu['frontend_us_per_request']} | "
                       f"{cpu['engine_us_per_request']} | {cpu['supervisor_us_per_request']} | "
                       f"{s.client_cpu_cores:.2f} |")
    out += ["", "At saturation:", ""]
    sat: dict[int, list[float]] = collections.defaultdict(list)
    fe: dict[int, list[float]] = collections.defaultdict(list)
    by_round: dict[int, dict[int, float]] = {}
    for row in rows:
        best = best_clean(row["levels"])
        if best is None:
            out.append(f"- {row['name']}: no clean level")
            continue
        by_round.setdefault(row["round"], {})[row["workers"]] = best["summary"].throughput_rps
        sat[row["workers"]].append(best["summary"].throughput_rps)
        fe[row["workers"]].append(best["cpu"]["frontend_us_per_request"])
        out.append(f"- {row['name']}: {best['summary'].throughput_rps:.1f} req/s at "
                   f"{best['summary'].spec.level:g} callers, front end "
                   f"{best['cpu']['frontend_us_per_request']} µs of CPU per request")
    n = max(sat, default=1)  # the second setting's front ends
    ratios = [r[n] / r[1] for r in by_round.values() if 1 in r and n in r and n != 1]
    if ratios:
        of_means = statistics.mean(sat[n]) / statistics.mean(sat[1])
        out += ["", f"**workers {n} ÷ workers 1 at saturation: {statistics.median(ratios):.3f}** "
                f"(median of {len(ratios)} rounds' ratios: "
                f"{', '.join(f'{r:.3f}' for r in ratios)}; target ≥ 0.95); ratio of the means "
                f"{of_means:.3f} ({statistics.mean(sat[n]):.1f} against "
                f"{statistics.mean(sat[1]):.1f} req/s)",
                f"**front-end CPU per request at saturation: {statistics.mean(fe[1]):.0f} µs "
                f"with workers 1, {statistics.mean(fe[n]):.0f} µs with workers {n}** (means of "
                f"the rounds)"]
    return out


async def run(args: Any) -> None:
    _, requests, inputs_json, _ = load_requests(args)
    model = model_entry(args)
    setting = batch_setting(args)
    doc = new_doc(args, inputs_json, {"setting": setting.to_yaml(),
                                      "workers": [1, args.workers], "rounds": args.rounds})
    settings = LoadSettings(warmup_s=args.warmup_s, duration_s=args.duration_s,
                            channels=args.channels)
    base = load_served_default().server
    rows: list[dict[str, Any]] = []
    for round_ in range(1, args.rounds + 1):
        order = (1, args.workers) if round_ % 2 else (args.workers, 1)
        for workers in order:
            name = f"w{workers}_r{round_}"
            levels: list[dict[str, Any]] = []
            async with server_process(model, setting, args.out, name,
                                      {**base, "workers": workers}) as proc:
                if proc.proc is None:
                    raise RuntimeError(f"server {name} has no process after it started")
                for level in args.concurrency:
                    plan = LoadPlan("closed", (float(level),), settings)
                    result, cpu = await measure_level(proc.proc.pid, proc.target, requests,
                                                      plan, name, not args.no_progress)
                    print(f"{name}: {describe(result.summary)}; front end "
                          f"{cpu['frontend_us_per_request']} µs/req, engine "
                          f"{cpu['engine_us_per_request']} µs/req", flush=True)
                    levels.append({"result": result, "summary": result.summary, "cpu": cpu})
                    await asyncio.sleep(plan.pause_s)
            entry = setting_entry(name, "served_default", setting.to_yaml(), proc.target,
                                  [lv["result"] for lv in levels],
                                  engine_options=model["engine_options"])
            entry["workers"] = workers
            for level_json, lv in zip(entry["levels"], levels, strict=True):
                level_json["server_cpu"] = lv["cpu"]
            doc["settings"].append(entry)
            rows.append({"name": name, "workers": workers, "round": round_, "levels": levels})
    save(doc, args.out, args.slo_ms)  # also takes the host's load after the run
    lines = summary_lines(rows)
    lines += ["", f"Host: {hostload.describe(doc.get('host_load'))}."]
    (Path(args.out) / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[-4:]))


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/workers")
    add_batching_flags(p)
    p.add_argument("--workers", type=int, default=2, help="front ends of the second setting")
    p.add_argument("--concurrency", type=int, nargs="+", default=[16, 32])
    p.add_argument("--rounds", type=int, default=4,
                   help="rounds; each runs both settings, alternating which goes first")
    p.add_argument("--channels", type=int, default=DEFAULT_CHANNELS,
                   help="connections the load spreads over")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
