"""`python -m detserve.server.rayserve`: serve a detserve-server config on Ray Serve.

Connects to a Ray cluster (`--address`, else $RAY_ADDRESS, else a local instance), starts
Serve's gRPC proxy on the config's port and deploys the replicas; runs until SIGTERM or Ctrl-C,
then shuts Serve down (each replica drains within drain_grace_s).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from detserve.server.config import ConfigError, load_config
from detserve.server.rayserve.deployment import Autoscaling, RayServeSettings, start


def _scale(text: str) -> tuple[int, int]:
    low, sep, high = text.partition(":")
    try:
        pair = (int(low), int(high)) if sep else (0, 0)
    except ValueError:
        pair = (0, 0)
    if not (1 <= pair[0] <= pair[1]):
        raise argparse.ArgumentTypeError(f"must be MIN:MAX with 1 <= MIN <= MAX, got {text!r}")
    return pair


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m detserve.server.rayserve",
                                description="Serve a detserve-server config on Ray Serve.")
    p.add_argument("--config", type=Path, help="detserve-server YAML config (default: "
                   "$DETSERVE_CONFIG, else the served default)")
    p.add_argument("--port", type=int, default=None, help="gRPC proxy port (config's port)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: "
                   "$RAY_ADDRESS, else a local Ray instance)")
    p.add_argument("--num-cpus", type=int, default=None, help="local Ray instance's CPUs")
    scaling = p.add_mutually_exclusive_group()
    scaling.add_argument("--replicas", type=int, default=1, help="fixed replicas (1)")
    scaling.add_argument("--autoscale", type=_scale, default=None, metavar="MIN:MAX",
                         help="autoscale on ongoing requests per replica between MIN and MAX")
    p.add_argument("--target-ongoing", type=float, default=None,
                   help="autoscaling target per replica (default: the default model's "
                        "max_batch_size)")
    p.add_argument("--replica-cpus", type=float, default=1.0,
                   help="CPUs Ray reserves per replica (1)")
    p.add_argument("--request-timeout-s", type=float, default=30.0,
                   help="the replicas' deadline per call (Ray does not pass the client's on)")
    p.add_argument("--http-port", type=int, default=8000, help="Ray's HTTP proxy port (8000)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config, os.environ, {"port": args.port})
    except ConfigError as exc:
        print(f"detserve-ray: error: {exc}", file=sys.stderr)
        return 2
    try:
        import ray
        from ray import serve
    except ImportError:
        print("detserve-ray: error: Ray Serve is not installed: pip install 'detserve[ray]'",
              file=sys.stderr)
        return 2
    autoscaling = None
    if args.autoscale is not None:
        autoscaling = Autoscaling(args.autoscale[0], args.autoscale[1], args.target_ongoing)
    settings = RayServeSettings(num_replicas=args.replicas, autoscaling=autoscaling,
                                request_timeout_s=args.request_timeout_s,
                                replica_cpus=args.replica_cpus, http_port=args.http_port)
    ray.init(address=args.address, num_cpus=args.num_cpus)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        start(config, settings)
        print(f"detserve-ray: serving on {config.host}:{config.port}", file=sys.stderr,
              flush=True)
        stop.wait()
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    return 0
