"""Small real load-generator runs against a real server (blocks model on a loopback port)."""

from __future__ import annotations

import time
from pathlib import Path

import grpc.aio
import pytest

from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.loads import LoadSettings, run_camera, run_closed, run_open
from detserve.client.bench.recorder import OK, LevelSummary, SaturationLimits, summarize
from detserve.client.bench.runner import LoadPlan, run_plan
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc

from .conftest import ThreadedServer


def _stub(channel: grpc.aio.Channel) -> pb_grpc.DetectorStub:
    return pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def requests(blocks_folder: Path) -> list[pb.DetectRequest]:
    inputs = load_inputs(InputSpec(source=str(blocks_folder), count=4))
    assert len(inputs.images) == 4 and len(inputs.rgb) == 4
    return build_requests(inputs.images)


def _consistent(s: LevelSummary) -> None:
    lat = s.latency
    assert 0 < lat.min_ms <= lat.p50_ms <= lat.p90_ms <= lat.p95_ms <= lat.p99_ms
    assert lat.p99_ms <= lat.p999_ms <= lat.max_ms
    assert lat.count == s.ok


async def test_closed_loop_is_bounded_by_count(server: ThreadedServer,
                                               requests: list[pb.DetectRequest]) -> None:
    settings = LoadSettings(warmup_s=0.1, duration_s=5.0, max_requests=30)
    async with grpc.aio.insecure_channel(server.target) as ch:
        run = await run_closed(_stub(ch), requests, 2, settings)
    s = summarize(run.spec, run.records, run.client, run.offered_window_s)
    measured = [r for r in run.records if r.measured]
    assert len(measured) == 30 and s.ok == 30 and s.errors == {}
    assert all(1 <= r.batch_size <= 4 for r in measured)
    # ONNX Runtime runs any batch size as formed: no padding.
    assert all(r.executed_batch_size == r.batch_size for r in measured)
    assert s.mean_executed_batch_size == pytest.approx(s.mean_batch_size)
    assert all(r.inference_ms > 0 and r.server_total_ms > 0 for r in measured)
    assert sum(s.batch_sizes.values()) == 30
    # The count bound ended the level early: the window is the time actually used, not 5 s.
    assert run.offered_window_s < 4.0
    first = min(r.scheduled_s for r in measured)
    span = max(r.done_s for r in measured) - first
    assert s.window_s == pytest.approx(max(span, run.offered_window_s))
    assert s.throughput_rps == pytest.approx(30 / s.window_s)
    _consistent(s)


async def test_open_loop_bounded_by_count_measures_its_own_window(
        server: ThreadedServer, requests: list[pb.DetectRequest]) -> None:
    settings = LoadSettings(warmup_s=0.1, duration_s=10.0, max_requests=20)
    async with grpc.aio.insecure_channel(server.target) as ch:
        run = await run_open(_stub(ch), requests, 100.0, "constant", settings)
    s = summarize(run.spec, run.records, run.client, run.offered_window_s)
    assert s.ok == 20
    assert run.offered_window_s == pytest.approx(0.2, abs=1e-6)  # 20 requests at 100/s
    assert s.offered_rps == pytest.approx(100.0, rel=1e-4)


async def test_open_loop_constant_rate_sends_the_planned_requests(
        server: ThreadedServer, requests: list[pb.DetectRequest]) -> None:
    settings = LoadSettings(warmup_s=0.2, duration_s=0.6)
    async with grpc.aio.insecure_channel(server.target) as ch:
        run = await run_open(_stub(ch), requests, 50.0, "constant", settings)
    s = summarize(run.spec, run.records, run.client, run.offered_window_s)
    assert len(run.records) == 40  # offsets 0, 0.02, ..., 0.78
    assert s.ok == 30  # 0.2 s warm-up excluded
    assert s.offered_rps == pytest.approx(50.0)
    planned = sorted(r.scheduled_s for r in run.records if r.measured)
    assert planned[0] == pytest.approx(0.2, abs=1e-6)
    assert planned[-1] == pytest.approx(0.78, abs=1e-6)
    assert all(r.sent_s >= r.scheduled_s for r in run.records)
    assert s.throughput_rps == pytest.approx(50.0, rel=0.15)
    _consistent(s)


