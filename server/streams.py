"""DetectStream: one reply per frame, in frame order, each with its own status.

Two policies, chosen per stream by the call metadata `detserve-stream-policy: block|latest`
(default from the server config):

- `block`: at most `max_in_flight` frames of the stream are being processed; when that many are
  waiting, the server stops reading the stream, so gRPC flow control pushes back on the sender.
  Every frame gets a reply.
- `latest`: one frame at a time is processed. Frames that arrive meanwhile replace the pending
  one (a live camera wants the freshest frame, not a growing queue). Each reply's
  `dropped_frames` counts the frames dropped since the previous reply.

Either way a frame takes one of the server's shared stream slots (stream_slots.py) before it is
read (`block`) or processed (`latest`), so the frames held across all streams stay bounded: with
none free a `block` stream stops reading and a `latest` stream keeps replacing its pending frame.
A frame holding a slot is never refused for a full queue; it waits.

A bad frame gets a non-OK `status` in its reply; the stream goes on.

A stream is one camera for the dead-camera alert (server/drift.py): the one its caller names in
the `detserve-camera-id` metadata, else one of its own ("stream-<n>").

The drain: a stream stops reading, answers the frames it holds and ends. Unless the client had
half-closed and every frame it sent was answered, it ends UNAVAILABLE, saying how many frames
the client sent that were not processed (frame_reader.py counts them), so the client knows to
send those again to another server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from google.rpc import status_pb2

from detserve.protos import detection_pb2 as pb
from detserve.server.cameras import camera_id, stream_camera_id
from detserve.server.detect import DetectCore, deadline_from
from detserve.server.errors import RequestError, clip, invalid, status_code_number
from detserve.server.frame_reader import FrameReader
from detserve.server.stream_slots import StreamSlots
from detserve.server.wire import Incoming

POLICY_KEY = "detserve-stream-policy"
POLICIES = ("block", "latest")


def _ignore_drop(model: str) -> None:
    return None


@dataclass(frozen=True)
class StreamSettings:
    default_policy: str = "block"
    max_in_flight: int = 4
    # Called once per frame dropped by the `latest` policy, with the model the stream asked for.
    on_drop: Callable[[str], None] = field(default=_ignore_drop)
    # Set when the server drains: streams stop reading, answer what they hold, and end.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Frames held across all streams (stream_max_frames_held).
    slots: StreamSlots = field(default_factory=lambda: StreamSlots(256))


def stream_policy(context: grpc.aio.ServicerContext[object, object], default: str) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == POLICY_KEY:
            text = value.decode() if isinstance(value, bytes) else value
            if text not in POLICIES:
                raise invalid(f"metadata {POLICY_KEY} must be one of {list(POLICIES)}, "
                              f"got {clip(text)!r}")
            return text
    return default


@dataclass(frozen=True)
class _Caller:
    peer: str
    camera: str  # server/cameras.py: the caller's camera id, else one of the stream's own


async def _answer(
    core: DetectCore, request: Incoming, deadline: float | None, caller: _Caller
) -> pb.DetectResponse:
    try:
        response = await core.detect(request, deadline, stream=True, peer=caller.peer,
                                     held=True, camera=caller.camera)
        response.status.CopyFrom(status_pb2.Status(code=0))
    except RequestError as exc:
        response = pb.DetectResponse(
            request_id=request.request_id,
            frame_id=request.frame_id,
            status=status_pb2.Status(code=status_code_number(exc.code), message=exc.message),
        )
    return response


async def _block(
    frames: FrameReader, core: DetectCore, deadline: float | None,
    settings: StreamSettings, caller: _Caller,
) -> AsyncGenerator[pb.DetectResponse, None]:
    max_in_flight = settings.max_in_flight
    slots = asyncio.Semaphore(max_in_flight)
    # Unbounded, but never longer than max_in_flight + 1: the semaphore bounds the reader.
    order: asyncio.Queue[asyncio.Task[pb.DetectResponse] | None] = asyncio.Queue()
    failure: list[BaseException] = []

    async def reader() -> None:
        try:
            while True:
                await slots.acquire()  # no free slot: stop reading (backpressure)
                await settings.slots.acquire()
                try:
                    request = await frames.next_frame()
                except BaseException:  # the stream went away while waiting for a frame
                    settings.slots.release()
                    raise
                if request is None:
                    settings.slots.release()
                    return
                task = asyncio.create_task(_answer(core, request, deadline, caller))
                # The shared slot is free once the frame is processed, not when the client
                # has read its reply: a slow reader is held back by its own slots only.
                task.add_done_callback(lambda _: settings.slots.release())
                order.put_nowait(task)
        except Exception as exc:
            failure.append(exc)
        finally:
            order.put_nowait(None)

    reading = asyncio.create_task(reader())
    try:
        while (task := await order.get()) is not None:
            yield await task
            slots.release()
        if failure:
            raise failure[0]
    finally:
        reading.cancel()
        while not order.empty():
            leftover = order.get_nowait()
            if leftover is not None:
                leftover.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


@dataclass
class _Latest:
    pending: Incoming | None = None
    dropped: int = 0
    done: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)


async def _latest(
    frames: FrameReader, core: DetectCore, deadline: float | None,
    settings: StreamSettings, caller: _Caller,
) -> AsyncGenerator[pb.DetectResponse, None]:
    state = _Latest()
    failure: list[BaseException] = []

    async def reader() -> None:
        try:
            while (request := await frames.next_frame()) is not None:
                if state.pending is not None:
                    state.dropped += 1
                    settings.on_drop(state.pending.model)
                state.pending = request
                state.wake.set()
        except Exception as exc:
            failure.append(exc)
        finally:
            state.done = True
            state.wake.set()

    reading = asyncio.create_task(reader())
    try:
        while True:
            if state.pending is None:
                if state.done:
                    break
                state.wake.clear()
                await state.wake.wait()
                continue
            await settings.slots.acquire()  # frames keep replacing the pending one meanwhile
            try:
                request, state.pending = state.pending, None
                if request is None:  # only this loop clears it; kept for the type checker
                    continue
                response = await _answer(core, request, deadline, caller)
            finally:
                settings.slots.release()
            response.dropped_frames, state.dropped = state.dropped, 0
            yield response
        if failure:
            raise failure[0]
    finally:
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading


def drained_message(unread: int) -> str:
    frames = "frame" if unread == 1 else "frames"
    return (f"server is shutting down (draining): this stream was ended after the frames it had "
            f"read were answered; {unread} {frames} sent after that were not processed "
            f"(send them again, to another server)")


async def run_stream(
    requests: AsyncIterator[Incoming],
    context: grpc.aio.ServicerContext[pb.DetectRequest, pb.DetectResponse],
    core: DetectCore,
    settings: StreamSettings,
) -> AsyncGenerator[pb.DetectResponse, None]:
    try:
        policy = stream_policy(context, settings.default_policy)
        caller = _Caller(context.peer(), camera_id(context) or stream_camera_id())
    except RequestError as exc:
        await context.abort(exc.code, exc.message)
        raise
    deadline = deadline_from(context)
    frames = FrameReader(requests, settings.stopping)
    try:
        replies = (_block if policy == "block" else _latest)(frames, core, deadline, settings,
                                                              caller)
        # Closed here, not whenever the garbage collector gets to it: its reader task and the
        # shared slots it holds are given back when this stream ends.
        async with contextlib.aclosing(replies):
            async for response in replies:
                yield response
        if frames.stopped:
            unread = await frames.count_unread()
            if unread or not frames.ended:
                await context.abort(grpc.StatusCode.UNAVAILABLE, drained_message(unread))
    finally:
        await frames.close()
