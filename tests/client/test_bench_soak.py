"""The soak: per-bucket statistics from known records and samples, a few seconds of a real soak
against a server on loopback (each bucket checked against the raw records it came from), and the
CLI's files, written again by `detserve-bench report` from results.json alone."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from detserve.client.bench.cli import main as bench_main
from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.proctrace import ProcSample, read_cpu_seconds
from detserve.client.bench.recorder import OK, RequestRecord, latency_stats
from detserve.client.bench.soak import SoakPlan, run_soak
from detserve.client.bench.soak_report import cpu_line
from detserve.client.bench.soak_stats import bucket_stats, split_buckets, summarize_soak

from .conftest import ThreadedServer


def _rec(done_s: float, latency_ms: float, code: str = OK, measured: bool = True,
         batch: int = 2) -> RequestRecord:
    start = done_s - latency_ms / 1000.0
    return RequestRecord(scheduled_s=start, sent_s=start, done_s=done_s, code=code,
                         measured=measured, batch_size=batch)


def test_bucket_stats_from_known_records() -> None:
    # Window starts at 1.0 s (after the warm-up), 30 s long, 10-s buckets.
    records = [
        _rec(0.5, 5.0, measured=False),  # warm-up: never counted
        *(_rec(1.0 + t, ms) for t, ms in ((1, 10), (2, 20), (3, 30), (4, 40))),
        _rec(5.0, 1.0, code="UNAVAILABLE"),
        _rec(12.0, 100.0, batch=4), _rec(18.0, 200.0, batch=4),
        _rec(32.5, 50.0),  # after the planned end (31.0): joins the last bucket
    ]
    samples = [ProcSample(float(t), 100.0 + t, 0.5 * t, 0.25 * t, 1.5 * t) for t in range(34)]
    buckets = bucket_stats(records, samples, start_s=1.0, duration_s=30.0, bucket_s=10.0)
    assert [b.ok for b in buckets] == [4, 2, 1]
    assert buckets[0].errors == {"UNAVAILABLE": 1} and not buckets[1].errors
    assert [(b.start_s, b.end_s) for b in buckets] == [(0, 10), (10, 20), (20, 31.5)]
    assert [b.throughput_rps for b in buckets] == pytest.approx([0.4, 0.2, 1 / 11.5])
    b0 = buckets[0]
    assert (b0.p50_ms, b0.p99_ms, b0.max_ms) == pytest.approx((20.0, 40.0, 40.0), rel=2e-3)
    assert buckets[1].mean_batch_size == 4.0 and b0.mean_batch_size == 2.0
    # RSS: samples at t = 1..11 lie in [1, 11]: max 111, mean 106. CPU: 0.5 and 0.25 cores.
    assert (b0.rss_max_mb, b0.rss_mean_mb) == pytest.approx((111.0, 106.0))
    assert buckets[2].rss_max_mb == pytest.approx(132.0)  # the last bucket ends at 32.5 s
    assert [b.server_cpu_cores for b in buckets] == pytest.approx([0.5] * 3)
    assert [b.client_cpu_cores for b in buckets] == pytest.approx([0.25] * 3)
    assert [b.host_busy_cores for b in buckets] == pytest.approx([1.5] * 3)
    # Whatever else ran took 1.5 - 0.5 - 0.25 cores: the report's "other processes".
    assert cpu_line(buckets) == ("- CPU, mean per minute: server 0.50 cores, load generator "
                                 "0.25, whole host 1.50; other processes 0.75 (at most 0.75 "
                                 "in one minute)")
    s = summarize_soak(records, buckets, 10.0)
    assert (s.ok, s.errors, s.worst_bucket, s.slowest_bucket) == (7, 1, 1, 2)
    assert s.worst_p99_ms == pytest.approx(200.0, rel=2e-3)
    assert s.first_over_last_throughput == pytest.approx(0.4 * 11.5)
    assert s.first_over_last_p99 == pytest.approx(40.0 / 50.0, rel=4e-3)
    assert (s.rss_first_mb, s.rss_last_mb, s.rss_peak_mb) == pytest.approx((111.0, 132.0,
                                                                             132.0))
    assert s.duration_s == pytest.approx(31.5)


def test_cpu_seconds_of_this_process_grow() -> None:
    before = read_cpu_seconds(os.getpid())
    sum(i * i for i in range(2_000_000))
    after = read_cpu_seconds(os.getpid())
    assert before is not None and after is not None and after > before
    assert read_cpu_seconds(2**22 + 12345) is None  # no such process


async def test_short_soak_buckets_match_the_records(server: ThreadedServer,
                                                    blocks_folder: Path) -> None:
    inputs = load_inputs(InputSpec(str(blocks_folder), 4))
    plan = SoakPlan(minutes=3 / 60, concurrency=2, warmup_s=0.5, bucket_s=1.0, sample_s=0.2)
    lines: list[str] = []
    # The server runs in this process, so its pid is ours: RSS and CPU are really traced.
    run = await run_soak(server.target, build_requests(inputs.images), plan, os.getpid(),
                         lines.append)
    assert len(run.buckets) == 3 and len(lines) == 2  # a line per bucket but the last
    measured_ok = [r for r in run.level.records if r.measured and r.code == OK]
    assert measured_ok and sum(b.ok for b in run.buckets) == len(measured_ok)
    for b, group in zip(run.buckets, split_buckets(run.level.records, 0.5, 1.0, 3),
                        strict=True):
        lo, hi = 0.5 + b.start_s, 0.5 + b.end_s
        mine = [r for r in measured_ok if lo <= r.done_s < hi or (b.index == 2 and r.done_s
                                                                   >= hi)]
        assert b.ok == len(mine) == len([r for r in group if r.code == OK]) > 0
        assert b.throughput_rps == pytest.approx(len(mine) / (b.end_s - b.start_s))
        assert b.p99_ms == latency_stats(r.latency_ms for r in mine).p99_ms
        assert b.rss_max_mb is not None and b.rss_max_mb > 10
        assert b.server_cpu_cores is not None and b.server_cpu_cores > 0
        assert b.host_busy_cores is not None and b.host_busy_cores >= b.server_cpu_cores * 0.9
    s = run.summary
    assert s.first_over_last_throughput == pytest.approx(
        run.buckets[0].throughput_rps / run.buckets[-1].throughput_rps)
    assert run.buckets[s.worst_bucket].p99_ms == max(b.p99_ms for b in run.buckets)
    assert len(run.samples) >= 10  # every 0.2 s for 3.5 s, plus entry and exit


def test_soak_cli_writes_results_and_report_writes_it_again(
        server: ThreadedServer, blocks_folder: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "soak"
    code = bench_main(["soak", "--target", server.target, "--server-pid", str(os.getpid()),
                       "--minutes", str(2 / 60), "--bucket-s", "1", "--warmup-s", "0.3",
                       "--sample-s", "0.2", "--inputs", str(blocks_folder), "--input-count",
                       "4", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "worst 1-s bucket (highest p99)" in printed and "first 1-s bucket ÷ last" in printed
    doc = json.loads((out / "results.json").read_text())
    assert doc["tool"] == "detserve-bench" and len(doc["soak"]["buckets"]) == 2
    assert doc["settings"][0]["role"] == "external"
    # The host's load covers the run (its warm-up and minutes), not just the file's writing.
    assert doc["host_load"]["interval_s"] >= 2.0
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("minute,start_s,end_s,ok") and len(rows) == 3
    report = (out / "report.md").read_text()
    for name in ("soak_minutes.png", "soak_resources.png"):
        assert (out / name).stat().st_size > 10_000 and f"]({name})" in report
    again = tmp_path / "again"
    assert bench_main(["report", str(out / "results.json"), "--out", str(again)]) == 0
    regenerated = (again / "report.md").read_text()
    # The same buckets, recomputed from the raw records and samples alone.
    assert regenerated.split("## Per minute")[1] == report.split("## Per minute")[1]


def test_soak_flag_errors_are_one_line(capsys: pytest.CaptureFixture[str],
                                       tmp_path: Path) -> None:
    code = bench_main(["soak", "--server-pid", "1", "--out", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--server-pid goes with --target" in err
    assert not math.isnan(SoakPlan().duration_s)
    with pytest.raises(ValueError, match="soak mode must be one of"):
        SoakPlan(mode="camera")
