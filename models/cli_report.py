"""`detserve-model report`: the ship report (one self-contained HTML page)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from detserve.engines.manifest import ManifestError
from detserve.models.coco import CocoError
from detserve.models.extras import explain


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "report", help="the ship report: every checklist item ✅/❌ with its evidence (val mAP, "
        "threshold split, preprocessing, soak latency, memory, FP32 vs INT8) and a failure "
        "gallery, as one self-contained HTML page")
    p.add_argument("package", help="model package directory (or its manifest.yaml)")
    p.add_argument("--data", required=True, help="the val set: COCO json, or a folder with "
                   "annotations.json (a test split is refused)")
    p.add_argument("--soak", type=Path, default=None,
                   help="results.json of detserve-bench soak (worst-case latency, RSS)")
    p.add_argument("--sweep", type=Path, default=None,
                   help="results.json of a sweep (capacity under --slo-ms, peak RSS per level)")
    p.add_argument("--memory", type=Path, default=None,
                   help="results.json of benchmarks/memory.py (memory budget)")
    p.add_argument("--out", type=Path, required=True, help="folder for report.html and "
                   "report.json")
    p.add_argument("--reviewed-by", default=None,
                   help="who reviewed the failure gallery (the checklist's last item)")
    p.add_argument("--slo-ms", type=float, default=100.0, help="p99 SLO for the capacity line")
    p.add_argument("--per-group", type=int, default=4,
                   help="gallery tiles per kind, class and size (the worst ones)")
    p.add_argument("--engine", default=None, help="engine kind (default: the package's own)")
    p.add_argument("--engine-option", action="append", default=[], metavar="KEY=VALUE",
                   help="engine option (value parsed as JSON when it can be); repeatable")
    p.add_argument("--limit", type=int, default=None, help="the first N val images only")
    p.set_defaults(func=_report)


def _report(args: argparse.Namespace) -> int:
    from detserve.models.cli_eval import _options
    from detserve.models.ship_report import ShipInputs, SplitError, build_report, write_report

    try:
        if args.per_group < 1:
            raise ValueError(f"--per-group must be >= 1, got {args.per_group}")
        inputs = ShipInputs(
            package=Path(args.package), data=Path(args.data), soak=args.soak, sweep=args.sweep,
            memory=args.memory, reviewed_by=args.reviewed_by, slo_ms=args.slo_ms,
            per_group=args.per_group, engine=args.engine,
            engine_options=_options(args.engine_option), limit=args.limit)
        report = build_report(inputs)
        path = write_report(report, args.out)
    except (ManifestError, CocoError, SplitError, ValueError, FileNotFoundError,
            RuntimeError) as exc:
        print(f"detserve-model report: error: {explain(exc)}", file=sys.stderr)
        return 2
    for c in report.checks:
        print(f"{'✅' if c.passed else '❌'} {c.title}: {c.evidence}")
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB) and {path.parent / 'report.json'}")
    return 0
