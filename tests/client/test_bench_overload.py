"""Overload phase numbers from hand-built records (shares, goodput, percentiles, targets), the
per-phase CSV, /metrics parsing (text, and a real server's endpoint) and RSS sampling."""

from __future__ import annotations

import asyncio
import csv
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc.aio
import pytest

from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.overload import (
    PhaseSpec,
    PhaseStats,
    ServerObservations,
    check_targets,
    phase_stats,
    plan_phases,
)
from detserve.client.bench.overload_report import phase_table, write_phase_csv
from detserve.client.bench.procstat import RssSampler, RssStats, read_rss_bytes
from detserve.client.bench.promtext import (
    DECODED_AFTER_DEADLINE,
    DECODES,
    REJECTED,
    REJECTION_SECONDS,
    counter_delta,
    histogram_quantile_delta,
    label_delta,
    parse_metrics,
    scrape,
)
from detserve.client.bench.recorder import (
    CLIENT_BACKLOG,
    OK,
    ClientLoad,
    LevelSpec,
    RequestRecord,
    summarize,
)
from detserve.protos import detection_pb2_grpc as pb_grpc

from .conftest import ThreadedServer, config_for

REL = 1e-3  # HdrHistogram at 3 significant digits


def _rec(at: float, latency_ms: float, code: str = OK, measured: bool = True) -> RequestRecord:
    done = at + latency_ms / 1000.0
    return RequestRecord(scheduled_s=at, sent_s=at, done_s=done, code=code, measured=measured,
                         batch_size=2 if code == OK else 0,
                         executed_batch_size=4 if code == OK else 0,
                         inference_ms=4.0 if code == OK else 0.0)


def overloaded_records() -> list[RequestRecord]:
    """6 OK (10..60 ms), 3 RESOURCE_EXHAUSTED (1..3 ms), 1 CANCELLED (5 ms), 1 not sent, and
    2 warm-up requests."""
    ok = [_rec(0.2 * i, 10.0 * (i + 1)) for i in range(6)]
    rejected = [_rec(0.1 + 0.2 * i, 1.0 + i, "RESOURCE_EXHAUSTED") for i in range(3)]
    return [*ok, *rejected, _rec(0.7, 5.0, "CANCELLED"), _rec(0.9, 0.0, CLIENT_BACKLOG),
            _rec(-1.0, 1.0, measured=False), _rec(-0.9, 1.0, measured=False)]


def _phase(spec: PhaseSpec, records: list[RequestRecord], capacity: float,
           server: ServerObservations | None = None) -> PhaseStats:
    level = LevelSpec("open", "unary", spec.rate_rps, rate_rps=spec.rate_rps, arrivals="poisson")
    summary = summarize(level, records, ClientLoad(wall_s=3.0, cpu_s=0.3), offered_window_s=2.0)
    return phase_stats(spec, summary, records, capacity, server)


SPEC_3X = PhaseSpec("3x", 3.0, 30.0, 10.0)


def test_phase_shares_goodput_and_percentiles() -> None:
    p = _phase(SPEC_3X, overloaded_records(), capacity=10.0)
    assert p.measured == 11 and p.ok == 6
    # Window: the planned 2 s (the last reply came at 1.06 s); 6 OK / 2 s = 3 req/s.
    assert p.goodput_rps == pytest.approx(3.0) and p.goodput_ratio == pytest.approx(0.3)
    assert p.codes == {"CANCELLED": 1, CLIENT_BACKLOG: 1, "OK": 6, "RESOURCE_EXHAUSTED": 3}
    assert p.shares["OK"] == pytest.approx(6 / 11)
    assert p.shares["RESOURCE_EXHAUSTED"] == pytest.approx(3 / 11)
    assert sum(p.shares.values()) == pytest.approx(1.0)
    assert p.rejections == 4  # the unsent request is no server answer
    assert p.rejection_p50_ms == pytest.approx(2.0, rel=REL)
    assert p.rejection_p99_ms == pytest.approx(5.0, rel=REL)
    assert p.ok_p50_ms == pytest.approx(30.0, rel=REL)
    assert p.ok_p99_ms == pytest.approx(60.0, rel=REL)
    assert (p.batch_compute_ms, p.mean_batch_size, p.mean_executed_batch_size) == (4.0, 2.0, 4.0)
    assert p.client_saturated and "1 requests not sent" in p.saturation_reason
    assert p.client_cpu_cores == pytest.approx(0.1)


