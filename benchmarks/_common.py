"""Shared plumbing of the benchmark scripts: arguments, a server subprocess per setting, inputs,
and writing results.json / results.csv / report.md into the output folder.

Every script measures the served default configuration (server/default.yaml's default model:
package, engine, engine options, batching, and the server-wide serving fields) unless flags
override parts of it; see detserve.client.bench.served.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from detserve.client.bench import proccpu, targetinfo
from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.report import write_report
from detserve.client.bench.resultsdoc import new_document, write_csv, write_json
from detserve.client.bench.runner import LevelResult, LoadPlan, run_plan
from detserve.client.bench.served import (
    ServedDefault,
    load_served_default,
    override_batching,
    parse_engine_options,
    with_overrides,
)
from detserve.client.bench.server_proc import BatchSetting, ServerProcess, free_port, server_config
from detserve.client.bench.sweep import resolve_package
from detserve.protos import detection_pb2 as pb

PACKAGES = Path(__file__).resolve().parents[1] / "models" / "packages"


def model_cli(*args: str) -> None:
    """`detserve-model ARGS` in this interpreter, echoed; raises if it fails."""
    print("+ detserve-model " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "detserve.models.cli", *args], check=True)


def default_weights_at(side: int, out: Path, by: str) -> Path:
    """The default model's weights (models/packages/shapes_320/model.pt) exported as an FP32
    package at input `side` into `out`, once; `by` names the script, for its model card."""
    if not (out / "manifest.yaml").is_file():
        model_cli("package", str(PACKAGES / "shapes_320" / "model.pt"), "--out", str(out),
                  "--input-size", str(side), "--multi-label", "--train-command",
                  f"the weights of models/packages/shapes_320 (model.pt), re-exported at {side} "
                  f"by {by}", "--data", "as models/packages/shapes_320")
    return out


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--package", default=None,
                   help="model package (or builtin:<dir>); default: the served default's")
    p.add_argument("--engine", default=None,
                   help="engine kind; default: the served default's (another kind drops its "
                        "engine options unless --engine-options is given)")
    p.add_argument("--engine-options", default=None,
                   help="engine options as a JSON object; default: the served default's")
    p.add_argument("--out", type=Path, default=Path(default_out), help="output folder")
    p.add_argument("--warmup-s", type=float, default=2.0, help="warm-up per load level")
    p.add_argument("--duration-s", type=float, default=15.0, help="measurement per load level")
    p.add_argument("--input-count", type=int, default=32, help="distinct synthetic images")
    p.add_argument("--width", type=int, default=640, help="synthetic image width")
    p.add_argument("--height", type=int, default=480, help="synthetic image height")
    p.add_argument("--slo-ms", type=float, default=100.0, help="p99 SLO for the report")
    p.add_argument("--no-progress", action="store_true", help="no live progress bars")
    return p


def add_batching_flags(p: argparse.ArgumentParser, batch_flag: str = "--max-batch-size") -> None:
    """Batching flags whose default (None) keeps the served default's value."""
    g = p.add_argument_group("batching (default: the served default's)")
    g.add_argument(batch_flag, dest="max_batch_size", type=int, default=None)
    g.add_argument("--delay-ms", type=float, default=None, help="max_queue_delay_ms")
    g.add_argument("--instances", type=int, default=None)
    g.add_argument("--max-queue-wait-ms", type=float, default=None,
                   help="max_queue_wait_ms (emitted only when set here or in the default)")


def served(args: argparse.Namespace) -> ServedDefault:
    """The served default with --package/--engine/--engine-options applied."""
    return with_overrides(load_served_default(), args.package, args.engine,
                          parse_engine_options(args.engine_options))


def batch_setting(args: argparse.Namespace) -> BatchSetting:
    """The served default's batching with the script's batching flags applied."""
    return override_batching(served(args).setting(), args.max_batch_size, args.delay_ms,
                             args.instances, args.max_queue_wait_ms)


def role_of(args: argparse.Namespace, setting: BatchSetting) -> str:
    """The results role of `setting`: served_default when nothing overrides the default."""
    untouched = args.package is None and args.engine is None and args.engine_options is None
    return "served_default" if untouched and setting == served(args).setting() else "sweep"


def model_entry(args: argparse.Namespace) -> dict[str, Any]:
    """The models[] entry to serve (batching is added per setting), package path resolved."""
    entry = dict(served(args).model)
    entry["package"] = str(resolve_package(str(entry["package"]), Path.cwd()))
    return entry


def load_requests(args: argparse.Namespace) -> tuple[InputSpec, list[pb.DetectRequest],
                                                      dict[str, Any], Any]:
    spec = InputSpec("synthetic", args.input_count, args.width, args.height, "jpeg")
    inputs = load_inputs(spec)
    return spec, build_requests(inputs.images), {**spec.to_json(),
                                                 "mean_bytes": inputs.mean_bytes}, inputs


def new_doc(args: argparse.Namespace, inputs_json: dict[str, Any],
            extra: dict[str, Any]) -> dict[str, Any]:
    config = {"script_args": {k: str(v) for k, v in vars(args).items()},
              "served": served(args).to_json(), **extra}
    return new_document(config, inputs_json)


@asynccontextmanager
async def server_process(model: dict[str, Any], setting: BatchSetting, out_dir: Path, name: str,
                         server: dict[str, Any] | None = None) -> AsyncIterator[ServerProcess]:
    """A detserve-server subprocess for `setting`; stopped on exit. `server`: top-level fields
    (default: the served default's, e.g. stream_policy and admission limits). What it says it
    serves (GetModelInfo) is remembered for the setting entries of its target."""
    fields = load_served_default().server if server is None else server
    proc = ServerProcess(server_config(model, setting, free_port(), fields), out_dir, name)
    await proc.start()
    try:
        await targetinfo.fetch_and_remember(proc.target)
        yield proc
    finally:
        proc.stop()


@asynccontextmanager
async def serving(model: dict[str, Any], setting: BatchSetting, out_dir: Path, name: str,
                  server: dict[str, Any] | None = None) -> AsyncIterator[str]:
    """Like server_process, yielding the server's target (host:port)."""
    async with server_process(model, setting, out_dir, name, server) as proc:
        yield proc.target


def save(doc: dict[str, Any], out_dir: Path, slo_ms: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(doc, out_dir / "results.json")
    write_csv(doc, out_dir / "results.csv")
    report = write_report(doc, out_dir, slo_ms)
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.csv'} and {report}")


async def measure_level(pid: int, target: str, requests: list[pb.DetectRequest],
                        plan: LoadPlan, label: str, progress: bool) -> tuple[LevelResult,
                                                                           dict[str, Any]]:
    """One level, with the server's CPU by role over it."""
    before = proccpu.server_cpu(pid)
    (level,) = await run_plan(target, requests, plan, label, progress)
    cpu = proccpu.server_cpu(pid).minus(before)
    sent = len(level.records)
    per_req = {k: round(v / sent * 1e6, 1) if sent else None for k, v in (
        ("frontend_us_per_request", cpu.frontend_s), ("engine_us_per_request", cpu.engine_s),
        ("supervisor_us_per_request", cpu.supervisor_s))}
    return level, {"requests_sent": sent, "frontend_cpu_s": round(cpu.frontend_s, 3),
                   "engine_cpu_s": round(cpu.engine_s, 3),
                   "supervisor_cpu_s": round(cpu.supervisor_s, 3),
                   "frontend_processes": cpu.frontends, **per_req}
