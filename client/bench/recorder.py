"""Per-request records and the statistics of one load level.

Times are `time.perf_counter()` seconds relative to the level's start. Latency is
`done_s - scheduled_s`: for closed loop the scheduled time is the send time; for open loop and
cameras it is the planned arrival (or capture) time, so a late send still counts its wait.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from hdrh.histogram import HdrHistogram

OK = "OK"
DROPPED = "DROPPED"  # a stream frame the server skipped (policy `latest`); not an error
CLIENT_BACKLOG = "CLIENT_BACKLOG"  # not sent: the client already had too many in flight
PERCENTILES: tuple[tuple[str, float], ...] = (
    ("p50", 50.0), ("p90", 90.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9),
)
# HdrHistogram in microseconds: 1 us .. 1 hour at 3 significant digits (0.1 % resolution).
_HDR_MAX_US = 3_600_000_000


@dataclass(slots=True)
class RequestRecord:
    scheduled_s: float
    sent_s: float
    done_s: float
    code: str
    measured: bool
    stream: int = -1  # stream/camera index; -1 for unary calls
    frame_id: int = 0
    batch_size: int = 0  # requests in the batch the server formed
    # Rows the engine ran for that batch (padding included); 0 when the server does not say.
    executed_batch_size: int = 0
    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    server_total_ms: float = 0.0
    dropped_before: int = 0  # server-reported frames dropped since the previous reply

    @property
    def latency_ms(self) -> float:
        return (self.done_s - self.scheduled_s) * 1000.0

    @property
    def send_lag_ms(self) -> float:
        return (self.sent_s - self.scheduled_s) * 1000.0

    @property
    def round_trip_ms(self) -> float:
        """From the call leaving the client to its answer: latency without the send lag."""
        return (self.done_s - self.sent_s) * 1000.0


RECORD_FIELDS: tuple[str, ...] = tuple(RequestRecord.__dataclass_fields__)


def records_to_columns(records: Sequence[RequestRecord]) -> dict[str, list[Any]]:
    """Column-oriented raw records for the JSON file (compact, one list per field)."""
    rounding = {"scheduled_s": 6, "sent_s": 6, "done_s": 6}
    cols: dict[str, list[Any]] = {}
    for name in RECORD_FIELDS:
        values = [getattr(r, name) for r in records]
        if isinstance(values[0] if values else None, float):
            digits = rounding.get(name, 3)
            values = [round(v, digits) for v in values]
        cols[name] = values
    return cols


def records_from_columns(cols: dict[str, list[Any]]) -> list[RequestRecord]:
    n = len(cols.get("scheduled_s", []))
    return [RequestRecord(**{k: cols[k][i] for k in RECORD_FIELDS if k in cols}) for i in range(n)]


@dataclass(frozen=True)
class LatencyStats:
    count: int
    mean_ms: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    p999_ms: float


def latency_stats(latencies_ms: Iterable[float]) -> LatencyStats:
    """Percentiles from an HdrHistogram of the latencies (0.1 % value resolution)."""
    hist = HdrHistogram(1, _HDR_MAX_US, 3)
    n = 0
    for ms in latencies_ms:
        hist.record_value(min(max(1, round(ms * 1000.0)), _HDR_MAX_US))
        n += 1
    if n == 0:
        nan = float("nan")
        return LatencyStats(0, nan, nan, nan, nan, nan, nan, nan, nan)
    pct = {name: hist.get_value_at_percentile(p) / 1000.0 for name, p in PERCENTILES}
    return LatencyStats(
        count=n,
        mean_ms=hist.get_mean_value() / 1000.0,
        min_ms=hist.get_min_value() / 1000.0,
        max_ms=hist.get_max_value() / 1000.0,
        p50_ms=pct["p50"], p90_ms=pct["p90"], p95_ms=pct["p95"], p99_ms=pct["p99"],
        p999_ms=pct["p999"],
    )


@dataclass(frozen=True)
class LevelSpec:
    """What one load level asked for (the `level` is concurrency, rate or camera count)."""

    mode: str
    transport: str
    level: float
    concurrency: int = 0
    rate_rps: float = 0.0
    arrivals: str = ""
    cameras: int = 0
    fps: float = 0.0
    streams: int = 0


@dataclass(frozen=True)
class ClientLoad:
    """The load generator's own cost: CPU seconds over wall seconds (cores busy)."""

    wall_s: float
    cpu_s: float

    @property
    def cpu_cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0


