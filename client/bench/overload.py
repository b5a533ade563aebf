"""Overload phases: open-loop Poisson arrivals at multiples of the measured capacity, what the
client saw (goodput, status codes, latencies) and what the server did (RSS, /metrics counters),
checked against the overload targets.

Goodput is OK replies per second over the level's window (which runs to the last reply, so a
server that falls behind is charged for it). A rejection is any answered call that is not OK
(requests the client could not send, CLIENT_BACKLOG, are counted apart); its latency counts from
the scheduled send, like every open-loop latency here.
"""

from __future__ import annotations

import asyncio
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.procstat import RssSampler, RssStats
from detserve.client.bench.promtext import (
    DECODED_AFTER_DEADLINE,
    DECODES,
    EXPIRED_BEFORE_DECODE,
    REJECTED,
    REJECTION_SECONDS,
    Snapshot,
    counter_delta,
    histogram_quantile_delta,
    label_delta,
    scrape,
)
from detserve.client.bench.recorder import (
    CLIENT_BACKLOG,
    DROPPED,
    OK,
    LevelSummary,
    RequestRecord,
    latency_stats,
)
from detserve.client.bench.runner import LevelResult, LoadPlan, run_plan
from detserve.protos import detection_pb2 as pb

NOT_ANSWERED = (CLIENT_BACKLOG, DROPPED)
GOODPUT_MIN = 0.85  # x capacity, at the top factor without a client deadline
GOODPUT_MIN_DEADLINE = 0.75  # x capacity, at the top factor with the client deadline
REJECTION_P99_MAX_MS = 10.0
RSS_GROWTH_MAX_MB = 300.0


@dataclass(frozen=True)
class PhaseSpec:
    name: str
    factor: float  # offered rate / capacity
    rate_rps: float
    timeout_s: float  # per-call gRPC deadline
    deadline_ms: float | None = None  # the client deadline under test; None: the plain timeout


def plan_phases(capacity_rps: float, factors: Sequence[float], deadline_ms: float,
                default_timeout_s: float) -> list[PhaseSpec]:
    """Every factor without a client deadline, then every factor with `deadline_ms`."""
    plain = [PhaseSpec(f"{f:g}x", f, round(capacity_rps * f, 2), default_timeout_s)
             for f in factors]
    timed = [PhaseSpec(f"{f:g}x-deadline{deadline_ms:g}ms", f, round(capacity_rps * f, 2),
                       deadline_ms / 1000.0, deadline_ms) for f in factors]
    return plain + timed


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


@dataclass(frozen=True)
class ServerObservations:
    rss: RssStats
    metrics_read: bool  # whether /metrics answered before and after the phase
    decoded_after_deadline: float | None  # None: the server does not expose the counter
    decodes: float | None
    rejected_total: float | None
    rejected_by_reason: dict[str, float] | None
    expired_before_decode: float | None = None  # admitted, deadline passed before a decode
    # Server time to refuse (detserve_rejection_seconds), p99 as a bucket's upper edge, ms.
    server_rejection_p99_ms: float | None = None

    @classmethod
    def from_snapshots(cls, rss: RssStats, before: Snapshot | None,
                       after: Snapshot | None) -> ServerObservations:
        return cls(rss, before is not None and after is not None,
                   counter_delta(before, after, DECODED_AFTER_DEADLINE),
                   counter_delta(before, after, DECODES), counter_delta(before, after, REJECTED),
                   label_delta(before, after, REJECTED, "reason"),
                   counter_delta(before, after, EXPIRED_BEFORE_DECODE),
                   _ms(histogram_quantile_delta(before, after, REJECTION_SECONDS, 0.99)))

    def notes(self) -> list[str]:
        if not self.metrics_read:
            return ["the server's /metrics endpoint could not be read: counters are null"]
        names = {DECODED_AFTER_DEADLINE: self.decoded_after_deadline, DECODES: self.decodes,
                 REJECTED: self.rejected_total, EXPIRED_BEFORE_DECODE: self.expired_before_decode}
        return [f"the server does not expose {n}: reported as null"
                for n, v in names.items() if v is None]


