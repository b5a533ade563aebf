"""A soak's statistics per time bucket (a minute by default) and over the whole run.

A request belongs to the bucket in which it *completed*: a bucket's throughput is the replies it
saw, and its latencies are theirs. Buckets start at the end of the warm-up (the measurement
window's start, `start_s`, in the records' clock); the last bucket also takes the replies that
came in after the planned end (the calls still in flight), and its length grows to match, so
no reply is lost and the rates stay honest. RSS and CPU come from the tracer's samples on the
same clock: RSS max and mean of the samples inside the bucket, CPU cores as CPU seconds ÷ wall
seconds between the bucket's edges (cumulative counters interpolated at the edges).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from detserve.client.bench.proctrace import ProcSample
from detserve.client.bench.recorder import OK, RequestRecord, latency_stats

DEFAULT_BUCKET_S = 60.0


@dataclass(frozen=True)
class BucketStats:
    index: int
    start_s: float  # seconds since the measurement window began
    end_s: float
    ok: int
    errors: dict[str, int]
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_batch_size: float
    rss_max_mb: float | None
    rss_mean_mb: float | None
    server_cpu_cores: float | None
    client_cpu_cores: float | None
    host_busy_cores: float | None = None  # every process on the host, these two included

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SoakSummary:
    duration_s: float
    buckets: int
    bucket_s: float
    ok: int
    errors: int
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    worst_bucket: int  # the bucket with the highest p99
    worst_p99_ms: float
    slowest_bucket: int  # the bucket with the lowest throughput
    slowest_throughput_rps: float
    # First bucket ÷ last bucket: throughput above 1 means the server slowed down; p99 below 1
    # means its tail grew.
    first_over_last_throughput: float
    first_over_last_p99: float
    first_over_last_p50: float
    rss_first_mb: float | None  # max RSS in the first bucket
    rss_last_mb: float | None  # max RSS in the last bucket
    rss_peak_mb: float | None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bucket_word(bucket_s: float) -> str:
    """What a bucket is called in lines and legends: `minute`, or `10-s bucket`."""
    return "minute" if bucket_s == 60 else f"{bucket_s:g}-s bucket"


def bucket_count(duration_s: float, bucket_s: float) -> int:
    """Whole buckets in the window; a remainder under half a bucket joins the last one."""
    if bucket_s <= 0 or duration_s <= 0:
        raise ValueError(f"need duration_s > 0 and bucket_s > 0, got {duration_s!r} and "
                         f"{bucket_s!r}")
    return max(1, round(duration_s / bucket_s))


def split_buckets(records: Sequence[RequestRecord], start_s: float, bucket_s: float,
                  n: int) -> list[list[RequestRecord]]:
    """The measured records of each bucket, by completion time (clamped into [0, n))."""
    out: list[list[RequestRecord]] = [[] for _ in range(n)]
    for r in records:
        if not r.measured:
            continue
        k = math.floor((r.done_s - start_s) / bucket_s)
        out[min(max(k, 0), n - 1)].append(r)
    return out


def _interp(samples: Sequence[ProcSample], attr: str, t: float) -> float | None:
    pts = [(s.t_s, getattr(s, attr)) for s in samples if getattr(s, attr) is not None]
    if len(pts) < 2 or t < pts[0][0] - 1e-9 or t > pts[-1][0] + 1e-9:
        return None
    return float(np.interp(t, [p[0] for p in pts], [p[1] for p in pts]))


def cpu_cores(samples: Sequence[ProcSample], attr: str, t0: float, t1: float) -> float | None:
    """CPU seconds of counter `attr` between t0 and t1, per wall second."""
    a, b = _interp(samples, attr, t0), _interp(samples, attr, t1)
    if a is None or b is None or t1 <= t0:
        return None
    return (b - a) / (t1 - t0)


def _rss(samples: Sequence[ProcSample], t0: float, t1: float) -> tuple[float | None,
                                                                         float | None]:
    inside = [s.rss_mb for s in samples if s.rss_mb is not None and t0 <= s.t_s <= t1]
    if not inside:
        return None, None
    return max(inside), sum(inside) / len(inside)


def bucket_stats(records: Sequence[RequestRecord], samples: Sequence[ProcSample],
                 start_s: float, duration_s: float,
                 bucket_s: float = DEFAULT_BUCKET_S) -> list[BucketStats]:
    """Per-bucket statistics; `start_s` is the window's start in the records' (and samples')
    clock, `duration_s` its planned length."""
    n = bucket_count(duration_s, bucket_s)
    groups = split_buckets(records, start_s, bucket_s, n)
    last_done = max((r.done_s for r in records if r.measured), default=start_s)
    out = []
    for k, group in enumerate(groups):
        t0 = start_s + k * bucket_s
        t1 = start_s + (k + 1) * bucket_s if k < n - 1 else max(start_s + duration_s, last_done)
        ok = [r for r in group if r.code == OK]
        lat = latency_stats(r.latency_ms for r in ok)
        rss_max, rss_mean = _rss(samples, t0, t1)
        out.append(BucketStats(
            index=k, start_s=t0 - start_s, end_s=t1 - start_s, ok=len(ok),
            errors=dict(sorted(Counter(r.code for r in group if r.code != OK).items())),
            throughput_rps=len(ok) / (t1 - t0), p50_ms=lat.p50_ms, p95_ms=lat.p95_ms,
            p99_ms=lat.p99_ms, max_ms=lat.max_ms,
            mean_batch_size=sum(r.batch_size for r in ok) / len(ok) if ok else float("nan"),
            rss_max_mb=rss_max, rss_mean_mb=rss_mean,
            server_cpu_cores=cpu_cores(samples, "cpu_s", t0, t1),
            client_cpu_cores=cpu_cores(samples, "client_cpu_s", t0, t1),
            host_busy_cores=cpu_cores(samples, "host_busy_s", t0, t1),
        ))
    return out


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else float("nan")


def _worst(buckets: Sequence[BucketStats]) -> BucketStats:
    answered = [b for b in buckets if b.ok] or list(buckets)
    return max(answered, key=lambda b: -math.inf if math.isnan(b.p99_ms) else b.p99_ms)


def summarize_soak(records: Sequence[RequestRecord], buckets: Sequence[BucketStats],
                   bucket_s: float) -> SoakSummary:
    """The run's totals, its worst and slowest buckets, and first ÷ last."""
    if not buckets:
        raise ValueError("a soak summary needs at least one bucket")
    ok = [r for r in records if r.measured and r.code == OK]
    lat = latency_stats(r.latency_ms for r in ok)
    duration = buckets[-1].end_s - buckets[0].start_s
    worst = _worst(buckets)
    slowest = min(buckets, key=lambda b: b.throughput_rps)
    first, last = buckets[0], buckets[-1]
    peaks = [b.rss_max_mb for b in buckets if b.rss_max_mb is not None]
    return SoakSummary(
        duration_s=duration, buckets=len(buckets), bucket_s=bucket_s, ok=len(ok),
        errors=sum(sum(b.errors.values()) for b in buckets),
        throughput_rps=len(ok) / duration if duration > 0 else float("nan"),
        p50_ms=lat.p50_ms, p95_ms=lat.p95_ms, p99_ms=lat.p99_ms, max_ms=lat.max_ms,
        worst_bucket=worst.index, worst_p99_ms=worst.p99_ms,
        slowest_bucket=slowest.index, slowest_throughput_rps=slowest.throughput_rps,
        first_over_last_throughput=_ratio(first.throughput_rps, last.throughput_rps),
        first_over_last_p99=_ratio(first.p99_ms, last.p99_ms),
        first_over_last_p50=_ratio(first.p50_ms, last.p50_ms),
        rss_first_mb=first.rss_max_mb, rss_last_mb=last.rss_max_mb,
        rss_peak_mb=max(peaks) if peaks else None,
    )
