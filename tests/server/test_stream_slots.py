"""Frames held across all streams are bounded and shared: many cameras get backpressure, never
per-frame RESOURCE_EXHAUSTED, and a free slot goes to the stream that waited longest."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from detserve.protos import detection_pb2 as pb
from detserve.server.stream_slots import StreamSlots

from .conftest import WAIT_S, blocks_model, boxes_of, server_config
from .test_streams import expected, frame

STREAMS, FRAMES = 200, 5


async def test_200_block_streams_of_5_frames_are_all_answered_in_order(
        start: Callable[..., Any], tiny_package: Path) -> None:
    # 200 streams x 4 frames in flight would be 800 frames: far above both the model's queue
    # bound (8) and the shared slots (32). Every frame must still be answered OK, in order.
    model = blocks_model(tiny_package, max_batch_size=4, max_queue_delay_s=0.001,
                         max_queue_size=8)
    run = await start(server_config(model, stream_max_in_flight=4, stream_max_frames_held=32))
    slots = run.server.service.streams.slots
    most_held = 0

    async def camera(cam: int) -> list[pb.DetectResponse]:
        nonlocal most_held
        replies = []
        call = run.stub.DetectStream(iter([frame(cam * FRAMES + i) for i in range(FRAMES)]),
                                     timeout=60)
        async for reply in call:
            most_held = max(most_held, slots.held)
            replies.append(reply)
        return replies

    results = await asyncio.wait_for(asyncio.gather(*(camera(c) for c in range(STREAMS))), 120)
    for cam, replies in enumerate(results):
        ids = [cam * FRAMES + i for i in range(FRAMES)]
        assert [r.frame_id for r in replies] == ids
        assert [r.status.code for r in replies] == [0] * FRAMES, replies[0].status.message
        assert [boxes_of(r) for r in replies] == [expected(i) for i in ids]
    assert 0 < most_held <= 32
    assert slots.held == 0 and slots.waiting == 0


async def test_slots_go_to_waiters_in_arrival_order() -> None:
    slots = StreamSlots(1)
    await slots.acquire()
    order: list[str] = []

    async def wait(name: str) -> None:
        await slots.acquire()
        order.append(name)

    waiters = [asyncio.create_task(wait(n)) for n in ("a", "b", "c")]
    while slots.waiting < 3:
        await asyncio.sleep(0)
    for task in waiters:  # each release must wake the longest waiter, or this times out
        slots.release()
        await asyncio.wait_for(task, WAIT_S)
    assert order == ["a", "b", "c"] and slots.held == 1


async def test_a_cancelled_waiter_gives_up_its_place() -> None:
    slots = StreamSlots(1)
    await slots.acquire()
    gone = asyncio.create_task(slots.acquire())
    kept = asyncio.create_task(slots.acquire())
    while slots.waiting < 2:
        await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    slots.release()
    await asyncio.wait_for(kept, WAIT_S)
    assert slots.held == 1 and slots.waiting == 0


def test_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stream_max_frames_held must be >= 1, got 0"):
        StreamSlots(0)
