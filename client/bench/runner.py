"""Runs a ladder of load levels against one server and collects the summaries and raw records."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from tqdm import tqdm

from detserve.client.bench.loads import (
    MODES,
    LevelRun,
    LoadSettings,
    Stubs,
    run_camera,
    run_closed,
    run_open,
)
from detserve.client.bench.recorder import (
    LevelSummary,
    RequestRecord,
    SaturationLimits,
    records_to_columns,
    summarize,
)
from detserve.client.bench.schedule import ARRIVALS
from detserve.client.client import channel_options
from detserve.client.security import ChannelSecurity, open_aio_channel
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class LoadPlan:
    """A ladder of levels: concurrencies (closed), rates in req/s (open), camera counts."""

    mode: str
    levels: tuple[float, ...]
    settings: LoadSettings
    arrivals: str = "poisson"
    fps: float = 15.0
    stale_after_ms: float | None = None  # cameras: default one frame period
    pause_s: float = 0.5  # between levels, so one level's tail does not hit the next

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        if self.arrivals not in ARRIVALS:
            raise ValueError(f"arrivals must be one of {list(ARRIVALS)}, got {self.arrivals!r}")
        if not self.levels or any(not (v > 0 and math.isfinite(v)) for v in self.levels):
            raise ValueError(f"levels must be positive numbers, got {list(self.levels)!r}")
        if self.mode != "open" and any(v != int(v) for v in self.levels):
            raise ValueError(f"{self.mode} levels are counts (whole numbers), "
                             f"got {list(self.levels)!r}")

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["levels"] = list(self.levels)
        return out

    def stale_ms(self) -> float | None:
        if self.mode != "camera":
            return None
        return self.stale_after_ms if self.stale_after_ms is not None else 1000.0 / self.fps


@dataclass
class LevelResult:
    summary: LevelSummary
    records: list[RequestRecord]
    # The server process's peak VmRSS during the level (MB), where the harness sampled it.
    server_rss_peak_mb: float | None = None
    round_index: int = 0  # the ladder's pass in a sweep with rounds (client/bench/rounds.py)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = self.summary.to_json()
        out["round"] = self.round_index
        if self.server_rss_peak_mb is not None:
            out["server_rss_peak_mb"] = round(self.server_rss_peak_mb, 2)
        out["records"] = records_to_columns(self.records)
        return out


async def run_level(
    stub: Stubs, requests: Sequence[pb.DetectRequest], plan: LoadPlan,
    level: float, progress: Callable[[int], None] | None = None,
) -> LevelRun:
    s = plan.settings
    if plan.mode == "closed":
        return await run_closed(stub, requests, int(level), s, progress)
    if plan.mode == "open":
        return await run_open(stub, requests, level, plan.arrivals, s, progress)
    return await run_camera(stub, requests, int(level), plan.fps, s, progress)


async def run_plan(
    target: str, requests: Sequence[pb.DetectRequest], plan: LoadPlan, label: str = "",
    show_progress: bool = True, limits: SaturationLimits | None = None,
    on_level: Callable[[LevelResult], None] | None = None,
    security: ChannelSecurity | None = None,
) -> list[LevelResult]:
    """Every level of `plan` against `target`, in order, on `plan.settings.channels` channels
    shared by the levels (TLS and a token as `security` says). Each channel has a subchannel
    pool of its own, so its own connection: a server with front-end workers gets calls on
    several workers (loads.py)."""
    results: list[LevelResult] = []
    options = [*channel_options(MAX_MESSAGE_BYTES, plan.settings.load_balancing),
               ("grpc.use_local_subchannel_pool", 1)]
    channels = [open_aio_channel(target, options, security)
                for _ in range(plan.settings.channels)]
    try:
        await _connect(channels)
        stub = [pb_grpc.DetectorStub(c) for c in channels]  # type: ignore[no-untyped-call]
        for level in plan.levels:
            bar = tqdm(desc=f"{label} {plan.mode} {level:g}".strip(), unit="req",
                       disable=not show_progress, leave=False, mininterval=0.5)
            try:
                run = await run_level(stub, requests, plan, level, bar.update)
            finally:
                bar.close()
            summary = summarize(run.spec, run.records, run.client, run.offered_window_s,
                                stale_after_ms=plan.stale_ms(), limits=limits)
            result = LevelResult(summary, run.records)
            results.append(result)
            if on_level is not None:
                on_level(result)
            await asyncio.sleep(plan.pause_s)
    finally:
        await asyncio.gather(*(c.close() for c in channels))
    return results


async def _connect(channels: Sequence[grpc.aio.Channel]) -> None:
    """Connect before the first level: a connection set up inside the measured window
    shows as send lag on its first requests. A server that is not up gets no wait beyond
    CONNECT_TIMEOUT_S; the level then records its calls' errors."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)),
                               CONNECT_TIMEOUT_S)


def _executed(summary: LevelSummary) -> str:
    value = summary.mean_executed_batch_size
    return "" if math.isnan(value) else f" (executed {value:.2f})"


def describe(summary: LevelSummary) -> str:
    """One line per level for the terminal."""
    lat = summary.latency
    errors = ", ".join(f"{k}={v}" for k, v in summary.errors.items()) or "none"
    line = (
        f"{summary.spec.mode} {summary.spec.level:g}: {summary.throughput_rps:.1f} req/s, "
        f"p50 {lat.p50_ms:.1f} p99 {lat.p99_ms:.1f} p99.9 {lat.p999_ms:.1f} ms, "
        f"batch {summary.mean_batch_size:.2f}{_executed(summary)}, "
        f"queue {summary.server_ms['queue_ms']:.1f} ms, "
        f"errors {errors}, client CPU {summary.client_cpu_cores:.2f} cores"
    )
    if summary.dropped or summary.stale:
        line += f", dropped {summary.dropped}, stale {summary.stale}"
    if summary.client_saturated:
        line += f"  [CLIENT SATURATED: {summary.saturation_reason}]"
    return line
