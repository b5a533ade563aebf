"""The engine process's side and two front ends in this test's event loop: the real Unix socket,
shared memory and gRPC servers of `workers: 2`, with the gated engine of conftest, so a test can
hold batches and aim a call at one front end (each gets its own port here, where the supervisor
would give them one shared port)."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import generate_latest

from detserve.engines.detections import Detections
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import Server
from detserve.server.config import ServerConfig
from detserve.server.workers import shares
from detserve.server.workers.engine_process import EngineHost, EngineSpec
from detserve.server.workers.frontend import FrontendSpec, start_frontend
from detserve.server.workers.remote_lane import ENGINE_LOST, RemoteLane
from detserve.server.workers.slots import Partition, Segment, SlotLayout, read_rows, write_rows

from .conftest import (
    WAIT_S,
    EngineRecorder,
    blocks_image,
    blocks_model,
    boxes_of,
    request_for,
    server_config,
    until,
)

GOOD = blocks_image(64, 64, [(32, 32, 1)])
GOOD_BOXES = [("green", 1.0, [32.0, 32.0, 64.0, 64.0])]


@dataclass
class Workers:
    host: EngineHost
    fronts: list[Server]
    engines: EngineRecorder
    channels: list[grpc.aio.Channel] = field(default_factory=list)
    stubs: list[pb_grpc.DetectorStub] = field(default_factory=list)

    def lane(self, index: int) -> RemoteLane:
        lane = self.fronts[index].core.lane
        assert isinstance(lane, RemoteLane)
        return lane

    def held(self, index: int) -> int:
        return self.host.hub.partitions[index].in_use


@pytest.fixture
async def workers(tiny_package: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await workers(config=None, open_gate=True)` -> Workers (two front ends)."""
    started: list[tuple[Workers, str]] = []

    async def _start(config: ServerConfig | None = None, open_gate: bool = True) -> Workers:
        config = config or server_config(blocks_model(tiny_package), workers=2)
        folder = tempfile.mkdtemp(prefix="ds-")  # a Unix socket path must stay short
        sock = str(Path(folder) / "engine.sock")
        engines = EngineRecorder(asyncio.get_running_loop(), open_gate)
        spec = EngineSpec(shares.engine_config(config), config.workers, sock,
                          shares.frontend_decode_threads(config))
        host = await EngineHost.start(spec, engines)
        fronts = [await start_frontend(FrontendSpec(i, shares.frontend_config(config, 0), sock))
                  for i in range(config.workers)]
        run = Workers(host, fronts, engines)
        for front in fronts:
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{front.port}")
            run.channels.append(channel)
            run.stubs.append(pb_grpc.DetectorStub(channel))  # type: ignore[no-untyped-call]
        started.append((run, folder))
        return run

    yield _start
    for run, folder in started:
        for engine in run.engines.engines:
            engine.gate.set()
        for channel in run.channels:
            await channel.close()
        for front in run.fronts:
            await front.stop(grace_s=1.0)
        await run.host.stop()
        shutil.rmtree(folder, ignore_errors=True)


async def test_admission_bounds_count_every_front_end(
    workers: Callable[..., Any], tiny_package: Path,
) -> None:
    model = blocks_model(tiny_package, max_batch_size=1, max_queue_size=1)
    run: Workers = await workers(server_config(model, workers=2), open_gate=False)
    first = asyncio.ensure_future(run.stubs[0].Detect(request_for(GOOD)))
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    queued = asyncio.ensure_future(run.stubs[1].Detect(request_for(GOOD)))
    batcher = run.host.registry.default.batcher
    await until(lambda: batcher.queue_depth() == 1)
    # The queue bound is the engine process's: front end 0 sees front end 1's waiting request.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stubs[0].Detect(request_for(GOOD))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 requests waiting, its batching.max_queue_size" in (err.value.details() or "")
    metrics = run.fronts[0].observer.metrics.render().decode()
    assert 'detserve_rejected_total{model="blocks@64",reason="queue_full"} 1.0' in metrics
    run.engines.first.gate.set()
    assert boxes_of(await first) == GOOD_BOXES and boxes_of(await queued) == GOOD_BOXES
    await until(lambda: run.held(0) == run.held(1) == 0)
    assert run.host.registry.default.admission.held == 0


