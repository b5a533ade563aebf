"""Ray Serve against plain detserve-server on this CPU, in one run: what Ray's gRPC proxy costs
per request, and what a second replica gives.

    .venv/bin/python benchmarks/ray_serve.py --out benchmarks/results/ray_serve

Needs the `ray` extra. Three settings, one after the other, all serving the same config (the
served default's shapes@320 OpenVINO INT8 model, its batching, engine threads --engine-threads):
`plain` (detserve-server), `ray1` (Ray Serve, 1 replica, a local Ray instance with 2 CPUs) and
`ray2` (2 replicas). Each gets detserve-bench's closed loops at --concurrency with 640x480 JPEGs.

Proxy cost per request: the client's mean latency minus the server's own time for the request
(the reply's timing fields, the same request path in a replica and in detserve-server) is what
lies outside the request path: the gRPC hops. Ray's cost is that figure for `ray1` minus
`plain`, at concurrency 1 (no queueing). Writes each setting's detserve-bench JSON and CSV,
summary.json and summary.md.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

LOCK = Path("/tmp/detserve/BENCH_LOCK")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_yaml(port: int, engine_threads: int) -> dict[str, Any]:
    return {
        "host": "127.0.0.1", "port": port, "metrics_port": None, "log_requests": False,
        "models": [{
            "name": "shapes", "variant": "320", "package": "builtin:shapes_320_int8",
            "engine": "openvino",
            "engine_options": {"num_threads": engine_threads, "num_streams": 1,
                               "performance_hint": "LATENCY",
                               "static_batch_sizes": [1, 2, 4, 8], "precision": "int8",
                               "pixel_input": True},
            "batching": {"max_batch_size": 8, "max_queue_delay_ms": 2, "max_queue_size": 256,
                         "max_queue_wait_ms": 400},
            "default": True,
        }],
    }


@contextmanager
def bench_lock() -> Iterator[None]:
    while LOCK.exists():
        time.sleep(15)
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    LOCK.write_text(f"benchmarks/ray_serve.py pid {os.getpid()}\n")
    try:
        yield
    finally:
        LOCK.unlink(missing_ok=True)


def wait_serving(target: str, timeout_s: float = 300.0) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.5)
    raise TimeoutError(f"{target} not serving within {timeout_s} s")


def bench(target: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [str(BIN / "detserve-bench"), "run", "--target", target, "--no-progress",
           "--concurrency", *map(str, args.concurrency), "--duration-s", str(args.duration_s),
           "--warmup-s", str(args.warmup_s), "--out", str(out)]
    subprocess.run(cmd, check=True)
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def levels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for level in doc["settings"][0]["levels"]:
        latency, server = level["latency"], level["server_ms"]
        rows.append({
            "concurrency": level["spec"]["concurrency"],
            "throughput_rps": round(level["throughput_rps"], 2),
            "p50_ms": latency["p50_ms"], "p99_ms": latency["p99_ms"],
            "mean_ms": round(latency["mean_ms"], 3),
            "server_ms": round(server["server_total_ms"], 3),
            "outside_server_ms": round(latency["mean_ms"] - server["server_total_ms"], 3),
            "errors": sum(level["errors"].values()),
        })
    return rows


def run_plain(config: Path, port: int, args: argparse.Namespace) -> dict[str, Any]:
    proc = subprocess.Popen([str(BIN / "detserve-server"), "--config", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_serving(f"127.0.0.1:{port}")
        return bench(f"127.0.0.1:{port}", args, args.out / "plain.json")
    finally:
        proc.terminate()
        proc.wait(60)


def run_ray(config_path: Path, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    import ray
    from ray import serve

    from detserve.server.config import load_config
    from detserve.server.rayserve.deployment import RayServeSettings, start

    config = load_config(config_path)
    target = f"127.0.0.1:{config.port}"
    docs = {}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for replicas in (1, 2):
            start(config, RayServeSettings(num_replicas=replicas, replica_cpus=1.0,
                                           http_port=free_port()))
            docs[f"ray{replicas}"] = bench(target, args, args.out / f"ray{replicas}.json")
    finally:
        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()
    return docs


def summary_md(results: dict[str, list[dict[str, Any]]], cost_ms: float) -> str:
    lines = ["# Ray Serve against plain detserve-server (benchmarks/ray_serve.py)", "",
             "| setting | concurrency | req/s | p50 ms | p99 ms | mean ms | server ms | "
             "outside server ms | errors |", "|---|---|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        for r in rows:
            lines.append(f"| {name} | {r['concurrency']} | {r['throughput_rps']} | "
                         f"{r['p50_ms']} | {r['p99_ms']} | {r['mean_ms']} | {r['server_ms']} | "
                         f"{r['outside_server_ms']} | {r['errors']} |")
    lines += ["", f"Ray's proxy cost per request (concurrency 1, outside-server mean, ray1 − "
              f"plain): {cost_ms:.2f} ms", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/ray_serve"))
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    p.add_argument("--engine-threads", type=int, default=1)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    config_path = args.out / "config.yaml"
    with bench_lock():
        port = free_port()
        config_path.write_text(yaml.safe_dump(config_yaml(port, args.engine_threads),
                                              sort_keys=False))
        docs = {"plain": run_plain(config_path, port, args), **run_ray(config_path, args)}
    results = {name: levels(doc) for name, doc in docs.items()}
    first = {name: rows[0] for name, rows in results.items()}
    cost_ms = first["ray1"]["outside_server_ms"] - first["plain"]["outside_server_ms"]
    summary = {"results": results, "ray_proxy_cost_ms_per_request": round(cost_ms, 3),
               "cpu_count": os.cpu_count(), "os_loadavg_at_end": os.getloadavg()}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(summary_md(results, cost_ms))
    print(summary_md(results, cost_ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
