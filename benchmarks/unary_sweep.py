"""Unary sweep around the served default: its batching and engine options as one setting, no
batching (max_batch_size 1) as the baseline, a closed-loop concurrency ladder per setting, and
the raw engine measured in the same run.

    .venv/bin/python benchmarks/unary_sweep.py --out benchmarks/results/unary_sweep

--batch-sizes, --delays-ms, --instances and --static-batch-sizes add values to the grid's axes
(each axis holds the served default's value plus these; the grid is their cross product), e.g.
`--batch-sizes 4 --static-batch-sizes 1,8 1,2,4,8`. Writes results.json, results.csv,
report.md and the plots into --out. The report (and the end of the output) gives the served
default ÷ no batching throughput ratio at each concurrency and at saturation (with --rounds R,
the default 3, each the median of the R rounds' own ratios), "dynamic batching
÷ no batching at equal p99", "server ÷ raw engine" and the recommendation.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from _common import base_parser, model_entry, served

from detserve.client.bench.report import conclusions, write_report
from detserve.client.bench.resultsdoc import csv_rows, load_document
from detserve.client.bench.served import load_served_default
from detserve.client.bench.sweep import load_sweep, run_sweep


def _axis(first: Any, extra: Iterable[Any]) -> list[Any]:
    """The served default's value first, then the extra points, without repeats."""
    out = [first]
    for v in extra:
        if v not in out:
            out.append(v)
    return out


def sizes_list(text: str) -> list[int]:
    """`1,2,4,8` -> [1, 2, 4, 8]; `none` or an empty string -> [] (one dynamic-batch model)."""
    if text.strip().lower() in ("", "none"):
        return []
    return [int(v) for v in text.split(",")]


def build_grid(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """(grid, base batching): the grid's axes start from the served default's values."""
    base = served(args)
    setting = base.setting()
    grid: dict[str, Any] = {
        "max_batch_size": _axis(setting.max_batch_size, args.batch_sizes),
        "max_queue_delay_ms": _axis(setting.max_queue_delay_ms, args.delays_ms),
        "instances": _axis(setting.instances, args.instances),
        "max_queue_size": setting.max_queue_size,
    }
    if setting.max_queue_wait_ms is not None:
        grid["max_queue_wait_ms"] = [setting.max_queue_wait_ms]
    if args.static_batch_sizes:
        first = list(base.engine_options.get("static_batch_sizes", []))
        grid["engine_options"] = {"static_batch_sizes": _axis(first, args.static_batch_sizes)}
    return grid, base.batching


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/unary_sweep")
    p.add_argument("--batch-sizes", type=int, nargs="*", default=[],
                   help="extra max_batch_size values (1 = the no-batching baseline)")
    p.add_argument("--delays-ms", type=float, nargs="*", default=[],
                   help="extra max_queue_delay_ms values")
    p.add_argument("--instances", type=int, nargs="*", default=[], help="extra instances values")
    p.add_argument("--static-batch-sizes", type=sizes_list, nargs="*", default=[],
                   help="extra engine_options.static_batch_sizes lists, e.g. 1,8 1,2,4,8 none")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--client-nice", type=int, default=0,
                   help="lower the load generator's CPU priority once the servers run")
    p.add_argument("--rounds", type=int, default=3,
                   help="passes over the ladder, the settings alternating first; each ratio "
                        "is the median of the rounds' own ratios (client/bench/rounds.py)")
    p.add_argument("--fresh-servers", action="store_true",
                   help="restart every setting's server before each round, so the rounds' "
                        "median is over independent server processes (needs --client-nice 0)")
    args = p.parse_args()
    grid, batching = build_grid(args)
    sweep = {
        "model": {**model_entry(args), "batching": batching},
        "server": load_served_default().server,
        "grid": grid,
        "load": {"mode": "closed", "transport": "unary", "levels": args.concurrency,
                 "warmup_s": args.warmup_s, "duration_s": args.duration_s},
        "inputs": {"source": "synthetic", "count": args.input_count, "width": args.width,
                   "height": args.height, "format": "jpeg"},
        "baselines": {"raw_engine": {"batch_sizes": sorted({1, *grid["max_batch_size"]}),
                                     "duration_s": min(args.duration_s, 5.0)},
                      "no_batching": True},
        "client_nice": args.client_nice,
        "rounds": args.rounds,
        "fresh_servers": args.fresh_servers,
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "sweep.yaml"
    cfg_path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    results = asyncio.run(run_sweep(load_sweep(cfg_path), out, not args.no_progress))
    doc = load_document(results)
    print(f"wrote {results}, {results.with_suffix('.csv')} and "
          f"{write_report(doc, out, args.slo_ms)}")
    print("\n".join(conclusions(csv_rows(doc), args.slo_ms)))


if __name__ == "__main__":
    main()
