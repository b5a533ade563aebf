"""DetectStream: frame order, per-frame status, the `block` and `latest` policies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from detserve.protos import detection_pb2 as pb

from .conftest import WAIT_S, blocks_image, blocks_model, boxes_of, request_for, server_config

POLICY = "detserve-stream-policy"


def frame(i: int) -> pb.DetectRequest:
    """Frame i: one block whose cell and colour follow i, so each reply is checkable."""
    x, y = 32 * (i % 2), 32 * ((i // 2) % 2)
    request: pb.DetectRequest = request_for(
        blocks_image(64, 64, [(x, y, i % 3)]), frame_id=i, request_id=f"f{i}"
    )
    return request


def expected(i: int) -> list[tuple[str, float, list[float]]]:
    x, y = 32.0 * (i % 2), 32.0 * ((i // 2) % 2)
    return [(("red", "green", "blue")[i % 3], 1.0, [x, y, x + 32, y + 32])]


async def test_block_policy_answers_every_frame_in_order(start: Callable[..., Any],
                                                         tiny_package: Path) -> None:
    config = server_config(blocks_model(tiny_package, max_batch_size=4, max_queue_delay_s=0.001),
                           stream_max_in_flight=3)
    run = await start(config)
    frames = [frame(i) for i in range(12)]
    frames[5] = pb.DetectRequest(frame_id=5, request_id="f5",
                                 image=pb.Image(encoded=b"not an image"))
    frames[8] = request_for(blocks_image(64, 64, []), frame_id=8, request_id="f8",
                            score_threshold=3.0)
    replies = [r async for r in run.stub.DetectStream(iter(frames))]
    assert [r.frame_id for r in replies] == list(range(12))
    assert [r.request_id for r in replies] == [f"f{i}" for i in range(12)]
    codes = [r.status.code for r in replies]
    assert codes == [0] * 5 + [grpc.StatusCode.INVALID_ARGUMENT.value[0]] + [0] * 2 + [
        grpc.StatusCode.INVALID_ARGUMENT.value[0]] + [0] * 3
    assert "not a JPEG or PNG" in replies[5].status.message
    assert "score_threshold" in replies[8].status.message
    for i, reply in enumerate(replies):
        if i not in (5, 8):
            assert boxes_of(reply) == expected(i), i
            assert reply.dropped_frames == 0
            assert reply.model == "blocks@64"


async def test_block_policy_stops_reading_when_frames_are_in_flight(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    config = server_config(blocks_model(tiny_package, max_batch_size=1, max_queue_delay_s=0.0),
                           stream_max_in_flight=2)
    run = await start(config, open_gate=False)
    engine = run.engines.first
    call = run.stub.DetectStream(iter([frame(i) for i in range(6)]))
    replies: list[pb.DetectResponse] = []

    async def read_all() -> None:
        async for reply in call:
            replies.append(reply)

    reader = asyncio.create_task(read_all())
    assert await asyncio.wait_for(engine.entered.get(), WAIT_S) == 1
    batcher = run.server.registry.default.batcher
    deadline = time.monotonic() + WAIT_S
    while batcher.queue_depth() < 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    # Frame 0 runs and frame 1 waits in the batcher: both slots are taken. Give the server ample
    # time to misbehave; an unbounded reader would have queued frames 2-5 by now.
    await asyncio.sleep(0.2)
    assert (batcher.queue_depth(), engine.entered.qsize()) == (1, 0)
    engine.gate.set()
    await asyncio.wait_for(reader, WAIT_S)
    assert [r.frame_id for r in replies] == list(range(6))
    assert all(boxes_of(r) == expected(r.frame_id) for r in replies)
    assert max(engine.batches) == 1 and len(engine.batches) == 6


async def test_latest_policy_drops_stale_frames_and_counts_them(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    drops: list[str] = []
    four_dropped = asyncio.Event()

    def on_drop(model: str) -> None:
        drops.append(model)
        if len(drops) == 4:
            four_dropped.set()

    config = server_config(blocks_model(tiny_package, max_batch_size=1))
    run = await start(config, open_gate=False, on_stream_drop=on_drop)
    engine = run.engines.first
    call = run.stub.DetectStream(metadata=((POLICY, "latest"),))
    await call.write(frame(0))
    assert await asyncio.wait_for(engine.entered.get(), WAIT_S) == 1
    for i in range(1, 6):  # frames 1-4 are replaced by their successor while frame 0 runs
        await call.write(frame(i))
    await asyncio.wait_for(four_dropped.wait(), WAIT_S)
    engine.gate.set()
    await call.done_writing()
    replies = [r async for r in call]
    assert [(r.frame_id, r.dropped_frames) for r in replies] == [(0, 4), (5, 0)]
    assert [boxes_of(r) for r in replies] == [expected(0), expected(5)]
    assert engine.batches == [1, 1]
    assert drops == [""] * 4
    metrics = run.server.observer.metrics.render().decode()
    assert 'detserve_stream_dropped_frames_total{model="blocks@64"} 4.0' in metrics


async def test_invalid_stream_policy_is_invalid_argument(start: Callable[..., Any]) -> None:
    run = await start()
    call = run.stub.DetectStream(iter([frame(0)]), metadata=((POLICY, "newest"),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [r async for r in call]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "detserve-stream-policy" in (err.value.details() or "")
    assert "'newest'" in (err.value.details() or "")
    replies = [r async for r in run.stub.DetectStream(iter([frame(1)]))]
    assert [boxes_of(r) for r in replies] == [expected(1)]
