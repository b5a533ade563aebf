"""How a load generator puts one request on the wire: a unary call, or a frame on a stream.

Both return a `Reply` holding the gRPC code name and the response (None on failure) so load
modes handle unary and streaming alike.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio

from detserve.client.bench.recorder import DROPPED, OK
from detserve.client.results import retry_after_s, status_code_from_int
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc


@dataclass(frozen=True)
class Reply:
    code: str
    response: Any  # pb.DetectResponse, or None when the request failed or was dropped
    sent_s: float  # perf_counter when the request was handed to gRPC
    done_s: float  # perf_counter when the reply (or failure) arrived
    retry_after_s: float = 0.0  # the server's grpc-retry-pushback-ms on a refusal


class Sender(Protocol):
    async def send(self, request: pb.DetectRequest) -> Reply: ...

    async def close(self) -> None: ...


class UnarySender:
    """`Detect` calls with a per-call deadline."""

    def __init__(self, stub: pb_grpc.DetectorStub, timeout_s: float) -> None:
        self._stub = stub
        self._timeout_s = timeout_s

    async def send(self, request: pb.DetectRequest) -> Reply:
        sent = time.perf_counter()
        try:
            response = await self._stub.Detect(request, timeout=self._timeout_s)
        except grpc.aio.AioRpcError as err:
            return Reply(err.code().name, None, sent, time.perf_counter(),
                         retry_after_s(err) or 0.0)
        return Reply(OK, response, sent, time.perf_counter())

    async def close(self) -> None:
        return None


_CLOSE = object()
POLICY_KEY = "detserve-stream-policy"  # call metadata read by the server (block | latest)


class StreamSender:
    """One `DetectStream`; `send` queues a frame and waits for its reply.

    Replies arrive in frame order, so a reply for frame f settles every earlier pending frame
    as DROPPED (the server's `latest` policy skipped it). If the stream fails, every pending
    frame fails with the stream's code."""

    def __init__(self, stub: pb_grpc.DetectorStub, policy: str | None = None) -> None:
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._pending: deque[tuple[int, asyncio.Future[Reply]]] = deque()
        self._sent: dict[int, float] = {}
        self._next_id = 1
        self._failed: str | None = None
        metadata = (((POLICY_KEY, policy),) if policy else None)
        self._call = stub.DetectStream(self._requests(), metadata=metadata)
        self._reader = asyncio.create_task(self._read())

    async def _requests(self) -> AsyncIterator[pb.DetectRequest]:
        while True:
            item = await self._outbox.get()
            if item is _CLOSE:
                return
            self._sent[item.frame_id] = time.perf_counter()
            yield item

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._settle(response)
            self._fail_pending("UNKNOWN")  # stream ended with frames unanswered
        except grpc.aio.AioRpcError as err:
            self._fail_pending(err.code().name)
        except asyncio.CancelledError:
            self._fail_pending("CANCELLED")

    def _settle(self, response: pb.DetectResponse) -> None:
        now = time.perf_counter()
        frame_id = int(response.frame_id)
        while self._pending and self._pending[0][0] <= frame_id:
            fid, fut = self._pending.popleft()
            sent = self._sent.pop(fid, now)
            if fid < frame_id:
                reply = Reply(DROPPED, None, sent, now)
            else:
                code = response.status.code if response.HasField("status") else 0
                name = OK if code == 0 else status_code_from_int(code).name
                reply = Reply(name, response if code == 0 else None, sent, now)
            if not fut.done():
                fut.set_result(reply)

    def _fail_pending(self, code: str) -> None:
        self._failed = code
        now = time.perf_counter()
        while self._pending:
            fid, fut = self._pending.popleft()
            if not fut.done():
                fut.set_result(Reply(code, None, self._sent.pop(fid, now), now))

    async def send(self, request: pb.DetectRequest) -> Reply:
        if self._failed is not None:
            now = time.perf_counter()
            return Reply(self._failed, None, now, now)
        frame_id = self._next_id
        self._next_id += 1
        req = pb.DetectRequest()
        req.CopyFrom(request)
        req.frame_id = frame_id
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending.append((frame_id, fut))
        self._outbox.put_nowait(req)
        return await fut

    async def close(self) -> None:
        self._outbox.put_nowait(_CLOSE)
        try:
            await asyncio.wait_for(asyncio.shield(self._reader), 30.0)
        except TimeoutError:
            self._call.cancel()
            self._reader.cancel()
