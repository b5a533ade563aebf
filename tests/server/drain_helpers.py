"""What the drain and lifecycle tests share: a request the blocks model answers with one known
box, and a stream drained while its first frame is in the (gated) engine."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from detserve.protos import detection_pb2 as pb

from .conftest import WAIT_S, Running, blocks_image, request_for, until

GOOD = blocks_image(64, 64, [(32, 32, 1)])  # one green cell, bottom right
GOOD_BOXES = [("green", 1.0, [32.0, 32.0, 64.0, 64.0])]


async def drained_stream(run: Running, sent: int, policy: str | None = None
                         ) -> tuple[list[pb.DetectResponse], grpc.aio.AioRpcError]:
    """`sent` frames (ids 0, 1, ...) written without half-closing, the first in the gated
    engine, then the drain: the replies and the status the stream ended with. `policy`: the
    stream's detserve-stream-policy, None for the server's default."""
    metadata = () if policy is None else (("detserve-stream-policy", policy),)
    call = run.stub.DetectStream(metadata=metadata)
    for i in range(sent):
        await call.write(request_for(GOOD, frame_id=i))
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    stopping = asyncio.create_task(run.server.stop(grace_s=WAIT_S))
    await until(lambda: run.server.service.draining)
    run.engines.first.gate.set()
    replies: list[pb.DetectResponse] = []
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async for reply in call:
            replies.append(reply)
    await asyncio.wait_for(stopping, WAIT_S)
    return replies, err.value