async def test_closed_loop_over_streams(server: ThreadedServer,
                                        requests: list[pb.DetectRequest]) -> None:
    settings = LoadSettings(transport="stream", warmup_s=0.0, duration_s=5.0, max_requests=20)
    async with grpc.aio.insecure_channel(server.target) as ch:
        run = await run_closed(_stub(ch), requests, 2, settings)
    s = summarize(run.spec, run.records, run.client, run.offered_window_s)
    assert s.ok == 20 and s.errors == {} and s.spec.streams == 2
    for stream in (0, 1):
        ids = [r.frame_id for r in run.records if r.stream == stream]
        assert ids == list(range(1, len(ids) + 1))  # each stream numbers its frames 1, 2, ...


async def test_cameras_under_block_policy_answer_every_frame(
        server: ThreadedServer, requests: list[pb.DetectRequest]) -> None:
    settings = LoadSettings(transport="stream", warmup_s=0.0, duration_s=0.5,
                            stream_policy="block")
    async with grpc.aio.insecure_channel(server.target) as ch:
        run = await run_camera(_stub(ch), requests, 2, 20.0, settings)
    s = summarize(run.spec, run.records, run.client, run.offered_window_s, stale_after_ms=50.0)
    per_camera = [sum(1 for r in run.records if r.stream == c) for c in (0, 1)]
    # 20 fps for 0.5 s: about 10 frames per camera (the throttle paces, not bursts).
    assert all(6 <= n <= 11 for n in per_camera), per_camera
    assert s.ok == sum(per_camera) and s.dropped == 0 and s.errors == {}
    gaps = sorted(b.scheduled_s - a.scheduled_s for a, b in
                  zip(run.records, run.records[1:], strict=False) if a.stream == b.stream == 0)
    assert all(g >= 0.045 for g in gaps if g > 0)


async def test_cameras_under_latest_policy_drop_frames_on_a_slow_server(
        slow_server: ThreadedServer, requests: list[pb.DetectRequest]) -> None:
    # Capacity ~25 frames/s (40 ms per batch of 1); 2 cameras offer 60 frames/s.
    settings = LoadSettings(transport="stream", warmup_s=0.0, duration_s=0.8,
                            stream_policy="latest")
    async with grpc.aio.insecure_channel(slow_server.target) as ch:
        run = await run_camera(_stub(ch), requests, 2, 30.0, settings)
    s = summarize(run.spec, run.records, run.client, run.offered_window_s)
    assert s.dropped > 0 and s.ok > 0
    assert s.ok + s.dropped == len(run.records)
    reported = sum(r.dropped_before for r in run.records if r.code == OK)
    assert reported == s.dropped  # the server's dropped_frames counters agree with ours


async def test_open_loop_charges_queueing_to_requests_on_a_slow_server(
        slow_server: ThreadedServer, requests: list[pb.DetectRequest]) -> None:
    """Coordinated omission: at twice the capacity the backlog grows for the whole second, and
    latency measured from the plan shows it; a closed loop on the same server never sees it."""
    # One channel: this is about the schedule, not spreading calls (16 channels connecting in
    # the measured second showed as send lag on a busy machine).
    plan = LoadPlan("open", (50.0,), LoadSettings(warmup_s=0.0, duration_s=1.0, channels=1),
                    arrivals="constant", pause_s=0.0)
    closed = LoadPlan("closed", (1,), LoadSettings(warmup_s=0.0, duration_s=5.0,
                                                   max_requests=10), pause_s=0.0)
    # The server shares this process (and its GIL), so allow more send lag than the default.
    limits = SaturationLimits(max_send_lag_ms=30.0)
    (open_level,) = await run_plan(slow_server.target, requests, plan, show_progress=False,
                                   limits=limits)
    (closed_level,) = await run_plan(slow_server.target, requests, closed, show_progress=False)
    o, c = open_level.summary, closed_level.summary
    assert o.ok == 50 and o.errors == {}
    # 50 requests at 40 ms each take ~2 s; the last, planned at 0.98 s, waits ~1 s.
    assert o.latency.max_ms > 700.0
    # The client kept the plan: sends on time but for a rare stall of the shared process
    # (one GC pause on a busy CI machine lagged a single send by 270 ms).
    lags = [r.send_lag_ms for r in open_level.records if r.measured]
    assert sum(lag >= 30.0 for lag in lags) <= 2, sorted(lags)[-5:]
    assert o.throughput_rps == pytest.approx(25.0, rel=0.25)
    assert c.latency.p99_ms < 200.0
    assert c.server_ms["queue_ms"] < o.server_ms["queue_ms"]