def test_phase_plan_runs_every_factor_then_again_with_the_deadline() -> None:
    specs = plan_phases(40.0, [2, 3], 200.0, 10.0)
    assert [(s.name, s.rate_rps, s.timeout_s, s.deadline_ms) for s in specs] == [
        ("2x", 80.0, 10.0, None), ("3x", 120.0, 10.0, None),
        ("2x-deadline200ms", 80.0, 0.2, 200.0), ("3x-deadline200ms", 120.0, 0.2, 200.0)]


def _server(late: float | None) -> ServerObservations:
    return ServerObservations(RssStats(100.0, 350.0, 120.0, 20), True, late, 50.0, 7.0,
                              {"queue_full": 5.0, "deadline": 2.0})


def test_targets_at_the_top_factor() -> None:
    plain = _phase(SPEC_3X, overloaded_records(), 10.0, _server(None))
    lower = _phase(PhaseSpec("2x", 2.0, 20.0, 10.0), [_rec(0.1 * i, 5.0) for i in range(20)],
                   10.0)
    timed_records = [_rec(0.1 * i, 5.0) for i in range(16)]  # 16 OK in 2 s: 0.8 x capacity
    timed = _phase(PhaseSpec("3x-deadline200ms", 3.0, 30.0, 0.2, 200.0), timed_records, 10.0,
                   _server(0.0))
    checks = check_targets([lower, plain, timed], max_queue_wait_ms=20.0)
    assert [(c.phase, c.verdict) for c in checks] == [
        ("3x", "FAIL"),  # goodput 0.3 x capacity
        ("3x", "PASS"),  # rejection p99 5 ms
        ("3x", "FAIL"),  # OK p99 60 ms > 20 + 2 x 4 ms
        ("3x", "PASS"),  # RSS grew 250 MB
        ("3x", "FAIL"),  # one CANCELLED
        ("3x-deadline200ms", "PASS"),  # goodput 0.8 x capacity
        ("3x-deadline200ms", "PASS"),  # nothing decoded late
    ]
    values = [c.value for c in checks]
    assert values == [pytest.approx(0.3), pytest.approx(5.0, rel=REL),
                      pytest.approx(60.0, rel=REL), pytest.approx(250.0), 1.0,
                      pytest.approx(0.8), 0.0]
    assert checks[2].bound == pytest.approx(20.0 + 2 * 4.0)
    assert checks[0].line() == "FAIL 3x: goodput ÷ capacity ≥ 0.85: 0.3 (bound 0.85)"


def test_targets_without_a_queue_wait_or_counter_are_not_applicable() -> None:
    plain = _phase(SPEC_3X, overloaded_records(), 10.0, _server(None))
    timed = _phase(PhaseSpec("3x-deadline200ms", 3.0, 30.0, 0.2, 200.0), overloaded_records(),
                   10.0, _server(None))
    checks = {c.target: c for c in check_targets([plain, timed], max_queue_wait_ms=None)}
    ok_p99 = checks["OK p99 ≤ max_queue_wait_ms + 2 × batch compute (ms)"]
    assert ok_p99.verdict == "N/A" and "max_queue_wait_ms is not set" in ok_p99.note
    late = checks["calls decoded after their deadline = 0"]
    assert late.verdict == "N/A" and DECODED_AFTER_DEADLINE in late.note


