"""Issue 14, drain edges: a drained stream says how many of its frames went unprocessed, calls
that race the final stop or outlive the grace get UNAVAILABLE (never CANCELLED), and a hung
engine cannot hold the batchers' drain or the process's exit."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from detserve.server.batcher import Batcher, BatchingConfig

from .conftest import WAIT_S, Running, blocks_model, boxes_of, request_for, server_config, until
from .drain_helpers import GOOD, GOOD_BOXES, drained_stream

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE


async def test_drained_block_stream_is_unavailable_counting_its_unprocessed_frames(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    config = server_config(blocks_model(tiny_package, max_batch_size=1), stream_max_in_flight=1)
    run: Running = await start(config, open_gate=False)
    replies, error = await drained_stream(run, sent=5, policy="block")
    # Frame 0 was being processed, so it is answered; frames 1-4 were sent and never read.
    assert [(r.frame_id, r.status.code, boxes_of(r)) for r in replies] == [(0, 0, GOOD_BOXES)]
    assert error.code() == UNAVAILABLE
    assert "4 frames sent after that were not processed" in (error.details() or "")
    assert run.engines.first.batches == [1]


async def test_drained_latest_stream_is_unavailable_too(start: Callable[..., Any],
                                                        tiny_package: Path) -> None:
    run: Running = await start(server_config(blocks_model(tiny_package)), open_gate=False)
    replies, error = await drained_stream(run, sent=1, policy="latest")
    assert [(r.frame_id, boxes_of(r)) for r in replies] == [(0, GOOD_BOXES)]
    assert error.code() == UNAVAILABLE
    assert "0 frames sent after that were not processed" in (error.details() or "")


async def test_a_stream_the_client_ended_drains_with_ok(start: Callable[..., Any],
                                                        tiny_package: Path) -> None:
    run: Running = await start(server_config(blocks_model(tiny_package)), open_gate=False)
    call = run.stub.DetectStream()
    await call.write(request_for(GOOD, frame_id=3))
    await call.done_writing()
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    stopping = asyncio.create_task(run.server.stop(grace_s=WAIT_S))
    await until(lambda: run.server.service.draining)
    run.engines.first.gate.set()
    assert [r.frame_id async for r in call] == [3]
    assert await call.code() == grpc.StatusCode.OK  # every frame it sent was answered
    await asyncio.wait_for(stopping, WAIT_S)


async def test_calls_racing_the_final_stop_get_unavailable_not_cancelled(
    start: Callable[..., Any],
) -> None:
    run: Running = await start()
    answered = 0
    endings: list[grpc.StatusCode] = []

    async def caller() -> None:
        """Calls back to back until the first refusal, as a client without retries does."""
        nonlocal answered
        while True:
            try:
                await run.stub.Detect(request_for(GOOD), timeout=WAIT_S)
                answered += 1
            except grpc.aio.AioRpcError as exc:
                endings.append(exc.code())
                return

    callers = [asyncio.create_task(caller()) for _ in range(16)]
    await until(lambda: answered >= 64)  # every caller has calls on the wire
    await run.server.stop(grace_s=WAIT_S)
    await asyncio.wait_for(asyncio.gather(*callers), WAIT_S)
    assert len(endings) == 16
    assert set(endings) == {UNAVAILABLE}


async def test_a_call_that_outlives_the_grace_is_unavailable(start: Callable[..., Any]) -> None:
    run: Running = await start(open_gate=False)
    call = asyncio.ensure_future(run.stub.Detect(request_for(GOOD), timeout=WAIT_S))
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    started = time.monotonic()
    await run.server.stop(grace_s=0.3)  # the engine never finishes within it
    assert time.monotonic() - started < 3.0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call
    assert err.value.code() == UNAVAILABLE
    assert err.value.details() == ("server is shutting down: the call was not answered within "
                                   "the drain's 0.3 s")


async def test_registry_stop_drains_models_at_once_and_is_bounded(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    """Two models whose engines hang: the drain waits the bound once, not once per model, and
    the requests the engines hold fail with UNAVAILABLE."""
    second = replace(blocks_model(tiny_package), variant="second")
    config = server_config(blocks_model(tiny_package), second, drain_grace_s=0.5)
    run: Running = await start(config, open_gate=False)
    calls = [asyncio.ensure_future(run.stub.Detect(request_for(GOOD, model=m), timeout=WAIT_S))
             for m in ("blocks@64", "blocks@second")]
    for engine in run.engines.engines:
        assert await asyncio.wait_for(engine.entered.get(), WAIT_S) == 1
    registry = run.server.registry
    started = time.monotonic()
    await registry.stop(drain=True)  # type: ignore[attr-defined]
    took = time.monotonic() - started
    assert 0.45 < took < 0.95, took  # one bound of 0.5 s, for both
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == UNAVAILABLE


HUNG_EXIT = textwrap.dedent("""
    import asyncio, threading
    from detserve.server.batcher import Batcher, BatchingConfig

    def hang(items):
        threading.Event().wait()  # an engine run that never returns

    async def main():
        batcher = Batcher(hang, BatchingConfig(max_batch_size=1, max_queue_delay_s=0.0))
        await batcher.start()
        submitted = asyncio.ensure_future(batcher.submit(1))
        while not batcher.running:
            await asyncio.sleep(0.01)
        print("finished" if await batcher.stop(drain=True, timeout_s=0.2) else "abandoned")
        try:
            await submitted
        except Exception as exc:
            print(type(exc).__name__)

    asyncio.run(main())
""")


def test_a_hung_engine_run_does_not_hold_the_process_at_exit() -> None:
    """A ThreadPoolExecutor's threads are joined at exit: the process would never end."""
    done = subprocess.run([sys.executable, "-c", HUNG_EXIT], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["abandoned", "BatcherClosedError"]


async def test_batcher_stop_without_a_bound_still_waits_for_the_engine() -> None:
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()

    def slow(items: list[int]) -> list[int | Exception]:
        loop.call_soon_threadsafe(entered.set)
        time.sleep(0.2)
        return [i * 10 for i in items]

    batcher: Batcher[int, int] = Batcher(slow, BatchingConfig(max_batch_size=1,
                                                              max_queue_delay_s=0.0))
    await batcher.start()
    submitted = asyncio.ensure_future(batcher.submit(4))
    await asyncio.wait_for(entered.wait(), WAIT_S)
    assert await batcher.stop(drain=True) is True
    assert (await submitted).value == 40