async def test_a_stalled_client_is_charged_from_the_schedule(
        server: ThreadedServer, requests: list[pb.DetectRequest]) -> None:
    stalled: list[bool] = []

    def stall_once(_: int) -> None:
        if not stalled:  # block the event loop once, as a saturated client would
            stalled.append(True)
            time.sleep(0.2)

    settings = LoadSettings(warmup_s=0.0, duration_s=0.6)
    async with grpc.aio.insecure_channel(server.target) as ch:
        run = await run_open(_stub(ch), requests, 50.0, "constant", settings,
                             stall_once)
    s = summarize(run.spec, run.records, run.client, run.offered_window_s)
    late = [r for r in run.records if r.send_lag_ms > 100.0]
    assert late, "the stall should have delayed some sends"
    assert all(r.latency_ms >= r.send_lag_ms for r in late)
    assert s.send_lag_p99_ms > 100.0 and s.client_saturated
    assert s.latency.max_ms > 100.0


async def test_closed_loop_waits_out_the_servers_retry_hint(
        tiny_package: Path, requests: list[pb.DetectRequest]) -> None:
    # 40 ms per batch of one and a 50 ms wait bound: with 8 callers most are refused. Each
    # refusal says when to retry (at least one batch time); a caller that retried at once would
    # send thousands of refusals a second (a retry storm), one that waits sends a few hundred.
    from .conftest import config_for

    srv = ThreadedServer(config_for(tiny_package, max_batch_size=1, max_queue_delay_s=0.0,
                                    max_queue_wait_s=0.05), delay_s=0.040)
    try:
        settings = LoadSettings(warmup_s=0.2, duration_s=1.0)
        async with grpc.aio.insecure_channel(srv.target) as ch:
            run = await run_closed(_stub(ch), requests, 8, settings)
    finally:
        srv.stop()
    s = summarize(run.spec, run.records, run.client, run.offered_window_s)
    refused = s.errors.get("RESOURCE_EXHAUSTED", 0)
    assert refused > 0 and s.ok >= 10
    assert refused < 8 * 1.0 / 0.040 + 8  # at most one refusal per caller per batch time


async def test_runner_channels_spread_calls_over_workers(tiny_package: Path,
                                                         requests: list[pb.DetectRequest]) -> None:
    """Against `--workers 2`, the runner's channels reach both front ends; one channel pins
    every call to one (the kernel hands a connection to one worker)."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from detserve.client.bench.server_proc import BatchSetting, ServerProcess, free_port
    from detserve.client.bench.server_proc import server_config as bench_config

    def per_worker(metrics_port: int) -> list[float]:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
        counts = {s.labels["worker"]: s.value for f in text_string_to_metric_families(text)
                  for s in f.samples if s.name == "detserve_worker_requests_total"}
        return [counts.get("0", 0.0), counts.get("1", 0.0)]

    metrics_port = free_port()
    model = {"package": str(tiny_package), "engine_options": {"intra_op_threads": 1}}
    config = bench_config(model, BatchSetting(4, 1.0, 1), free_port(),
                          {"workers": 2, "metrics_port": metrics_port})
    proc = ServerProcess(config, tiny_package.parent / "workers-run", "w2")
    await proc.start()
    try:
        one = LoadSettings(warmup_s=0.0, duration_s=5.0, max_requests=40, channels=1)
        (level,) = await run_plan(proc.target, requests, LoadPlan("closed", (8.0,), one),
                                  show_progress=False)
        assert level.summary.ok == 40
        pinned = per_worker(metrics_port)
        assert sorted(pinned) == [0.0, 40.0]
        spread = LoadSettings(warmup_s=0.0, duration_s=5.0, max_requests=400)  # 16 channels
        (level,) = await run_plan(proc.target, requests, LoadPlan("closed", (16.0,), spread),
                                  show_progress=False)
        assert level.summary.ok == 400
        counts = [now - before for now, before in zip(per_worker(metrics_port), pinned,
                                                      strict=True)]
        assert sum(counts) == 400 and min(counts) > 0  # 16 connections on one: p = 2^-15
    finally:
        assert proc.stop() == 0