def test_phase_csv_has_a_row_per_phase_with_shares_and_reasons(tmp_path: Path) -> None:
    a = _phase(SPEC_3X, overloaded_records(), 10.0, _server(3.0))
    b = _phase(PhaseSpec("2x", 2.0, 20.0, 10.0), [_rec(0.1 * i, 5.0) for i in range(4)], 10.0)
    write_phase_csv([a, b], tmp_path / "phases.csv")
    with (tmp_path / "phases.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["phase"] for r in rows] == ["3x", "2x"]
    assert float(rows[0]["share_OK"]) == round(6 / 11, 4)
    assert float(rows[0]["share_CANCELLED"]) == round(1 / 11, 4)
    assert rows[1]["share_RESOURCE_EXHAUSTED"] == "0"
    assert (rows[0]["rejected_queue_full"], rows[0]["rejected_queue_wait"]) == ("5.0", "0")
    assert rows[1]["rejected_queue_full"] == ""  # no server observations: unknown, not 0
    assert (rows[0]["decoded_after_deadline"], rows[0]["rss_peak_mb"]) == ("3.0", "350.0")
    assert "| 3x | 30.0 | 3.0 | 0.300 | 54.5 | 27.3 | 0.0 | 9.1 | 0.0 | 9.1 |" in phase_table([a])


METRICS = """\
# HELP detserve_rejected_total Requests refused.
# TYPE detserve_rejected_total counter
detserve_rejected_total{model="shapes@320",reason="queue_full"} 7.0
detserve_rejected_total{model="shapes@640",reason="queue_full"} 1.0
detserve_rejected_total{model="shapes@320",reason="deadline"} 2.0
# HELP detserve_rejected_created Requests refused.
# TYPE detserve_rejected_created gauge
detserve_rejected_created{model="shapes@320",reason="queue_full"} 1.7e+09
# HELP detserve_decoded_after_deadline_total Late decodes.
# TYPE detserve_decoded_after_deadline_total counter
# HELP detserve_batch_size Batch size.
# TYPE detserve_batch_size histogram
detserve_batch_size_bucket{le="1.0",model="shapes@320"} 3.0
detserve_batch_size_count{model="shapes@320"} 3.0
"""


def test_metrics_text_sums_over_labels_and_tells_absent_from_zero() -> None:
    snap = parse_metrics(METRICS)
    assert snap.total(REJECTED) == 10.0
    assert snap.by_label(REJECTED, "reason") == {"queue_full": 8.0, "deadline": 2.0}
    assert snap.total(DECODED_AFTER_DEADLINE) == 0.0  # declared, not incremented yet
    assert snap.total(DECODES) is None  # not exposed at all
    before = parse_metrics(METRICS.replace(' 2.0\n', ' 0.5\n', 1))
    assert counter_delta(before, snap, REJECTED) == pytest.approx(1.5)
    assert label_delta(before, snap, REJECTED, "reason") == {"deadline": 1.5, "queue_full": 0.0}
    assert counter_delta(before, snap, DECODES) is None
    assert counter_delta(None, snap, REJECTED) is None
    assert parse_metrics("not { prometheus").total(REJECTED) is None


async def test_a_real_servers_metrics_endpoint(tiny_package: Path) -> None:
    srv = ThreadedServer(replace(config_for(tiny_package), metrics_port=0))
    try:
        assert srv.server.metrics_port
        url = f"http://127.0.0.1:{srv.server.metrics_port}/metrics"
        before = scrape(url)
        (request,) = build_requests(load_inputs(InputSpec("synthetic", 1, 64, 64)).images)
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            await stub.Detect(request, timeout=10)
        after = scrape(url)
    finally:
        srv.stop()
    assert counter_delta(before, after, DECODES) == 1.0
    assert counter_delta(before, after, DECODED_AFTER_DEADLINE) == 0.0
    assert counter_delta(before, after, REJECTED) == 0.0
    assert scrape(url, timeout_s=1.0) is None  # the endpoint is gone with the server


HISTOGRAM = """# TYPE detserve_rejection_seconds histogram
detserve_rejection_seconds_bucket{le="0.001",model="m"} %d
detserve_rejection_seconds_bucket{le="0.005",model="m"} %d
detserve_rejection_seconds_bucket{le="+Inf",model="m"} %d
detserve_rejection_seconds_count{model="m"} %d
detserve_rejection_seconds_sum{model="m"} 0.1
"""


def test_histogram_quantile_of_what_a_phase_added() -> None:
    before = parse_metrics(HISTOGRAM % (10, 10, 10, 10))
    after = parse_metrics(HISTOGRAM % (10 + 97, 10 + 99, 10 + 100, 110))
    assert histogram_quantile_delta(before, after, REJECTION_SECONDS, 0.5) == 0.001
    assert histogram_quantile_delta(before, after, REJECTION_SECONDS, 0.99) == 0.005
    assert histogram_quantile_delta(before, after, REJECTION_SECONDS, 1.0) == float("inf")
    assert histogram_quantile_delta(before, before, REJECTION_SECONDS, 0.99) is None
    assert histogram_quantile_delta(None, after, REJECTION_SECONDS, 0.99) is None


async def test_a_real_servers_refusal_time(tiny_package: Path) -> None:
    srv = ThreadedServer(replace(config_for(tiny_package), metrics_port=0))
    try:
        # As measured on a slow engine: a batch takes 10 s, so a 1 s deadline cannot be met.
        srv.server.registry.default.admission.times.observe_batch(1, 10.0)
        url = f"http://127.0.0.1:{srv.server.metrics_port}/metrics"
        before = scrape(url)
        (request,) = build_requests(load_inputs(InputSpec("synthetic", 1, 64, 64)).images)
        async with grpc.aio.insecure_channel(srv.target) as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            replies = await asyncio.gather(*(stub.Detect(request, timeout=1.0)
                                             for _ in range(5)), return_exceptions=True)
        after = scrape(url)
    finally:
        srv.stop()
    assert all(isinstance(r, grpc.aio.AioRpcError)
               and r.code() == grpc.StatusCode.DEADLINE_EXCEEDED for r in replies)
    assert label_delta(before, after, REJECTED, "reason") == {"deadline": 5.0}
    p99 = histogram_quantile_delta(before, after, REJECTION_SECONDS, 0.99)
    assert p99 is not None and 0 < p99 <= 0.25  # refused on arrival, not after a wait


def test_rss_of_this_process() -> None:
    assert (read_rss_bytes(os.getpid()) or 0) > 1_000_000
    assert read_rss_bytes(2**22 + 12345) is None  # no such process
    with RssSampler(os.getpid(), interval_s=0.001) as sampler:
        pass
    stats = sampler.stats()
    # At least the entry and exit samples, whatever the thread managed in between.
    assert stats.samples >= 2 and stats.before_mb is not None and stats.after_mb is not None
    assert stats.before_mb > 1.0 and stats.peak_mb is not None
    assert stats.peak_mb >= max(stats.before_mb, stats.after_mb)
    assert stats.growth_mb == pytest.approx(stats.peak_mb - stats.before_mb)


def test_rejections_from_the_send_leave_out_the_clients_lag() -> None:
    # Refusals answered 1, 2 and 3 ms after they were sent, sent 4 ms after their plan.
    late = [RequestRecord(scheduled_s=0.1 * i, sent_s=0.1 * i + 0.004,
                          done_s=0.1 * i + 0.004 + (i + 1) / 1000.0, code="RESOURCE_EXHAUSTED",
                          measured=True) for i in range(3)]
    p = _phase(SPEC_3X, [*late, _rec(0.5, 20.0)], capacity=10.0)
    assert p.rejection_p50_ms == pytest.approx(6.0, rel=REL)
    assert p.rejection_sent_p50_ms == pytest.approx(2.0, rel=REL)
    assert p.rejection_sent_p99_ms == pytest.approx(3.0, rel=REL)


def test_rss_of_a_process_tree_adds_its_children() -> None:
    # A child holding 64 MB it has written to: the tree's RSS counts it, the process's does not.
    child = subprocess.Popen([sys.executable, "-c", "import sys; b = bytearray(64 << 20); "
                              "b[::4096] = bytes([1]) * (len(b) // 4096); "
                              "print('ready', flush=True); sys.stdin.read()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        with RssSampler(os.getpid()) as own, RssSampler(os.getpid(), tree=True) as tree:
            pass
        own_mb, tree_mb = own.stats().before_mb, tree.stats().before_mb
        assert own_mb is not None and tree_mb is not None
        assert tree_mb - own_mb > 64
    finally:
        child.kill()
        child.wait()
