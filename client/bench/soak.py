"""`detserve-bench soak`: one long load level, cut into minutes afterwards.

A short benchmark measures a cold machine. A soak holds a moderate load for minutes, so that
what only time shows (thermal throttling, a leak, a cache that stops fitting, a noisy neighbour)
shows as a trend: per-minute throughput and p50/p95/p99, the server's RSS and CPU over time, the
worst minute, and first minute ÷ last minute. Closed loop (N callers back to back) or open loop
(requests at a rate, latency from the planned send). Against `--target`, the server's RSS and
CPU are traced when `--server-pid` names its process; `--serve` starts the served default
itself (server/default.yaml's default model, as the benchmark scripts do) and traces it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import grpc.aio

from detserve.client.bench import targetinfo
from detserve.client.bench.loads import LevelRun, LoadSettings
from detserve.client.bench.proctrace import ProcSample, ProcTracer, samples_from_json
from detserve.client.bench.recorder import (
    RequestRecord,
    SaturationLimits,
    records_from_columns,
    summarize,
)
from detserve.client.bench.runner import MAX_MESSAGE_BYTES, LevelResult, LoadPlan, run_level
from detserve.client.bench.soak_stats import (
    DEFAULT_BUCKET_S,
    BucketStats,
    SoakSummary,
    bucket_stats,
    bucket_word,
    summarize_soak,
)
from detserve.client.client import channel_options
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc

SOAK_MODES = ("closed", "open")


@dataclass(frozen=True)
class SoakPlan:
    minutes: float = 5.0
    mode: str = "closed"
    concurrency: int = 4
    rate_rps: float = 20.0
    arrivals: str = "poisson"
    warmup_s: float = 10.0
    bucket_s: float = DEFAULT_BUCKET_S
    timeout_s: float = 10.0
    sample_s: float = 1.0  # RSS / CPU sampling period
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in SOAK_MODES:
            raise ValueError(f"soak mode must be one of {list(SOAK_MODES)}, got {self.mode!r}")
        if not self.minutes > 0 or not self.bucket_s > 0 or not self.sample_s > 0:
            raise ValueError(f"need minutes, bucket_s and sample_s > 0, got {self.minutes!r}, "
                             f"{self.bucket_s!r} and {self.sample_s!r}")
        if self.mode == "closed" and self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency!r}")
        if self.mode == "open" and not self.rate_rps > 0:
            raise ValueError(f"rate must be > 0 req/s, got {self.rate_rps!r}")

    @property
    def duration_s(self) -> float:
        return self.minutes * 60.0

    @property
    def level(self) -> float:
        return float(self.concurrency if self.mode == "closed" else self.rate_rps)

    def load_plan(self) -> LoadPlan:
        settings = LoadSettings(warmup_s=self.warmup_s, duration_s=self.duration_s,
                                max_requests=1_000_000_000, timeout_s=self.timeout_s,
                                seed=self.seed)
        return LoadPlan(self.mode, (self.level,), settings, self.arrivals)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SoakRun:
    level: LevelResult
    samples: list[ProcSample]
    buckets: list[BucketStats]
    summary: SoakSummary
    traced_pid: int | None

    def to_json(self, plan: SoakPlan) -> dict[str, Any]:
        return {"plan": plan.to_json(), "traced_pid": self.traced_pid,
                "window_start_s": plan.warmup_s, "samples": [s.to_json() for s in self.samples],
                "buckets": [b.to_json() for b in self.buckets],
                "summary": self.summary.to_json()}


def analyse(records: Sequence[RequestRecord], samples: Sequence[ProcSample],
            plan: SoakPlan) -> tuple[list[BucketStats], SoakSummary]:
    """Buckets and summary of a soak's raw records and samples (also used on a saved file)."""
    buckets = bucket_stats(records, samples, plan.warmup_s, plan.duration_s, plan.bucket_s)
    return buckets, summarize_soak(records, buckets, plan.bucket_s)


