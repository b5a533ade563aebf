"""Issue 14, the code review's findings: an observer that raises, stream generators closed on
time, a frame read that outlives its reader, a shared stream slot lost to a cancelled stream, and
a batcher worker that dies behind a SERVING health."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detserve.protos import detection_pb2 as pb
from detserve.server.batcher import Batcher, BatcherFailedError, BatchingConfig
from detserve.server.detect import RequestRecord
from detserve.server.frame_reader import FrameReader
from detserve.server.stream_slots import StreamSlots
from detserve.server.streams import StreamSettings, run_stream

from .conftest import WAIT_S, Running, blocks_image, boxes_of, request_for, until
from .log_capture import CapturedLog, captured_log

__all__ = ["captured_log"]

GOOD = blocks_image(64, 64, [(0, 0, 0)])
GOOD_BOXES = [("red", 1.0, [0.0, 0.0, 32.0, 32.0])]
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _broken_observer(record: RequestRecord) -> None:
    raise RuntimeError("metrics registry exploded")


async def test_an_observer_that_raises_keeps_the_reply_and_the_stream(
    start: Callable[..., Any], captured_log: CapturedLog
) -> None:
    run: Running = await start()
    run.server.core.observer = _broken_observer  # fault injection: a bug in metrics or alerts
    assert boxes_of(await run.stub.Detect(request_for(GOOD, request_id="u1"))) == GOOD_BOXES
    frames = [request_for(GOOD, frame_id=i) for i in range(3)]
    replies = [r async for r in run.stub.DetectStream(iter(frames))]
    assert [(r.frame_id, r.status.code, boxes_of(r)) for r in replies] == [
        (i, 0, GOOD_BOXES) for i in range(3)]
    failed = captured_log.events("observer_failed")
    assert len(failed) == 4 and failed[0]["request_id"] == "u1"
    assert failed[0]["error"] == "RuntimeError: metrics registry exploded"


async def test_a_cancelled_stream_gives_back_the_shared_slot_its_reader_held(
    start: Callable[..., Any],
) -> None:
    run: Running = await start()
    slots = run.server.service.streams.slots
    call = run.stub.DetectStream()
    await call.write(request_for(GOOD, frame_id=1))
    assert (await call.read()).frame_id == 1
    await until(lambda: slots.held == 1)  # the reader took a slot for the next frame
    call.cancel()
    await until(lambda: run.server.service.active_calls == 0)
    await until(lambda: slots.held == 0)


Behavior = Callable[[AsyncIterator[pb.DetectRequest], Any], AsyncGenerator[pb.DetectResponse, None]]


async def _probe(behavior: Behavior) -> pb.DetectResponse:
    """Run `behavior` as the handler of a stream on a server of its own (a real call, with
    gRPC's own servicer context); one frame in, the stream left open; its first reply."""
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        behavior, pb.DetectRequest.FromString, pb.DetectResponse.SerializeToString)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("probe.Probe", {"Stream": handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream("/probe.Probe/Stream",
                                         request_serializer=pb.DetectRequest.SerializeToString,
                                         response_deserializer=pb.DetectResponse.FromString)()
            await call.write(request_for(GOOD, frame_id=7))
            reply: pb.DetectResponse = await asyncio.wait_for(call.read(), WAIT_S)
            call.cancel()
            return reply
    finally:
        await server.stop(None)


async def test_closing_a_stream_closes_its_nested_generators_at_once(
    start: Callable[..., Any],
) -> None:
    """aclose() of the outer generator must run the inner one's cleanup before it returns, not
    whenever the garbage collector's finalizer task gets to it."""
    run: Running = await start()

    async def behavior(requests: AsyncIterator[pb.DetectRequest], context: Any
                       ) -> AsyncGenerator[pb.DetectResponse, None]:
        settings = StreamSettings(max_in_flight=2, slots=StreamSlots(8))
        replies = run_stream(requests, context, run.server.core, settings)
        first = await anext(replies)
        await until(lambda: settings.slots.held == 1)  # the reader waits for frame 2
        await replies.aclose()
        first.status.message = f"held after close: {settings.slots.held}"
        yield first

    reply = await _probe(behavior)
    assert (reply.frame_id, boxes_of(reply)) == (7, GOOD_BOXES)
    assert reply.status.message == "held after close: 0"


async def test_closing_the_servicers_stream_closes_run_stream_at_once(
    start: Callable[..., Any],
) -> None:
    run: Running = await start()
    service = run.server.service

    async def behavior(requests: AsyncIterator[pb.DetectRequest], context: Any
                       ) -> AsyncGenerator[pb.DetectResponse, None]:
        replies = service.DetectStream(requests, context)
        first = await anext(replies)
        await until(lambda: service.streams.slots.held == 1)
        await replies.aclose()  # type: ignore[attr-defined]
        first.status.message = (f"held after close: {service.streams.slots.held}, calls: "
                                f"{service.active_calls}")
        yield first

    reply = await _probe(behavior)
    assert reply.status.message == "held after close: 0, calls: 0"


async def test_a_cancelled_next_frame_cancels_and_awaits_its_read() -> None:
    reading = asyncio.Event()
    read_ended: list[str] = []

    async def frames() -> AsyncIterator[pb.DetectRequest]:
        reading.set()
        try:
            await asyncio.Event().wait()  # a client that sends nothing more
            yield pb.DetectRequest()
        finally:
            read_ended.append("read ended")

    reader = FrameReader(frames(), asyncio.Event())
    task = asyncio.ensure_future(reader.next_frame())
    await asyncio.wait_for(reading.wait(), WAIT_S)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert read_ended == ["read ended"]  # no read task left behind, pending


async def test_a_frame_read_the_drain_interrupts_is_counted_then_closed() -> None:
    stopping = asyncio.Event()
    queue: asyncio.Queue[pb.DetectRequest | None] = asyncio.Queue()

    async def frames() -> AsyncIterator[pb.DetectRequest]:
        while (frame := await queue.get()) is not None:
            yield frame

    reader = FrameReader(frames(), stopping)
    task = asyncio.ensure_future(reader.next_frame())
    await asyncio.sleep(0)
    stopping.set()
    assert await task is None and reader.stopped and not reader.ended
    for i in range(3):
        queue.put_nowait(pb.DetectRequest(frame_id=i))
    queue.put_nowait(None)  # the client half-closes after them
    assert await reader.count_unread() == 3
    assert reader.ended
    await reader.close()


def _always_failing_estimate() -> bool:
    raise ZeroDivisionError("a bug in the admission estimate")


async def test_a_batcher_whose_worker_dies_goes_out_of_service_and_says_so() -> None:
    faults: list[BaseException] = []
    batcher: Batcher[int, int] = Batcher(
        lambda items: [i * 10 for i in items], BatchingConfig(max_batch_size=2),
        shedding=_always_failing_estimate, batch_time_s=lambda n: 0.001,
        on_fault=faults.append)
    await batcher.start()
    with pytest.raises(ZeroDivisionError):
        await asyncio.wait_for(batcher.submit(1), WAIT_S)
    assert [type(f) for f in faults] == [ZeroDivisionError]
    assert batcher.fault is faults[0]
    with pytest.raises(BatcherFailedError, match="out of service"):
        await batcher.submit(2)
    await batcher.stop()
    assert len(faults) == 1


async def test_a_dead_batcher_worker_turns_health_not_serving(
    start: Callable[..., Any], captured_log: CapturedLog
) -> None:
    run: Running = await start()
    served = run.server.registry.default
    # Fault injection: the batcher's estimate of the server shedding load raises (a bug).
    served.batcher._shedding = _always_failing_estimate  # type: ignore[attr-defined]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD), timeout=WAIT_S)
    assert err.value.code() == grpc.StatusCode.INTERNAL
    health = health_pb2_grpc.HealthStub(run.channel)
    for service in ("", "detserve.v1.Detector"):
        await until_status(health, service, NOT_SERVING)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD), timeout=WAIT_S)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert err.value.details() == ("model 'blocks@64' is out of service: its batcher stopped on "
                                   "an internal error (health reports NOT_SERVING)")
    [line] = captured_log.events("batcher_failed")
    assert (line["model"], line["level"]) == ("blocks@64", "error")
    assert line["error"] == "ZeroDivisionError: a bug in the admission estimate"


async def until_status(health: health_pb2_grpc.HealthStub, service: str, status: int) -> None:
    async def check() -> bool:
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
        return bool(reply.status == status)

    for _ in range(200):
        if await check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"health of {service!r} never became {status}")