@dataclass(frozen=True)
class PhaseStats:
    name: str
    factor: float
    rate_rps: float
    deadline_ms: float | None
    timeout_s: float
    capacity_rps: float
    measured: int
    ok: int
    goodput_rps: float
    goodput_ratio: float  # goodput / capacity
    codes: dict[str, int]
    shares: dict[str, float]  # of measured calls
    ok_p50_ms: float
    ok_p99_ms: float
    rejections: int
    rejection_p50_ms: float
    rejection_p99_ms: float
    batch_compute_ms: float  # mean server inference_ms of the OK replies
    mean_batch_size: float
    mean_executed_batch_size: float
    client_cpu_cores: float
    send_lag_p99_ms: float
    client_saturated: bool
    saturation_reason: str
    server: ServerObservations | None = None
    # The refusals timed from the call's send: the server and the transport without the client's
    # send lag (NaN in results from before the field).
    rejection_sent_p50_ms: float = math.nan
    rejection_sent_p99_ms: float = math.nan

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def phase_stats(spec: PhaseSpec, summary: LevelSummary, records: Sequence[RequestRecord],
                capacity_rps: float, server: ServerObservations | None = None) -> PhaseStats:
    """The phase's numbers from its measured records and their level summary."""
    measured = [r for r in records if r.measured]
    codes = Counter(r.code for r in measured)
    refused = [r for r in measured if r.code != OK and r.code not in NOT_ANSWERED]
    rejected = [r.latency_ms for r in refused]
    rej = latency_stats(rejected)
    rej_sent = latency_stats(r.round_trip_ms for r in refused)
    n = len(measured)
    return PhaseStats(
        name=spec.name, factor=spec.factor, rate_rps=spec.rate_rps, deadline_ms=spec.deadline_ms,
        timeout_s=spec.timeout_s, capacity_rps=capacity_rps, measured=n, ok=summary.ok,
        goodput_rps=summary.throughput_rps,
        goodput_ratio=summary.throughput_rps / capacity_rps if capacity_rps > 0 else math.nan,
        codes=dict(sorted(codes.items())),
        shares={k: v / n for k, v in sorted(codes.items())} if n else {},
        ok_p50_ms=summary.latency.p50_ms, ok_p99_ms=summary.latency.p99_ms,
        rejections=len(rejected), rejection_p50_ms=rej.p50_ms, rejection_p99_ms=rej.p99_ms,
        rejection_sent_p50_ms=rej_sent.p50_ms, rejection_sent_p99_ms=rej_sent.p99_ms,
        batch_compute_ms=summary.server_ms["inference_ms"],
        mean_batch_size=summary.mean_batch_size,
        mean_executed_batch_size=summary.mean_executed_batch_size,
        client_cpu_cores=summary.client_cpu_cores, send_lag_p99_ms=summary.send_lag_p99_ms,
        client_saturated=summary.client_saturated, saturation_reason=summary.saturation_reason,
        server=server,
    )


@dataclass(frozen=True)
class TargetCheck:
    phase: str
    target: str
    value: float | None
    bound: float | None
    verdict: str  # PASS, FAIL or N/A
    note: str = ""

    def line(self) -> str:
        shown = "n/a" if self.value is None else f"{self.value:.3g}"
        limit = "" if self.bound is None else f" (bound {self.bound:.3g})"
        note = f"; {self.note}" if self.note else ""
        return f"{self.verdict} {self.phase}: {self.target}: {shown}{limit}{note}"


def _check(phase: str, target: str, value: float | None, bound: float | None, at_least: bool,
           note: str = "") -> TargetCheck:
    if value is None or bound is None or math.isnan(value) or math.isnan(bound):
        return TargetCheck(phase, target, value, bound, "N/A", note)
    ok = value >= bound if at_least else value <= bound
    return TargetCheck(phase, target, value, bound, "PASS" if ok else "FAIL", note)


def _top(phases: Sequence[PhaseStats], deadline: bool) -> PhaseStats | None:
    pool = [p for p in phases if (p.deadline_ms is not None) == deadline]
    return max(pool, key=lambda p: p.factor) if pool else None


