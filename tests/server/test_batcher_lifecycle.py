"""Batcher rules for a request's life (queue bound, deadlines, cancellation, the exception
boundary, start/stop and drain), each gated with events rather than sleeps; see
batcher_helpers.py for `Recorder`."""

from __future__ import annotations

import asyncio
import time
from typing import cast

import pytest

from detserve.server.batcher import (
    Batcher,
    BatcherClosedError,
    BatchingConfig,
    BatchOutcome,
    DeadlineExpiredError,
    QueueFullError,
)

from .batcher_helpers import WAIT_S, Recorder, gather, started, until

# -- queue bound, deadlines, cancellation -----------------------------------------------------


async def test_full_queue_refuses_at_once_and_recovers() -> None:
    rec = Recorder(gated=True)
    cfg = BatchingConfig(max_batch_size=1, max_queue_delay_s=0.0, max_queue_size=2)
    batcher = await started(rec, cfg)
    running = asyncio.ensure_future(batcher.submit(1))
    await rec.next_batch()
    queued = asyncio.ensure_future(gather(batcher, 2, 3))
    await until(lambda: batcher.queue_depth() == 2)
    with pytest.raises(QueueFullError, match=r"queue is full \(2 requests waiting\)"):
        await batcher.submit(4)
    rec.gate.set()
    assert (await asyncio.wait_for(running, WAIT_S)).value == 10
    assert [o.value for o in await asyncio.wait_for(queued, WAIT_S)] == [20, 30]
    assert (await asyncio.wait_for(batcher.submit(5), WAIT_S)).value == 50
    assert 4 not in rec.seen()
    await batcher.stop()


async def test_expired_deadline_at_submit_never_runs() -> None:
    rec = Recorder()
    batcher = await started(rec, BatchingConfig(max_queue_delay_s=0.0))
    with pytest.raises(DeadlineExpiredError, match="before the request was queued"):
        await batcher.submit(7, deadline=time.monotonic() - 0.01)
    assert rec.batches == []
    await batcher.stop()


async def test_deadline_passing_in_the_queue_fails_it_and_spares_neighbours() -> None:
    rec = Recorder(gated=True)
    batcher = await started(rec, BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0))
    running = asyncio.ensure_future(batcher.submit(1))
    await rec.next_batch()
    doomed = asyncio.ensure_future(batcher.submit(2, deadline=time.monotonic() + 0.02))
    patient = asyncio.ensure_future(batcher.submit(3, deadline=time.monotonic() + WAIT_S))
    await until(lambda: batcher.queue_depth() == 2)
    with pytest.raises(DeadlineExpiredError, match="in the queue, before the request ran"):
        await asyncio.wait_for(doomed, WAIT_S)  # answered while the worker is still busy
    assert batcher.queue_depth() == 1
    rec.gate.set()
    await asyncio.wait_for(running, WAIT_S)
    assert (await asyncio.wait_for(patient, WAIT_S)).value == 30
    assert rec.batches == [[1], [3]]
    await batcher.stop()


async def test_deadline_passing_while_the_loop_is_blocked_still_keeps_it_from_the_engine() -> None:
    rec = Recorder(gated=True)
    batcher = await started(rec, BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0))
    running = asyncio.ensure_future(batcher.submit(1))
    await rec.next_batch()
    deadline = time.monotonic() + 0.02
    late = asyncio.ensure_future(batcher.submit(2, deadline=deadline))
    on_time = asyncio.ensure_future(batcher.submit(3))
    await until(lambda: batcher.queue_depth() == 2)
    # Block the loop past the deadline: whichever check (timer or dequeue) sees it, it must not run.
    while time.monotonic() < deadline:
        pass
    rec.gate.set()
    await asyncio.wait_for(running, WAIT_S)
    with pytest.raises(DeadlineExpiredError):
        await asyncio.wait_for(late, WAIT_S)
    assert (await asyncio.wait_for(on_time, WAIT_S)).batch_size == 1
    assert rec.batches == [[1], [3]]
    await batcher.stop()


async def test_cancelled_request_is_dropped_before_its_batch_runs() -> None:
    rec = Recorder(gated=True)
    batcher = await started(rec, BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0))
    running = asyncio.ensure_future(batcher.submit(1))
    await rec.next_batch()
    victim = asyncio.ensure_future(batcher.submit(2))
    keeper = asyncio.ensure_future(batcher.submit(3))
    await until(lambda: batcher.queue_depth() == 2)
    victim.cancel()
    await until(lambda: batcher.queue_depth() == 1)
    rec.gate.set()
    await asyncio.wait_for(running, WAIT_S)
    assert (await asyncio.wait_for(keeper, WAIT_S)).batch_size == 1
    assert victim.cancelled()
    assert rec.batches == [[1], [3]]
    await batcher.stop()


