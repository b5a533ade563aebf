"""Shared plumbing of the benchmark scripts: arguments, a server subprocess per setting, inputs,
and writing results.json / results.csv / report.md into the output folder."""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.report import write_report
from detserve.client.bench.resultsdoc import new_document, write_csv, write_json
from detserve.client.bench.server_proc import BatchSetting, ServerProcess, free_port, server_config
from detserve.client.bench.sweep import resolve_package
from detserve.protos import detection_pb2 as pb

DEFAULT_PACKAGE = "builtin:shapes_320"


def base_parser(description: str, default_out: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--package", default=DEFAULT_PACKAGE, help="model package (or builtin:<dir>)")
    p.add_argument("--engine", default="onnxruntime", help="engine kind")
    p.add_argument("--out", type=Path, default=Path(default_out), help="output folder")
    p.add_argument("--warmup-s", type=float, default=2.0, help="warm-up per load level")
    p.add_argument("--duration-s", type=float, default=15.0, help="measurement per load level")
    p.add_argument("--input-count", type=int, default=32, help="distinct synthetic images")
    p.add_argument("--width", type=int, default=640, help="synthetic image width")
    p.add_argument("--height", type=int, default=480, help="synthetic image height")
    p.add_argument("--slo-ms", type=float, default=100.0, help="p99 SLO for the report")
    p.add_argument("--no-progress", action="store_true", help="no live progress bars")
    return p


def model_entry(args: argparse.Namespace) -> dict[str, Any]:
    return {"package": str(resolve_package(args.package, Path.cwd())), "engine": args.engine}


def load_requests(args: argparse.Namespace) -> tuple[InputSpec, list[pb.DetectRequest],
                                                      dict[str, Any], Any]:
    spec = InputSpec("synthetic", args.input_count, args.width, args.height, "jpeg")
    inputs = load_inputs(spec)
    return spec, build_requests(inputs.images), {**spec.to_json(),
                                                 "mean_bytes": inputs.mean_bytes}, inputs


def new_doc(args: argparse.Namespace, inputs_json: dict[str, Any],
            extra: dict[str, Any]) -> dict[str, Any]:
    config = {"script_args": {k: str(v) for k, v in vars(args).items()}, **extra}
    return new_document(config, inputs_json)


@asynccontextmanager
async def serving(model: dict[str, Any], setting: BatchSetting, out_dir: Path, name: str,
                  server: dict[str, Any] | None = None) -> AsyncIterator[str]:
    """A detserve-server subprocess for `setting`; yields its target; stops it on exit."""
    proc = ServerProcess(server_config(model, setting, free_port(), server), out_dir, name)
    await proc.start()
    try:
        yield proc.target
    finally:
        proc.stop()


def save(doc: dict[str, Any], out_dir: Path, slo_ms: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(doc, out_dir / "results.json")
    write_csv(doc, out_dir / "results.csv")
    report = write_report(doc, out_dir, slo_ms)
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'results.csv'} and {report}")
