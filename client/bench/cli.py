"""`detserve-bench`: load generator and benchmark harness for detserve.

    detserve-bench run --target localhost:50051 --mode closed --concurrency 1 2 4 8 \\
        --duration-s 10 --out closed.json
    detserve-bench run --mode open --rate 20 40 --arrivals poisson --out open.json
    detserve-bench run --mode camera --cameras 8 --fps 15 --transport stream --out cams.json
    detserve-bench sweep --config sweep.yaml --out results/unary
    detserve-bench report results/unary/results.json --slo-ms 100
    detserve-bench baseline --batch-sizes 1 4 8     # the served default's package and engine
    detserve-bench soak --serve --minutes 5 --out results/soak  # per-minute trend, RSS, CPU

Latency in open-loop and camera modes counts from the planned send (or capture) time, so a
late send is charged to the request (no coordinated omission). Each level runs --warmup-s,
then measures for --duration-s or --max-requests requests, whichever ends first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from detserve.client.bench import targetinfo
from detserve.client.bench.inputs import FORMATS, InputSpec, build_requests, load_inputs
from detserve.client.bench.loads import DEFAULT_CHANNELS, MODES, TRANSPORTS, LoadSettings
from detserve.client.bench.recorder import SaturationLimits
from detserve.client.bench.resultsdoc import (
    load_document,
    new_document,
    setting_entry,
    write_csv,
    write_json,
)
from detserve.client.bench.runner import LoadPlan, describe, run_plan
from detserve.client.bench.schedule import ARRIVALS
from detserve.client.bench.served import parse_engine_options
from detserve.client.bench.soak_cli import add_soak_parser, cmd_soak
from detserve.client.cli_security import add_security_args, security_from_args
from detserve.client.results import DetectError
from detserve.client.security import ChannelSecurity


def _add_inputs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inputs (encoded once, before the load starts)")
    g.add_argument("--inputs", default="synthetic",
                   help="'synthetic' (detserve.models scenes) or a folder of JPEG/PNG files")
    g.add_argument("--input-count", type=int, default=16, help="distinct images (%(default)s)")
    g.add_argument("--width", type=int, default=640, help="synthetic width (%(default)s)")
    g.add_argument("--height", type=int, default=480, help="synthetic height (%(default)s)")
    g.add_argument("--format", choices=FORMATS, default="jpeg",
                   help="synthetic images sent as jpeg, png or raw RGB8 (%(default)s)")


def _add_engine(p: argparse.ArgumentParser, kind_flag: str, options_flag: str) -> None:
    p.add_argument(kind_flag, default=None,
                   help="raw engine kind (default: for the served default's package its "
                        "engine in server/default.yaml, for any other the package's own: "
                        "openvino for an OpenVINO IR model.xml, else onnxruntime)")
    p.add_argument(options_flag, default=None,
                   help="raw engine options as a JSON object (default: the served default's "
                        "for its package, else none)")


def _add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="load one running server with a ladder of levels",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target", default="localhost:50051", help="server host:port")
    p.add_argument("--model", default="", help='"name" or "name@variant"; empty = default')
    p.add_argument("--mode", choices=MODES, default="closed",
                   help="closed: N workers back to back; open: requests at a rate; "
                        "camera: K streams at F fps")
    p.add_argument("--transport", choices=TRANSPORTS, default=None,
                   help="unary Detect calls or DetectStream (default: stream for camera)")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8],
                   help="closed-loop ladder")
    p.add_argument("--rate", type=float, nargs="+", default=[10.0],
                   help="open-loop ladder, requests/s")
    p.add_argument("--arrivals", choices=ARRIVALS, default="poisson", help="open-loop arrivals")
    p.add_argument("--cameras", type=int, nargs="+", default=[8], help="camera ladder")
    p.add_argument("--fps", type=float, default=15.0, help="frames/s per camera")
    p.add_argument("--stale-ms", type=float, default=None,
                   help="camera reply counts as stale above this latency (default 1000/fps)")
    p.add_argument("--stream-policy", choices=("block", "latest"), default=None,
                   help="DetectStream policy sent as call metadata (default: the server's)")
    p.add_argument("--streams", type=int, default=1,
                   help="open loop over streams: spread frames over this many streams")
    p.add_argument("--channels", type=int, default=DEFAULT_CHANNELS,
                   help="connections to spread calls over (each its own; a server with "
                   "--workers N gives each connection to one worker)")
    p.add_argument("--load-balancing", choices=("pick_first", "round_robin"), default=None,
                   help="gRPC balancing over the addresses --target resolves to "
                        "(round_robin: every replica of ipv4:A:P,B:P or dns:///NAME:P)")
    p.add_argument("--warmup-s", type=float, default=1.0, help="unmeasured warm-up per level")
    p.add_argument("--duration-s", type=float, default=10.0, help="measurement window per level")
    p.add_argument("--max-requests", type=int, default=1_000_000,
                   help="measured requests per level, at most")
    p.add_argument("--timeout-s", type=float, default=10.0, help="per-call deadline (unary)")
    p.add_argument("--seed", type=int, default=0, help="Poisson schedule seed")
    p.add_argument("--max-outstanding", type=int, default=10_000,
                   help="open loop: requests in flight beyond this are counted as "
                        "CLIENT_BACKLOG instead of sent")
    p.add_argument("--max-client-cpu", type=float, default=0.9,
                   help="client CPU (cores) above which a level is flagged 'client saturated'")
    p.add_argument("--raw-package", default=None,
                   help="also measure the raw engine on this model package (same inputs)")
    _add_engine(p, "--raw-engine", "--raw-engine-options")
    p.add_argument("--raw-batch-sizes", type=int, nargs="+", default=[1, 8],
                   help="raw-engine batch sizes")
    p.add_argument("--raw-duration-s", type=float, default=3.0, help="per raw batch size")
    p.add_argument("--out", type=Path, required=True, help="results JSON (CSV written beside)")
    p.add_argument("--no-progress", action="store_true", help="no live progress bar")
    _add_inputs(p)
    add_security_args(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="detserve-bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_run(sub)
    sw = sub.add_parser("sweep", help="server subprocess per batching setting, ladder each; "
                        "YAML format in detserve.client.bench.sweep's docstring")
    sw.add_argument("--config", type=Path, required=True, help="sweep YAML")
    sw.add_argument("--out", type=Path, required=True, help="output folder")
    sw.add_argument("--slo-ms", type=float, default=None, help="also write the report")
    sw.add_argument("--no-progress", action="store_true")
    rp = sub.add_parser("report", help="markdown table, PNG plots, recommendation; from any "
                        "results.json (run, sweep, the benchmark scripts, overload)")
    rp.add_argument("results", type=Path, help="results JSON; NAME.json writes NAME-report.md "
                    "and NAME-*.png (results.json: report.md and *.png)")
    rp.add_argument("--slo-ms", type=float, default=100.0, help="p99 SLO for the recommendation")
    rp.add_argument("--out", type=Path, default=None, help="folder (default: beside results)")
    bl = sub.add_parser("baseline", help="raw engine only (no server)")
    bl.add_argument("--package", default=None,
                    help="model package folder or builtin:<dir> (default: the served default's)")
    bl.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    bl.add_argument("--duration-s", type=float, default=3.0)
    _add_engine(bl, "--engine", "--engine-options")
    _add_inputs(bl)
    _add_inputs(add_soak_parser(sub))
    return parser


def _input_spec(args: argparse.Namespace) -> InputSpec:
    return InputSpec(args.inputs, args.input_count, args.width, args.height, args.format)


def plan_from_args(args: argparse.Namespace) -> LoadPlan:
    transport = args.transport or ("stream" if args.mode == "camera" else "unary")
    settings = LoadSettings(transport=transport, warmup_s=args.warmup_s,
                            duration_s=args.duration_s, max_requests=args.max_requests,
                            timeout_s=args.timeout_s, streams=args.streams, seed=args.seed,
                            channels=args.channels,
                            max_outstanding=args.max_outstanding,
                            stream_policy=args.stream_policy,
                            load_balancing=args.load_balancing)
    levels = {"closed": args.concurrency, "open": args.rate, "camera": args.cameras}[args.mode]
    return LoadPlan(args.mode, tuple(float(v) for v in levels), settings, args.arrivals,
                    args.fps, args.stale_ms)


async def _batching_of(target: str, model: str, security: ChannelSecurity | None = None
                       ) -> tuple[dict[str, Any] | None, str]:
    from detserve.client.client import AsyncDetectClient

    async with AsyncDetectClient(target, timeout_s=10.0, security=security) as client:
        try:
            info = await client.model_info(model)
        except DetectError as err:
            if err.code is grpc.StatusCode.UNAVAILABLE:
                raise
            targetinfo.remember(target, {"error": f"{err.code.name}: {err.details}"})
            return None, model
    targetinfo.remember(target, targetinfo.info_fields(info))  # engine, precision: see report
    return info.to_json()["batching"], info.name


async def cmd_run(args: argparse.Namespace) -> int:
    plan = plan_from_args(args)
    security = security_from_args(args, os.environ)
    spec = _input_spec(args)
    inputs = load_inputs(spec)
    requests = build_requests(inputs.images, args.model)
    config = {"target": args.target, "model": args.model, "plan": plan.to_json(),
              "max_client_cpu": args.max_client_cpu}
    doc = new_document(config, {**spec.to_json(), "mean_bytes": inputs.mean_bytes})
    if args.raw_package:
        from detserve.client.bench.baseline import raw_engine_baseline
        from detserve.client.bench.sweep import resolve_package

        raws = raw_engine_baseline(resolve_package(args.raw_package, Path.cwd()), inputs.images,
                                   args.raw_batch_sizes,
                                   args.raw_duration_s, args.raw_engine,
                                   parse_engine_options(args.raw_engine_options))
        doc["raw_engine"] = [r.to_json() for r in raws]
    batching, model_name = await _batching_of(args.target, args.model, security)
    levels = await run_plan(args.target, requests, plan, show_progress=not args.no_progress,
                            security=security,
                            limits=SaturationLimits(max_cpu_cores=args.max_client_cpu),
                            on_level=lambda lv: print(describe(lv.summary), flush=True))
    role = "no_batching" if batching and batching["max_batch_size"] == 1 else "external"
    doc["settings"].append(setting_entry("server", role, batching, args.target, levels,
                                         model_name))
    write_json(doc, args.out)
    write_csv(doc, args.out.with_suffix(".csv"))
    print(f"wrote {args.out} and {args.out.with_suffix('.csv')}")
    return 0


async def cmd_sweep(args: argparse.Namespace) -> int:
    from detserve.client.bench.sweep import load_sweep, run_sweep

    path = await run_sweep(load_sweep(args.config), args.out, not args.no_progress)
    print(f"wrote {path} and {path.with_suffix('.csv')}")
    if args.slo_ms is not None:
        from detserve.client.bench.report import write_report

        print(f"wrote {write_report(load_document(path), args.out, args.slo_ms)}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from detserve.client.bench.report import write_report

    doc = load_document(args.results)
    out = args.out or args.results.parent
    # File names start with the results name, so two reports in one folder do not collide.
    print(f"wrote {write_report(doc, out, args.slo_ms, args.results.stem)}")
    return 0


def cmd_baseline(args: argparse.Namespace) -> int:
    from detserve.client.bench.baseline import raw_engine_baseline
    from detserve.client.bench.served import load_served_default
    from detserve.client.bench.sweep import resolve_package

    inputs = load_inputs(_input_spec(args))
    package = args.package or str(load_served_default().model["package"])
    results = raw_engine_baseline(resolve_package(package, Path.cwd()), inputs.images,
                                  args.batch_sizes, args.duration_s, args.engine,
                                  parse_engine_options(args.engine_options))
    print(json.dumps([r.to_json() for r in results], indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            return asyncio.run(cmd_run(args))
        if args.command == "sweep":
            return asyncio.run(cmd_sweep(args))
        if args.command == "report":
            return cmd_report(args)
        if args.command == "soak":
            return asyncio.run(cmd_soak(args))
        return cmd_baseline(args)
    except (ValueError, FileNotFoundError, NotADirectoryError, TimeoutError, RuntimeError,
            DetectError) as err:
        print(f"detserve-bench: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
