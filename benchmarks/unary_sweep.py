"""Unary sweep: max_batch_size x max_queue_delay x instances on the default model, a closed-loop
concurrency ladder per setting, with the raw-engine and no-batching baselines in the same run.

    .venv/bin/python benchmarks/unary_sweep.py --out benchmarks/results/unary_sweep

Writes results.json, results.csv, report.md and the plots into --out. The report gives the
"dynamic batching / no batching at equal p99" and "server / raw engine" ratios.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from _common import base_parser, model_entry

from detserve.client.bench.report import write_report
from detserve.client.bench.resultsdoc import load_document
from detserve.client.bench.sweep import load_sweep, run_sweep


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/unary_sweep")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--delays-ms", type=float, nargs="+", default=[2.0, 8.0])
    p.add_argument("--instances", type=int, nargs="+", default=[1, 2])
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    args = p.parse_args()
    sweep = {
        "model": model_entry(args),
        "grid": {"max_batch_size": args.batch_sizes, "max_queue_delay_ms": args.delays_ms,
                 "instances": args.instances, "max_queue_size": 256},
        "load": {"mode": "closed", "transport": "unary", "levels": args.concurrency,
                 "warmup_s": args.warmup_s, "duration_s": args.duration_s},
        "inputs": {"source": "synthetic", "count": args.input_count, "width": args.width,
                   "height": args.height, "format": "jpeg"},
        "baselines": {"raw_engine": {"batch_sizes": sorted(set(args.batch_sizes)),
                                     "duration_s": min(args.duration_s, 5.0)},
                      "no_batching": True},
    }
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    cfg_path = out / "sweep.yaml"
    cfg_path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    results = asyncio.run(run_sweep(load_sweep(cfg_path), out, not args.no_progress))
    print(f"wrote {results}, {results.with_suffix('.csv')} and "
          f"{write_report(load_document(results), out, args.slo_ms)}")


if __name__ == "__main__":
    main()
