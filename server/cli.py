"""`detserve-server`: serve detection models over gRPC until SIGTERM/SIGINT, then drain.

Configuration: the YAML file (`--config`, else $DETSERVE_CONFIG, else the packaged default.yaml
that serves the embedded shapes model), then environment variables `DETSERVE_<FIELD>`, then the
flags below; flags win. `--model` serves packages given on the command line instead of the file's;
`--engine`, `--max-batch-size` and `--max-queue-delay-ms` apply to those packages.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from detserve.engines.manifest import ManifestError
from detserve.server.batching_config import BatchingConfig
from detserve.server.cli_security import add_security_flags, security_overrides
from detserve.server.config import (
    STREAM_POLICIES,
    ConfigError,
    ModelConfig,
    load_config,
    parse_batching,
    resolve_package,
)


def parse_model_flag(
    value: str,
    engine: str | None = None,
    batching: BatchingConfig | None = None,
    max_batch_size_given: bool = False,
) -> ModelConfig:
    """`[name[@variant]=]PATH` (PATH may be builtin:<dir>) -> ModelConfig. `engine` None: the
    package's own; a max_batch_size not given is lowered to what the model takes."""
    label, sep, path = value.rpartition("=")
    if not sep:
        label, path = "", value
    name, _, variant = label.partition("@")
    if "@" in variant:
        raise ConfigError(f"--model {value!r}: expected [name[@variant]=]PATH")
    return ModelConfig(
        package=resolve_package(path, Path.cwd(), "--model"),
        name=name or None,
        variant=variant or None,
        engine=engine,
        batching=batching or BatchingConfig(),
        max_batch_size_given=max_batch_size_given,
    )


def model_batching(max_batch_size: int | None, max_queue_delay_ms: float | None
                   ) -> tuple[BatchingConfig | None, bool]:
    """The batching of the --model packages from the batching flags: (None, False) when neither
    is given, else the config plus whether --max-batch-size was given."""
    raw: dict[str, Any] = {}
    if max_batch_size is not None:
        raw["max_batch_size"] = max_batch_size
    if max_queue_delay_ms is not None:
        raw["max_queue_delay_ms"] = max_queue_delay_ms
    if not raw:
        return None, False
    return parse_batching(raw, "--model batching"), max_batch_size is not None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="detserve-server",
        description="gRPC object-detection server with dynamic batching.",
        epilog="Every flag can also be set by environment (e.g. DETSERVE_PORT) or in the YAML "
        "config; precedence is flags > environment > file > defaults.",
    )
    p.add_argument("--config", type=Path, help="YAML config file (default: $DETSERVE_CONFIG, "
                   "else the packaged default.yaml)")
    p.add_argument("--host", help="listen address (default 0.0.0.0)")
    p.add_argument("--port", type=int, help="gRPC port; 0 picks a free one (default 50051)")
    p.add_argument("--metrics-port", help="Prometheus /metrics port; 0 = ephemeral, 'off' = none")
    p.add_argument("--rest-port", help="Open Inference Protocol HTTP/JSON port (KServe v2 REST); "
                   "0 = ephemeral, 'off' = none (default off)")
    p.add_argument("--max-message-bytes", type=int, help="largest accepted request")
    p.add_argument("--max-pixels", type=int, help="largest accepted image, in decoded pixels")
    p.add_argument("--stream-policy", choices=STREAM_POLICIES,
                   help="DetectStream default policy (callers may override per stream)")
    p.add_argument("--stream-max-in-flight", type=int,
                   help="block policy: frames of one stream processed at once")
    p.add_argument("--drain-grace-s", type=float,
                   help="seconds requests in flight may take to finish after SIGTERM")
    p.add_argument("--model", action="append", default=[], metavar="[NAME[@VARIANT]=]PATH",
                   help="serve this model package instead of the config file's models "
                   "(repeatable; the first is the default)")
    p.add_argument("--engine", default=None,
                   help="engine kind for --model packages (default: the package's own: "
                   "openvino for an OpenVINO IR model.xml, else onnxruntime)")
    p.add_argument("--max-batch-size", type=int, default=None, metavar="N",
                   help="--model packages: images per engine run (default 8, lowered to what "
                   "the model takes, e.g. 1 for a fixed-batch export)")
    p.add_argument("--max-queue-delay-ms", type=float, default=None, metavar="MS",
                   help="--model packages: how long the first request of a batch may wait for "
                   "company (default 2)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="front-end processes sharing the port, feeding one engine process "
                   "(default 1: one process)")
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines")
    add_security_flags(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from detserve.server.app import ServerStartError, serve

    args = build_parser().parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "rest_port": args.rest_port,
        "max_message_bytes": args.max_message_bytes,
        "max_pixels": args.max_pixels,
        "stream_policy": args.stream_policy,
        "stream_max_in_flight": args.stream_max_in_flight,
        "drain_grace_s": args.drain_grace_s,
        "log_requests": False if args.quiet else None,
        "log_level": args.log_level,
        **security_overrides(args),
        "workers": args.workers,
    }
    try:
        models = flag_models(args)
        if models:
            models[0] = replace(models[0], default=True)
        config = load_config(args.config, os.environ, overrides, models)
        asyncio.run(serve(config))
    except (ConfigError, ManifestError) as exc:
        print(f"detserve-server: error: {exc}", file=sys.stderr)
        return 2
    except ServerStartError as exc:
        print(f"detserve-server: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C during the drain
        return 130
    return 0


def flag_models(args: argparse.Namespace) -> list[ModelConfig]:
    batching, size_given = model_batching(args.max_batch_size, args.max_queue_delay_ms)
    if not args.model and (batching is not None or args.engine is not None):
        raise ConfigError(
            "--engine, --max-batch-size and --max-queue-delay-ms apply to --model packages; "
            "set engine and batching in the config file for its models"
        )
    return [parse_model_flag(m, args.engine, batching, size_given) for m in args.model]


if __name__ == "__main__":
    sys.exit(main())