def analyse_document(doc: dict[str, Any]) -> tuple[SoakPlan, list[BucketStats], SoakSummary,
                                                    list[ProcSample]]:
    """Recompute a saved soak's buckets from its raw records and samples."""
    soak = doc["soak"]
    plan = SoakPlan(**soak["plan"])
    records = records_from_columns(doc["settings"][0]["levels"][0]["records"])
    samples = samples_from_json(soak["samples"])
    buckets, summary = analyse(records, samples, plan)
    return plan, buckets, summary, samples


def _bucket_line(k: int, n: int, replies: int, bucket_s: float, tracer: ProcTracer) -> str:
    latest = tracer.latest()
    rss = "" if latest is None or latest.rss_mb is None else f", server RSS {latest.rss_mb:.1f} MB"
    return (f"{bucket_word(bucket_s)} {k + 1}/{n}: {replies} replies, "
            f"{replies / bucket_s:.1f} req/s{rss}")


async def _ticker(origin: float, plan: SoakPlan, count: Callable[[], int], tracer: ProcTracer,
                  n: int, say: Callable[[str], None]) -> None:
    """One line per completed bucket while the soak runs (the full stats come at the end)."""
    seen = 0
    for k in range(n - 1):  # the last bucket is reported with the results
        due = origin + plan.warmup_s + (k + 1) * plan.bucket_s
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        now = count()
        say(_bucket_line(k, n, now - seen, plan.bucket_s, tracer))
        seen = now


async def run_soak(target: str, requests: Sequence[pb.DetectRequest], plan: SoakPlan,
                   server_pid: int | None = None, say: Callable[[str], None] | None = None,
                   limits: SaturationLimits | None = None) -> SoakRun:
    """Hold `plan`'s load on `target` for its minutes, tracing `server_pid`'s RSS and CPU."""
    load = plan.load_plan()
    replies = 0

    def progress(n: int) -> None:
        nonlocal replies
        replies += n

    n_buckets = max(1, round(plan.duration_s / plan.bucket_s))
    async with grpc.aio.insecure_channel(
        target, options=channel_options(MAX_MESSAGE_BYTES)
    ) as channel:
        stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
        # The level's clock starts when run_level builds its bookkeeping, microseconds after
        # this origin: the samples and the records share one clock to well under a sample.
        origin = time.perf_counter()
        with ProcTracer(server_pid, origin, plan.sample_s) as tracer:
            ticker = asyncio.create_task(_ticker(origin, plan, lambda: replies, tracer,
                                                 n_buckets, say or (lambda _: None)))
            try:
                run: LevelRun = await run_level(stub, requests, load, plan.level, progress)
            finally:
                ticker.cancel()
    samples = tracer.samples()
    summary = summarize(run.spec, run.records, run.client, run.offered_window_s, limits=limits)
    buckets, soak_summary = analyse(run.records, samples, plan)
    return SoakRun(LevelResult(summary, run.records), samples, buckets, soak_summary, server_pid)


@asynccontextmanager
async def served_default_server(out_dir: Path) -> AsyncIterator[tuple[str, int, dict[str, Any]]]:
    """The served default (server/default.yaml's default model and serving fields) in a
    subprocess on a free loopback port: yields (target, pid, batching); stopped on exit."""
    from detserve.client.bench.served import load_served_default
    from detserve.client.bench.server_proc import ServerProcess, free_port, server_config
    from detserve.client.bench.sweep import resolve_package

    served = load_served_default()
    model = dict(served.model)
    model["package"] = str(resolve_package(str(model["package"]), Path.cwd()))
    setting = served.setting()
    proc = ServerProcess(server_config(model, setting, free_port(), served.server), out_dir,
                         "soak")
    await proc.start()
    try:
        if proc.proc is None:
            raise RuntimeError("the server process did not start")
        await targetinfo.fetch_and_remember(proc.target)
        yield proc.target, proc.proc.pid, setting.to_yaml()
    finally:
        proc.stop()
