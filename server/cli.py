"""`detserve-server`: serve detection models over gRPC until SIGTERM/SIGINT, then drain.

Configuration: the YAML file (`--config`, else $DETSERVE_CONFIG, else the packaged default.yaml
that serves the embedded shapes model), then environment variables `DETSERVE_<FIELD>`, then the
flags below; flags win. `--model` serves packages given on the command line instead of the file's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from detserve.engines.manifest import ManifestError
from detserve.server.config import (
    STREAM_POLICIES,
    ConfigError,
    ModelConfig,
    load_config,
    resolve_package,
)


def parse_model_flag(value: str, engine: str) -> ModelConfig:
    """`[name[@variant]=]PATH` (PATH may be builtin:<dir>) -> ModelConfig."""
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
    )


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
    p.add_argument("--engine", default="onnxruntime",
                   help="engine kind for --model packages (default onnxruntime)")
    p.add_argument("--log-level", help="DEBUG, INFO (default), WARNING, ERROR")
    p.add_argument("--quiet", action="store_true", help="no per-request log lines")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from detserve.server.app import ServerStartError, serve

    args = build_parser().parse_args(argv)
    overrides = {
        "host": args.host,
        "port": args.port,
        "metrics_port": args.metrics_port,
        "max_message_bytes": args.max_message_bytes,
        "max_pixels": args.max_pixels,
        "stream_policy": args.stream_policy,
        "stream_max_in_flight": args.stream_max_in_flight,
        "drain_grace_s": args.drain_grace_s,
        "log_requests": False if args.quiet else None,
        "log_level": args.log_level,
    }
    try:
        models = [parse_model_flag(m, args.engine) for m in args.model]
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


if __name__ == "__main__":
    sys.exit(main())
