"""Load-generator statistics against hand-computed values, and the arrival schedules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from detserve.client.bench.recorder import (
    CLIENT_BACKLOG,
    DROPPED,
    OK,
    ClientLoad,
    LevelSpec,
    RequestRecord,
    latency_stats,
    records_from_columns,
    records_to_columns,
    summarize,
)
from detserve.client.bench.schedule import arrival_offsets, schedule

REL = 1e-3  # HdrHistogram at 3 significant digits


def test_latency_stats_match_hand_computed_percentiles() -> None:
    stats = latency_stats(float(ms) for ms in range(1, 101))  # 1..100 ms
    assert stats.count == 100
    # Nearest-rank: p50 of 1..100 is 50, p90 is 90, p99 is 99, p99.9 is 100.
    assert stats.p50_ms == pytest.approx(50.0, rel=REL)
    assert stats.p90_ms == pytest.approx(90.0, rel=REL)
    assert stats.p95_ms == pytest.approx(95.0, rel=REL)
    assert stats.p99_ms == pytest.approx(99.0, rel=REL)
    assert stats.p999_ms == pytest.approx(100.0, rel=REL)
    assert stats.mean_ms == pytest.approx(50.5, rel=REL)
    assert stats.min_ms == pytest.approx(1.0, rel=REL)
    assert stats.max_ms == pytest.approx(100.0, rel=REL)


def test_latency_stats_tail_of_a_skewed_set() -> None:
    stats = latency_stats([2.0] * 990 + [500.0] * 10)
    assert stats.p50_ms == pytest.approx(2.0, rel=REL)
    assert stats.p99_ms == pytest.approx(2.0, rel=REL)  # rank 990 is still 2 ms
    assert stats.p999_ms == pytest.approx(500.0, rel=REL)
    assert stats.mean_ms == pytest.approx((990 * 2 + 10 * 500) / 1000, rel=REL)


def test_empty_stats_are_nan() -> None:
    stats = latency_stats([])
    assert stats.count == 0 and math.isnan(stats.p99_ms)


def _rec(scheduled: float, sent: float, done: float, code: str = OK, measured: bool = True,
         batch: int = 1, queue_ms: float = 0.0) -> RequestRecord:
    return RequestRecord(scheduled_s=scheduled, sent_s=sent, done_s=done, code=code,
                         measured=measured, batch_size=batch, queue_ms=queue_ms)


def test_late_send_is_timed_from_its_scheduled_time() -> None:
    # Planned at 1.0 s, sent 0.3 s late, answered 0.01 s after sending: 310 ms, not 10 ms.
    late = _rec(1.0, 1.3, 1.31)
    assert late.latency_ms == pytest.approx(310.0)
    assert late.send_lag_ms == pytest.approx(300.0)
    summary = summarize(LevelSpec("open", "unary", 10.0, rate_rps=10.0), [late],
                        ClientLoad(2.0, 0.1), offered_window_s=1.0)
    assert summary.latency.p50_ms == pytest.approx(310.0, rel=REL)
    assert summary.send_lag_p99_ms == pytest.approx(300.0, rel=REL)
    assert summary.client_saturated and "send lag" in summary.saturation_reason


def test_summarize_counts_codes_window_batches_and_server_times() -> None:
    records = [
        _rec(0.0, 0.0, 0.5, measured=False),  # warm-up: ignored
        _rec(1.0, 1.0, 1.010, batch=2, queue_ms=4.0),
        _rec(1.5, 1.5, 1.520, batch=4, queue_ms=2.0),
        _rec(2.0, 2.0, 2.030, batch=4, queue_ms=0.0),
        _rec(2.5, 2.5, 2.6, code="RESOURCE_EXHAUSTED"),
        _rec(2.6, 2.6, 2.7, code="DEADLINE_EXCEEDED"),
        _rec(2.7, 2.7, 2.8, code="RESOURCE_EXHAUSTED"),
        _rec(2.8, 2.8, 2.9, code=DROPPED),
        _rec(2.9, 2.9, 2.9, code=CLIENT_BACKLOG),
    ]
    s = summarize(LevelSpec("open", "unary", 4.0, rate_rps=4.0), records, ClientLoad(4.0, 0.4),
                  offered_window_s=2.0)
    assert s.ok == 3
    assert s.errors == {CLIENT_BACKLOG: 1, "DEADLINE_EXCEEDED": 1, "RESOURCE_EXHAUSTED": 2}
    assert s.dropped == 1
    assert s.sent == 7  # 8 measured, one never sent
    assert s.window_s == pytest.approx(2.0)  # first planned 1.0, last done 2.9 < 1.0 + 2.0
    assert s.throughput_rps == pytest.approx(3 / 2.0)
    assert s.offered_rps == pytest.approx(8 / 2.0)
    assert s.batch_sizes == {2: 1, 4: 2}
    assert s.mean_batch_size == pytest.approx(10 / 3)
    assert s.server_ms["queue_ms"] == pytest.approx(2.0)
    assert s.latency.p50_ms == pytest.approx(20.0, rel=REL)
    assert s.latency.max_ms == pytest.approx(30.0, rel=REL)
    assert s.client_cpu_cores == pytest.approx(0.1)
    assert s.client_saturated and "backlog" in s.saturation_reason


def test_window_stretches_when_the_server_falls_behind() -> None:
    records = [_rec(0.0, 0.0, 3.0), _rec(0.5, 0.5, 4.0)]
    s = summarize(LevelSpec("open", "unary", 4.0), records, ClientLoad(4.0, 0.0), 1.0)
    assert s.window_s == pytest.approx(4.0)
    assert s.throughput_rps == pytest.approx(0.5)


def test_stale_frames_and_cpu_saturation() -> None:
    records = [_rec(0.0, 0.0, 0.05), _rec(0.1, 0.1, 0.25), _rec(0.2, 0.2, 0.21)]
    s = summarize(LevelSpec("camera", "stream", 1.0, cameras=1, fps=10.0), records,
                  ClientLoad(1.0, 0.95), 0.3, stale_after_ms=100.0)
    assert s.stale == 1  # only the 150 ms reply is older than one 100 ms frame period
    assert s.client_saturated and "client CPU 0.95" in s.saturation_reason


def test_executed_batch_size_is_averaged_where_the_server_reported_it() -> None:
    records = [_rec(0.0, 0.0, 0.1, batch=5), _rec(0.1, 0.1, 0.2, batch=2),
               _rec(0.2, 0.2, 0.3, batch=1)]
    records[0].executed_batch_size, records[1].executed_batch_size = 8, 2
    s = summarize(LevelSpec("closed", "unary", 1.0), records, ClientLoad(1.0, 0.0), 1.0)
    assert s.mean_batch_size == pytest.approx(8 / 3)
    assert s.mean_executed_batch_size == pytest.approx(5.0)  # (8 + 2) / 2; 0 = not reported
    none = summarize(LevelSpec("closed", "unary", 1.0), records[2:], ClientLoad(1.0, 0.0), 1.0)
    assert math.isnan(none.mean_executed_batch_size)
    assert records_from_columns(records_to_columns(records))[0].executed_batch_size == 8


def test_records_round_trip_through_columns() -> None:
    records = [_rec(0.1234567, 0.2, 0.3, batch=3), _rec(1.0, 1.0, 1.5, code="UNAVAILABLE")]
    cols = records_to_columns(records)
    assert cols["code"] == [OK, "UNAVAILABLE"] and cols["batch_size"] == [3, 1]
    back = records_from_columns(cols)
    assert back[0].scheduled_s == pytest.approx(0.123457)
    assert back[1].latency_ms == pytest.approx(500.0)


def test_poisson_schedule_mean_gap_and_spread() -> None:
    rate = 200.0
    offsets = np.array(schedule(rate, "poisson", duration_s=100.0, seed=3))
    gaps = np.diff(offsets)
    n = offsets.size
    # 20000 arrivals expected; a Poisson count has sd sqrt(20000) ~ 141.
    assert abs(n - 20000) < 5 * math.sqrt(20000)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)  # exponential: CV 1
    assert np.all(gaps >= 0) and offsets[0] == 0.0


def test_poisson_schedule_is_reproducible_by_seed() -> None:
    a = schedule(50.0, "poisson", 2.0, seed=1)
    assert a == schedule(50.0, "poisson", 2.0, seed=1)
    assert a != schedule(50.0, "poisson", 2.0, seed=2)


def test_constant_schedule_is_evenly_spaced() -> None:
    offsets = schedule(4.0, "constant", duration_s=2.0)
    assert offsets == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75])


@pytest.mark.parametrize(("rate", "arrivals", "match"), [
    (0.0, "poisson", "rate"), (-1.0, "constant", "rate"), (10.0, "bursty", "'bursty'"),
])
def test_bad_schedule_arguments(rate: float, arrivals: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        next(arrival_offsets(rate, arrivals))