@dataclass(frozen=True)
class LevelSummary:
    spec: LevelSpec
    window_s: float
    sent: int
    ok: int
    errors: dict[str, int]
    dropped: int
    stale: int
    throughput_rps: float
    offered_rps: float
    latency: LatencyStats
    server_ms: dict[str, float]
    batch_sizes: dict[int, int]
    mean_batch_size: float
    mean_executed_batch_size: float  # nan when no reply reported it
    client: ClientLoad
    client_cpu_cores: float
    send_lag_p99_ms: float
    client_saturated: bool
    saturation_reason: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["batch_sizes"] = {str(k): v for k, v in sorted(self.batch_sizes.items())}
        return out


@dataclass(frozen=True)
class SaturationLimits:
    """When the client, not the server, is the bottleneck."""

    max_cpu_cores: float = 0.9  # the asyncio loop runs on one core
    max_send_lag_ms: float = 5.0  # open loop / cameras: sends later than planned


def _server_means(ok: Sequence[RequestRecord]) -> dict[str, float]:
    names = ("queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms", "server_total_ms")
    if not ok:
        return {n: float("nan") for n in names}
    return {n: sum(getattr(r, n) for r in ok) / len(ok) for n in names}


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    return sum(items) / len(items) if items else float("nan")


def _window(measured: Sequence[RequestRecord], offered_window_s: float) -> float:
    """Measurement window: from the first planned request to the later of the planned end and
    the last completion (so a server that falls behind is charged for the overrun)."""
    if not measured:
        return offered_window_s
    start = min(r.scheduled_s for r in measured)
    end = max(r.done_s for r in measured)
    return max(end - start, offered_window_s, 1e-9)


def summarize(
    spec: LevelSpec,
    records: Sequence[RequestRecord],
    client: ClientLoad,
    offered_window_s: float,
    stale_after_ms: float | None = None,
    limits: SaturationLimits | None = None,
) -> LevelSummary:
    """Statistics over the measured records; `offered_window_s` is the planned window length."""
    limits = limits or SaturationLimits()
    measured = [r for r in records if r.measured]
    ok = [r for r in measured if r.code == OK]
    errors = Counter(r.code for r in measured if r.code not in (OK, DROPPED))
    dropped = sum(1 for r in measured if r.code == DROPPED)
    stale = 0 if stale_after_ms is None else sum(1 for r in ok if r.latency_ms > stale_after_ms)
    window = _window(measured, offered_window_s)
    batches = Counter(r.batch_size for r in ok)
    lag = latency_stats(max(r.send_lag_ms, 0.001) for r in measured if r.code != CLIENT_BACKLOG)
    lag_p99 = lag.p99_ms if lag.count else 0.0
    reason = _saturation_reason(spec, client, lag_p99, errors, limits)
    return LevelSummary(
        spec=spec,
        window_s=window,
        sent=len(measured) - errors.get(CLIENT_BACKLOG, 0),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        dropped=dropped,
        stale=stale,
        throughput_rps=len(ok) / window,
        offered_rps=len(measured) / offered_window_s if offered_window_s > 0 else 0.0,
        latency=latency_stats(r.latency_ms for r in ok),
        server_ms=_server_means(ok),
        batch_sizes=dict(sorted(batches.items())),
        mean_batch_size=sum(r.batch_size for r in ok) / len(ok) if ok else float("nan"),
        mean_executed_batch_size=_mean(r.executed_batch_size for r in ok
                                       if r.executed_batch_size > 0),
        client=client,
        client_cpu_cores=client.cpu_cores,
        send_lag_p99_ms=lag_p99,
        client_saturated=bool(reason),
        saturation_reason=reason,
    )


def _saturation_reason(
    spec: LevelSpec, client: ClientLoad, lag_p99_ms: float, errors: Counter[str],
    limits: SaturationLimits,
) -> str:
    reasons = []
    if client.cpu_cores >= limits.max_cpu_cores:
        reasons.append(f"client CPU {client.cpu_cores:.2f} cores >= {limits.max_cpu_cores}")
    if spec.mode != "closed" and lag_p99_ms > limits.max_send_lag_ms:
        reasons.append(f"p99 send lag {lag_p99_ms:.1f} ms > {limits.max_send_lag_ms} ms")
    if errors.get(CLIENT_BACKLOG):
        reasons.append(f"{errors[CLIENT_BACKLOG]} requests not sent (client backlog)")
    return "; ".join(reasons)
