"""Deadlines, cancellation, a full queue, drain, health checking and reflection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from detserve.protos import detection_pb2 as pb
from detserve.protos import inference_pb2 as ip
from detserve.server.app import ServerStartError, start_server

from .conftest import WAIT_S, Running, blocks_model, boxes_of, request_for, server_config, until
from .drain_helpers import GOOD, GOOD_BOXES, drained_stream

SERVING = health_pb2.HealthCheckResponse.SERVING
DETECTOR = "detserve.v1.Detector"
OIP = "inference.GRPCInferenceService"
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _one_in_engine_one_queued(
    start: Callable[..., Any], tiny_package: Path, queue_size: int = 256
) -> tuple[Running, asyncio.Future[pb.DetectResponse]]:
    """A server whose engine is busy (gated) with a first request; returns it and that call."""
    model = blocks_model(tiny_package, max_batch_size=1, max_queue_size=queue_size)
    run: Running = await start(server_config(model), open_gate=False)
    first = asyncio.ensure_future(run.stub.Detect(request_for(GOOD, frame_id=1)))
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    return run, first


async def test_deadline_expired_in_queue_never_reaches_engine(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run, first = await _one_in_engine_one_queued(start, tiny_package)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD, frame_id=2), timeout=0.2)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    batcher = run.server.registry.default.batcher
    await until(lambda: batcher.queue_depth() == 0)
    run.engines.first.gate.set()
    assert boxes_of(await first) == GOOD_BOXES
    assert boxes_of(await run.stub.Detect(request_for(GOOD))) == GOOD_BOXES
    assert run.engines.first.batches == [1, 1]  # the first and the last; never the expired one


async def test_cancelled_call_leaves_the_queue(start: Callable[..., Any],
                                               tiny_package: Path) -> None:
    run, first = await _one_in_engine_one_queued(start, tiny_package)
    batcher = run.server.registry.default.batcher
    queued = run.stub.Detect(request_for(GOOD, frame_id=2))
    await until(lambda: batcher.queue_depth() == 1)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    await until(lambda: batcher.queue_depth() == 0)
    run.engines.first.gate.set()
    assert (await first).frame_id == 1
    assert run.engines.first.batches == [1]
    metrics = run.server.observer.metrics.render().decode()
    assert 'detserve_requests_total{code="CANCELLED",model="blocks@64"} 1.0' in metrics


async def test_full_queue_is_resource_exhausted_at_once(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run, first = await _one_in_engine_one_queued(start, tiny_package, queue_size=1)
    batcher = run.server.registry.default.batcher
    second = asyncio.ensure_future(run.stub.Detect(request_for(GOOD, frame_id=2)))
    await until(lambda: batcher.queue_depth() == 1)
    # The engine stays blocked, so only an immediate refusal can meet this deadline.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD, frame_id=3), timeout=WAIT_S / 2)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "has 1 requests waiting, its batching.max_queue_size" in (err.value.details() or "")
    run.engines.first.gate.set()
    assert [(await t).frame_id for t in (first, second)] == [1, 2]
    assert boxes_of(await run.stub.Detect(request_for(GOOD))) == GOOD_BOXES


async def test_drain_answers_in_flight_and_refuses_new(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run, first = await _one_in_engine_one_queued(start, tiny_package)
    health = health_pb2_grpc.HealthStub(run.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
    assert (await watch.read()).status == SERVING
    stopping = asyncio.create_task(run.server.stop(grace_s=WAIT_S))
    assert (await asyncio.wait_for(watch.read(), WAIT_S)).status == NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD, frame_id=2), timeout=WAIT_S)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not stopping.done()
    run.engines.first.gate.set()
    reply = await asyncio.wait_for(first, WAIT_S)
    assert (reply.frame_id, boxes_of(reply)) == (1, GOOD_BOXES)
    await asyncio.wait_for(stopping, WAIT_S)
    assert run.engines.first.batches == [1]


async def test_health_reports_overall_and_per_service(start: Callable[..., Any]) -> None:
    run = await start()
    health = health_pb2_grpc.HealthStub(run.channel)
    for service in ("", "detserve.v1.Detector"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        assert reply.status == SERVING, service
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def _reflect(port: int) -> tuple[list[str], dict[str, list[str]]]:
    """The services the server lists, and the methods reflection describes for ours."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        db = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(db.get_services())
        methods = {}
        for name in (DETECTOR, OIP):
            proto = db.FindFileContainingSymbol(name)
            service = next(s for s in proto.service if f"{proto.package}.{s.name}" == name)
            methods[name] = [m.name for m in service.method]
        return services, methods


async def test_reflection_lists_services(start: Callable[..., Any]) -> None:
    run = await start()
    # The reflection client is synchronous; the server shares this event loop.
    services, methods = await asyncio.to_thread(_reflect, run.server.port)
    assert services == ["detserve.v1.Detector", "grpc.health.v1.Health",
                        "grpc.reflection.v1alpha.ServerReflection",
                        "inference.GRPCInferenceService"]
    assert methods[DETECTOR] == ["Detect", "DetectStream", "ListModels", "GetModelInfo"]
    assert methods[OIP] == [m.name for m in ip.DESCRIPTOR.services_by_name[
        "GRPCInferenceService"].methods]
    assert {"ServerLive", "ModelInfer", "ModelStreamInfer"} <= set(methods[OIP])


async def test_drain_ends_open_streams_after_their_pending_frames(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run: Running = await start(server_config(blocks_model(tiny_package)), open_gate=False)
    replies, error = await drained_stream(run, sent=1)  # the client never half-closes
    assert [(r.frame_id, r.status.code, boxes_of(r)) for r in replies] == [(0, 0, GOOD_BOXES)]
    # The client had not ended the stream: it learns the server cut it, and that it lost none.
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert "0 frames sent after that were not processed" in (error.details() or "")


async def test_cancelled_stream_releases_its_frames(start: Callable[..., Any],
                                                    tiny_package: Path) -> None:
    model = blocks_model(tiny_package, max_batch_size=1)
    run: Running = await start(server_config(model, stream_max_in_flight=3), open_gate=False)
    batcher = run.server.registry.default.batcher
    call = run.stub.DetectStream(iter([request_for(GOOD, frame_id=i) for i in range(3)]))
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    await until(lambda: batcher.queue_depth() == 2)
    call.cancel()
    await until(lambda: batcher.queue_depth() == 0)  # the queued frames left with the stream
    await until(lambda: run.server.service.active_calls == 0)
    run.engines.first.gate.set()
    assert boxes_of(await run.stub.Detect(request_for(GOOD))) == GOOD_BOXES
    assert run.engines.first.batches == [1, 1]  # frame 0, then the new call; never frames 1-2


async def test_busy_port_is_a_clear_error(start: Callable[..., Any], tiny_package: Path) -> None:
    run: Running = await start()
    config = server_config(blocks_model(tiny_package), port=run.server.port)
    with pytest.raises(ServerStartError, match=f"'127.0.0.1:{run.server.port}' \\(port in use"):
        await start_server(config)
    assert boxes_of(await run.stub.Detect(request_for(GOOD))) == GOOD_BOXES
