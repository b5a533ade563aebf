"""How long the served default takes to refuse a call, apart from any load generator's lag: a
light probe sends calls the server refuses at once (an unknown model: NOT_FOUND, before any
decode) one at a time, while the server is idle and while a closed loop in another process
(`detserve-bench run`, at nice 10) keeps it saturated. Probes carry the benchmark's 640x480
JPEG or a few bytes, so the transfer's share shows. Each `--workers` value gets its own server.

    .venv/bin/python benchmarks/refusal_probe.py --out benchmarks/results/refusal_probe

Writes results.json and report.md (one row per server, load and payload: p50 / p90 / p99 /
max ms of the probe's round trips).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from _common import (
    add_batching_flags,
    base_parser,
    batch_setting,
    load_requests,
    model_entry,
    server_process,
)

from detserve.client.bench import hostload
from detserve.client.bench.recorder import latency_stats
from detserve.client.bench.served import load_served_default
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc

UNKNOWN_MODEL = "no-such-model"


async def probe(target: str, image: pb.Image, count: int, gap_s: float) -> list[float]:
    """Round trips (ms) of `count` refused calls, one at a time, `gap_s` apart."""
    options = [("grpc.max_send_message_length", 64 << 20)]
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
        request = pb.DetectRequest(model=UNKNOWN_MODEL, image=image)
        out = []
        for _ in range(count):
            start = time.perf_counter()
            try:
                await stub.Detect(request, timeout=10.0)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.NOT_FOUND:
                    raise RuntimeError(f"the probe expected NOT_FOUND, got {exc.code()}: "
                                       f"{exc.details()}") from exc
            out.append((time.perf_counter() - start) * 1e3)
            await asyncio.sleep(gap_s)
    return out


async def rows_for(target: str, image: pb.Image, load: str, args: Any) -> list[dict[str, Any]]:
    rows = []
    payloads = (("640x480 JPEG", image), ("8 bytes", pb.Image(encoded=b"\xff\xd8\xff\xe0tiny")))
    for name, payload in payloads * args.repeats:
        times = await probe(target, payload, args.probes, args.gap_s)
        s = latency_stats(times)
        rows.append({"load": load, "payload": name, "probes": len(times), "p50_ms": s.p50_ms,
                     "p90_ms": s.p90_ms, "p99_ms": s.p99_ms, "max_ms": max(times)})
        print(f"{load}, {name}: p50 {s.p50_ms:.1f} p90 {s.p90_ms:.1f} p99 {s.p99_ms:.1f} "
              f"max {max(times):.1f} ms", flush=True)
    return rows


async def one_server(workers: int, args: Any, image: pb.Image) -> list[dict[str, Any]]:
    fields = {**load_served_default().server, "workers": workers}
    name = f"workers{workers}"
    async with server_process(model_entry(args), batch_setting(args), args.out, name,
                              fields) as proc:
        rows = await rows_for(proc.target, image, "idle", args)
        load = await asyncio.create_subprocess_exec(
            "nice", "-n", "10", sys.executable, "-m", "detserve.client.bench.cli", "run",
            "--target", proc.target, "--mode", "closed", "--concurrency",
            str(args.concurrency), "--warmup-s", "1", "--duration-s", "600", "--no-progress",
            "--out", str(args.out / f"load-{name}"),
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await asyncio.sleep(args.settle_s)
            rows += await rows_for(proc.target, image, f"closed loop, {args.concurrency} "
                                   "callers", args)
        finally:
            load.terminate()
            await load.wait()
    return [{"workers": workers, **r} for r in rows]


def report(rows: list[dict[str, Any]], host: str) -> str:
    lines = ["# Refusal round trips (benchmarks/refusal_probe.py)", "",
             "An unknown model is refused (NOT_FOUND) before any decode; one probe call at a "
             "time, from a process of its own.", "", f"Host: {host}", "",
             "| workers | load | payload | probes | p50 ms | p90 ms | p99 ms | max ms |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['load']} | {r['payload']} | {r['probes']} | "
              f"{r['p50_ms']:.1f} | {r['p90_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.1f} |"
              for r in rows]
    return "\n".join(lines) + "\n"


async def run(args: Any) -> None:
    _, requests, _, _ = load_requests(args)
    before = hostload.snapshot()
    rows: list[dict[str, Any]] = []
    for workers in args.workers:
        rows += await one_server(workers, args, requests[0].image)
    summary = hostload.between(before, hostload.snapshot())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(
        {"rows": rows, "host_load": summary, "args": {k: str(v) for k, v in vars(args).items()}},
        indent=1))
    (args.out / "report.md").write_text(report(rows, hostload.describe(summary)))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.md'}")


def main() -> None:
    p = base_parser(__doc__ or "", "benchmarks/results/refusal_probe")
    add_batching_flags(p)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--concurrency", type=int, default=16, help="the closed loop's callers")
    p.add_argument("--probes", type=int, default=150, help="probe calls per row")
    p.add_argument("--repeats", type=int, default=2, help="rows per load and payload")
    p.add_argument("--gap-s", type=float, default=0.02, help="pause between probe calls")
    p.add_argument("--settle-s", type=float, default=5.0,
                   help="wait after the closed loop starts before probing")
    args = p.parse_args()
    args.out = Path(args.out)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