def _plain_targets(p: PhaseStats, max_queue_wait_ms: float | None) -> list[TargetCheck]:
    rej_note = "no rejections" if p.rejections == 0 else ""
    rej_p99 = 0.0 if p.rejections == 0 else p.rejection_p99_ms
    wait_off = not max_queue_wait_ms
    ok_bound = None if wait_off else (max_queue_wait_ms or 0.0) + 2 * p.batch_compute_ms
    rss = p.server.rss if p.server else None
    growth = rss.growth_mb if rss else None
    return [
        _check(p.name, f"goodput ÷ capacity ≥ {GOODPUT_MIN}", p.goodput_ratio, GOODPUT_MIN, True),
        _check(p.name, f"rejection p99 ≤ {REJECTION_P99_MAX_MS:g} ms", rej_p99,
               REJECTION_P99_MAX_MS, False, rej_note),
        _check(p.name, "OK p99 ≤ max_queue_wait_ms + 2 × batch compute (ms)", p.ok_p99_ms,
               ok_bound, False,
               "max_queue_wait_ms is not set (or 0) in the served batching" if wait_off else
               f"{max_queue_wait_ms:g} + 2 × {p.batch_compute_ms:.2f}"),
        _check(p.name, f"RSS peak - before ≤ {RSS_GROWTH_MAX_MB:g} MB", growth,
               RSS_GROWTH_MAX_MB, False, "" if growth is not None else "RSS not readable"),
        _check(p.name, "CANCELLED replies = 0", float(p.codes.get("CANCELLED", 0)), 0.0, False),
    ]


def check_targets(phases: Sequence[PhaseStats],
                  max_queue_wait_ms: float | None) -> list[TargetCheck]:
    """The overload targets at the top factor (3x by default), without and with a deadline."""
    out: list[TargetCheck] = []
    plain, timed = _top(phases, False), _top(phases, True)
    if plain is not None:
        out += _plain_targets(plain, max_queue_wait_ms)
    if timed is not None:
        late = timed.server.decoded_after_deadline if timed.server else None
        out += [
            _check(timed.name, f"goodput ÷ capacity ≥ {GOODPUT_MIN_DEADLINE}",
                   timed.goodput_ratio, GOODPUT_MIN_DEADLINE, True),
            _check(timed.name, "calls decoded after their deadline = 0", late, 0.0, False,
                   "" if late is not None else f"the server does not expose "
                   f"{DECODED_AFTER_DEADLINE}"),
        ]
    return out


async def settled_scrape(url: str, max_wait_s: float = 2.0,
                         interval_s: float = 0.1) -> Snapshot | None:
    """Scrape once the decode counter stops moving (work the server still had in hand when
    the last reply came back counts in this phase), for at most `max_wait_s`."""
    last = await asyncio.to_thread(scrape, url)
    loop = asyncio.get_running_loop()
    end = loop.time() + max_wait_s
    while last is not None and loop.time() < end:
        await asyncio.sleep(interval_s)
        now = await asyncio.to_thread(scrape, url)
        if now is None or now.total(DECODES) == last.total(DECODES):
            return now if now is not None else last
        last = now
    return last


async def run_phase(target: str, pid: int, metrics_url: str | None,
                    requests: Sequence[pb.DetectRequest], spec: PhaseSpec,
                    settings: LoadSettings, progress: bool = True, tree: bool = False,
                    ) -> tuple[LevelResult, ServerObservations]:
    """One open-loop Poisson level at `spec.rate_rps`, RSS sampled and counters read around
    it (the counters include the phase's warm-up)."""
    before = await settled_scrape(metrics_url) if metrics_url else None
    plan = LoadPlan("open", (spec.rate_rps,), replace(settings, timeout_s=spec.timeout_s),
                    "poisson")
    with RssSampler(pid, tree=tree) as rss:
        (level,) = await run_plan(target, requests, plan, spec.name, progress)
    after = await settled_scrape(metrics_url) if metrics_url else None
    return level, ServerObservations.from_snapshots(rss.stats(), before, after)