async def test_a_front_end_gone_frees_its_slots_and_drops_only_its_requests(
    workers: Callable[..., Any], tiny_package: Path,
) -> None:
    model = blocks_model(tiny_package, max_batch_size=1)
    run: Workers = await workers(server_config(model, workers=2), open_gate=False)
    running = asyncio.ensure_future(run.stubs[0].Detect(request_for(GOOD)))
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    queued = asyncio.ensure_future(run.stubs[0].Detect(request_for(GOOD)))
    other = asyncio.ensure_future(run.stubs[1].Detect(request_for(GOOD)))
    batcher = run.host.registry.default.batcher
    await until(lambda: batcher.queue_depth() == 2 and run.held(0) == 2 and run.held(1) == 1)
    run.lane(0).link.stream.abort(ConnectionError("front end 0 died (test)"))
    await until(lambda: run.held(0) == 0 and batcher.queue_depth() == 1)
    assert run.host.registry.default.admission.held == 1  # front end 1's request alone
    text = generate_latest(run.host.hub.metrics.registry).decode()
    assert 'detserve_worker_slots_freed_total{worker="0"} 2.0' in text
    assert 'detserve_worker_slots_in_use{worker="1"} 1.0' in text
    for call in (running, queued):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == ENGINE_LOST
    run.engines.first.gate.set()
    assert boxes_of(await other) == GOOD_BOXES
    assert run.engines.first.batches == [1, 1]  # the running one and front end 1's; not queued
    health = health_pb2_grpc.HealthStub(run.channels[0])
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING


async def test_engine_gone_front_ends_say_not_serving_and_unavailable(
    workers: Callable[..., Any],
) -> None:
    run: Workers = await workers()
    assert boxes_of(await run.stubs[1].Detect(request_for(GOOD))) == GOOD_BOXES
    run.host.hub.close_all()
    await until(lambda: run.lane(1).link.lost)
    health = health_pb2_grpc.HealthStub(run.channels[1])
    for service in ("", "detserve.v1.Detector"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stubs[1].Detect(request_for(GOOD))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "engine process is unavailable" in (err.value.details() or "")


async def test_cancelled_and_bad_requests_give_their_slots_back(
    workers: Callable[..., Any], tiny_package: Path,
) -> None:
    model = blocks_model(tiny_package, max_batch_size=1)
    run: Workers = await workers(server_config(model, workers=2), open_gate=False)
    running = asyncio.ensure_future(run.stubs[0].Detect(request_for(GOOD)))
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    batcher = run.host.registry.default.batcher
    queued = run.stubs[1].Detect(request_for(GOOD))
    await until(lambda: batcher.queue_depth() == 1 and run.held(1) == 1)
    queued.cancel()
    await until(lambda: batcher.queue_depth() == 0 and run.held(1) == 0)
    bad = pb.DetectRequest(image=pb.Image(encoded=b"\xff\xd8\xff\xe0 not really a jpeg"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stubs[1].Detect(bad)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert run.held(1) == 0
    run.engines.first.gate.set()
    assert boxes_of(await running) == GOOD_BOXES
    await until(lambda: run.held(0) == 0)
    admission = run.host.registry.default.admission
    assert (admission.held, admission.decoding, run.host.hub.lane.pixels.in_use) == (0, 0, 0)
    assert run.engines.first.batches == [1]


async def test_stream_frames_through_a_front_end_keep_their_order(
    workers: Callable[..., Any],
) -> None:
    run: Workers = await workers()
    images = [blocks_image(64, 64, [(32 * (i % 2), 32, i % 3)]) for i in range(8)]
    frames = [request_for(image, frame_id=i + 1) for i, image in enumerate(images)]
    replies = [r async for r in run.stubs[0].DetectStream(iter(frames))]
    assert [r.frame_id for r in replies] == list(range(1, 9))
    labels = ("red", "green", "blue")
    assert [boxes_of(r)[0][0] for r in replies] == [labels[i % 3] for i in range(8)]
    assert all(r.status.code == 0 for r in replies)


def test_reply_rows_beyond_the_region_travel_inline() -> None:
    segment = Segment.create(SlotLayout(slots=2, image_bytes=64 * 64 * 3, reply_rows=2))
    try:
        rng = np.random.default_rng(3)
        dets = Detections(rng.random((5, 4), dtype=np.float32) * 640,
                          rng.random(5, dtype=np.float32), np.arange(5, dtype=np.int64))
        count, overflow = write_rows(segment.reply(1), dets)
        assert count == 5 and overflow is not None and len(overflow[0]) == 3
        back = read_rows(segment.reply(1), count, overflow)
        assert back.boxes.tolist() == dets.boxes.tolist()
        assert back.scores.tolist() == dets.scores.tolist()
        assert back.class_ids.tolist() == dets.class_ids.tolist()
        assert write_rows(segment.reply(0), dets.select(np.arange(2)))[1] is None
    finally:
        segment.close()
        segment.unlink()


async def test_partition_hands_slots_out_in_arrival_order() -> None:
    partition = Partition(2)
    first, second = await partition.take(), await partition.take()
    assert (first, second, partition.in_use) == (0, 1, 2)
    waiting = [asyncio.ensure_future(partition.take()) for _ in range(2)]
    await asyncio.sleep(0)  # let both start waiting
    partition.give(second)
    assert await waiting[0] == second and not waiting[1].done()
    waiting[1].cancel()
    partition.give(first)
    assert partition.in_use == 1 and partition.try_take() == first