async def test_cancelling_a_running_request_leaves_the_batch_intact() -> None:
    rec = Recorder(gated=True)
    batcher = await started(rec, BatchingConfig(max_batch_size=2, max_queue_delay_s=0.0))
    victim = asyncio.ensure_future(batcher.submit(1))
    keeper = asyncio.ensure_future(batcher.submit(2))
    assert await rec.next_batch() == [1, 2]
    victim.cancel()
    rec.gate.set()
    assert (await asyncio.wait_for(keeper, WAIT_S)).value == 20
    assert victim.cancelled()
    await batcher.stop()


# -- exception boundary -----------------------------------------------------------------------


async def test_raising_run_batch_fails_its_whole_batch_and_the_batcher_lives_on() -> None:
    rec = Recorder()
    batcher = await started(rec, BatchingConfig(max_batch_size=3, max_queue_delay_s=60.0))
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in (1, -2, 3)), return_exceptions=True), WAIT_S
    )
    assert all(isinstance(r, OSError) and str(r) == "engine exploded" for r in results)
    outcomes = await asyncio.wait_for(gather(batcher, 4, 5, 6), WAIT_S)
    assert [o.value for o in outcomes] == [40, 50, 60]
    await batcher.stop()


async def test_per_item_exception_fails_only_that_item() -> None:
    rec = Recorder()
    batcher = await started(rec, BatchingConfig(max_batch_size=3, max_queue_delay_s=60.0))
    results = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in (1, -1, 3)), return_exceptions=True), WAIT_S
    )
    assert isinstance(results[1], ValueError) and str(results[1]) == "bad item -1"
    assert [r.value for r in (results[0], results[2]) if isinstance(r, BatchOutcome)] == [10, 30]
    await batcher.stop()


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ([1], "run_batch returned 1 results for a batch of 2 items"),
        ([1, 2, 3], "run_batch returned 3 results for a batch of 2 items"),
        ((1, 2), "run_batch must return a list, got tuple"),
    ],
)
async def test_malformed_run_batch_result_fails_every_item(returned: object, message: str) -> None:
    def run_batch(items: list[int]) -> list[int | Exception]:
        return cast(list[int | Exception], returned)

    batcher: Batcher[int, int] = Batcher(run_batch, BatchingConfig(max_batch_size=2), name="bad")
    await batcher.start()
    results = await asyncio.wait_for(
        asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True), WAIT_S
    )
    assert [str(r) for r in results] == [message, message]
    assert all(isinstance(r, RuntimeError) for r in results)
    await batcher.stop()


# -- lifecycle --------------------------------------------------------------------------------


async def test_submit_before_start_is_a_clear_error() -> None:
    batcher: Batcher[int, int] = Batcher(Recorder(), BatchingConfig(), name="cold")
    with pytest.raises(RuntimeError, match="batcher 'cold' is not started"):
        await batcher.submit(1)


async def test_stop_with_drain_runs_queued_items_and_refuses_new_ones() -> None:
    rec = Recorder(gated=True)
    batcher = await started(rec, BatchingConfig(max_batch_size=2, max_queue_delay_s=60.0))
    running = asyncio.ensure_future(gather(batcher, 1, 2))
    await rec.next_batch()
    queued = asyncio.ensure_future(batcher.submit(3))  # would wait 60 s for company
    await until(lambda: batcher.queue_depth() == 1)
    stopping = asyncio.ensure_future(batcher.stop(drain=True))
    await asyncio.sleep(0)
    with pytest.raises(BatcherClosedError, match="batcher 't' is shutting down"):
        await batcher.submit(4)
    rec.gate.set()
    await asyncio.wait_for(stopping, WAIT_S)
    assert [o.value for o in running.result()] == [10, 20]
    assert queued.result().value == 30
    assert rec.batches == [[1, 2], [3]]
    await batcher.stop()  # idempotent


async def test_stop_without_drain_fails_queued_items_and_finishes_running_ones() -> None:
    rec = Recorder(gated=True)
    batcher = await started(rec, BatchingConfig(max_batch_size=1, max_queue_delay_s=0.0))
    running = asyncio.ensure_future(batcher.submit(1))
    await rec.next_batch()
    queued = asyncio.ensure_future(batcher.submit(2))
    await until(lambda: batcher.queue_depth() == 1)
    stopping = asyncio.ensure_future(batcher.stop(drain=False))
    with pytest.raises(BatcherClosedError, match="stopped before the request ran"):
        await asyncio.wait_for(queued, WAIT_S)
    rec.gate.set()
    await asyncio.wait_for(stopping, WAIT_S)
    assert running.result().value == 10
    assert rec.batches == [[1]]
