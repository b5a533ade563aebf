"""Batcher rules, each gated with events rather than sleeps.

`Recorder` is a real run_batch: it multiplies ints by 10, records every batch it sees, turns the
item -1 into a per-item ValueError and raises for a batch holding -2. With a gate it blocks in the
worker thread until the test releases it, so the test controls when a batch finishes.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import pytest

from detserve.server.batcher import (
    Batcher,
    BatcherClosedError,
    BatchingConfig,
    BatchOutcome,
    DeadlineExpiredError,
    QueueFullError,
)

WAIT_S = 5.0  # upper bound for anything that should happen promptly; never reached when green


class Recorder:
    def __init__(self, gated: bool = False) -> None:
        self.loop = asyncio.get_running_loop()
        self.batches: list[list[int]] = []
        self.entered: asyncio.Queue[list[int]] = asyncio.Queue()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.entered_at: list[float] = []
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0

    def __call__(self, items: list[int]) -> list[int | Exception]:
        with self._lock:
            self.batches.append(list(items))
            self.entered_at.append(time.perf_counter())
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.loop.call_soon_threadsafe(self.entered.put_nowait, list(items))
        try:
            if not self.gate.wait(WAIT_S):
                raise RuntimeError("test gate never opened")
            if -2 in items:
                raise OSError("engine exploded")
            return [ValueError(f"bad item {i}") if i == -1 else i * 10 for i in items]
        finally:
            with self._lock:
                self.in_flight -= 1

    async def next_batch(self) -> list[int]:
        return await asyncio.wait_for(self.entered.get(), WAIT_S)

    def seen(self) -> list[int]:
        return [i for batch in self.batches for i in batch]


async def until(cond: Callable[[], bool]) -> None:
    """Yield to the loop until `cond` holds (no wall-clock sleeps)."""
    for _ in range(1000):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def started(rec: Recorder, cfg: BatchingConfig) -> Batcher[int, int]:
    batcher: Batcher[int, int] = Batcher(rec, cfg, name="t")
    await batcher.start()
    return batcher


def gather(batcher: Batcher[int, int], *items: int) -> asyncio.Future[list[BatchOutcome[int]]]:
    return asyncio.gather(*(batcher.submit(i) for i in items))


# -- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_size": 0}, "max_batch_size must be an integer >= 1, got 0"),
        ({"max_batch_size": 2.5}, "max_batch_size must be an integer >= 1, got 2.5"),
        ({"max_batch_size": True}, "max_batch_size must be an integer >= 1, got True"),
        ({"max_queue_size": -3}, "max_queue_size must be an integer >= 1, got -3"),
        ({"instances": 0}, "instances must be an integer >= 1, got 0"),
        (
            {"max_queue_delay_s": -0.001},
            "max_queue_delay_s must be a finite number >= 0, got -0.001",
        ),
        ({"max_queue_delay_s": float("nan")}, "got nan"),
        ({"max_queue_delay_s": "2ms"}, "got '2ms'"),
        (
            {"preferred_batch_sizes": (0,)},
            "each preferred batch size must be an integer >= 1, got 0",
        ),
        (
            {"preferred_batch_sizes": (4, 16)},
            "preferred batch size 16 is larger than max_batch_size 8",
        ),
        (
            {"preferred_batch_sizes": "4"},
            "preferred_batch_sizes must be a list of integers, got '4'",
        ),
    ],
)
def test_config_rejects_bad_values_naming_them(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        cast(Any, BatchingConfig)(**kwargs)  # wrong types on purpose


def test_config_normalises_preferred_sizes_from_a_list() -> None:
    cfg = BatchingConfig(max_batch_size=8, preferred_batch_sizes=cast(Any, [8, 2, 4, 2]))
    assert cfg.preferred_batch_sizes == (2, 4, 8)
    assert cfg.max_queue_delay_s == 0.002 and cfg.max_queue_size == 256 and cfg.instances == 1


# -- forming batches --------------------------------------------------------------------------


async def test_single_request_gets_its_value_and_timings() -> None:
    rec = Recorder()
    batcher = await started(rec, BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0))
    outcome = await asyncio.wait_for(batcher.submit(3), WAIT_S)
    assert outcome.value == 30
    assert outcome.batch_size == 1
    assert outcome.queue_s >= 0 and outcome.run_s >= 0
    assert rec.batches == [[3]]
    await batcher.stop()


async def test_full_batch_forms_at_once_without_waiting_for_the_delay() -> None:
    rec = Recorder()
    batcher = await started(rec, BatchingConfig(max_batch_size=4, max_queue_delay_s=60.0))
    outcomes = await asyncio.wait_for(gather(batcher, 1, 2, 3, 4), WAIT_S)
    assert [o.value for o in outcomes] == [10, 20, 30, 40]
    assert [o.batch_size for o in outcomes] == [4, 4, 4, 4]
    assert rec.batches == [[1, 2, 3, 4]]
    await batcher.stop()


async def test_batches_are_counted_in_images_and_keep_order() -> None:
    rec = Recorder()
    batcher = await started(rec, BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0))
    outcomes = await asyncio.wait_for(gather(batcher, *range(1, 11)), WAIT_S)
    assert rec.batches == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    assert [o.batch_size for o in outcomes] == [4] * 8 + [2] * 2
    await batcher.stop()


async def test_preferred_size_forms_at_once() -> None:
    rec = Recorder()
    cfg = BatchingConfig(max_batch_size=8, max_queue_delay_s=60.0, preferred_batch_sizes=(2, 4))
    batcher = await started(rec, cfg)
    outcomes = await asyncio.wait_for(gather(batcher, 1, 2), WAIT_S)
    assert rec.batches == [[1, 2]]
    assert [o.batch_size for o in outcomes] == [2, 2]
    await batcher.stop()


async def test_largest_reached_preferred_size_is_taken_from_a_backlog() -> None:
    rec = Recorder(gated=True)
    cfg = BatchingConfig(max_batch_size=8, max_queue_delay_s=60.0, preferred_batch_sizes=(2, 4))
    batcher = await started(rec, cfg)
    first = asyncio.ensure_future(gather(batcher, 1, 2))
    assert await rec.next_batch() == [1, 2]
    backlog = asyncio.ensure_future(gather(batcher, 3, 4, 5, 6, 7, 8))
    await until(lambda: batcher.queue_depth() == 6)
    rec.gate.set()
    await asyncio.wait_for(first, WAIT_S)
    assert await rec.next_batch() == [3, 4, 5, 6]
    assert await rec.next_batch() == [7, 8]
    await asyncio.wait_for(backlog, WAIT_S)
    await batcher.stop()


async def test_lone_request_runs_after_the_delay() -> None:
    rec = Recorder()
    batcher = await started(rec, BatchingConfig(max_batch_size=8, max_queue_delay_s=0.05))
    outcome = await asyncio.wait_for(batcher.submit(5), WAIT_S)
    assert outcome.batch_size == 1
    assert outcome.queue_s >= 0.05
    await batcher.stop()


async def test_zero_delay_takes_everything_queued_now() -> None:
    rec = Recorder(gated=True)
    batcher = await started(rec, BatchingConfig(max_batch_size=8, max_queue_delay_s=0.0))
    first = asyncio.ensure_future(batcher.submit(1))
    assert await rec.next_batch() == [1]  # never waits for company
    rest = asyncio.ensure_future(gather(batcher, 2, 3, 4))
    await until(lambda: batcher.queue_depth() == 3)
    rec.gate.set()
    assert (await asyncio.wait_for(first, WAIT_S)).batch_size == 1
    outcomes = await asyncio.wait_for(rest, WAIT_S)
    assert rec.batches == [[1], [2, 3, 4]]
    assert [o.batch_size for o in outcomes] == [3, 3, 3]
    await batcher.stop()


async def test_outcome_times_queue_wait_and_run() -> None:
    rec = Recorder(gated=True)
    batcher = await started(rec, BatchingConfig(max_batch_size=1, max_queue_delay_s=0.0))
    first = asyncio.ensure_future(batcher.submit(1))
    await rec.next_batch()
    second = asyncio.ensure_future(batcher.submit(2))
    await until(lambda: batcher.queue_depth() == 1)
    queued_by = time.monotonic()
    await asyncio.sleep(0.02)  # let measurable time pass while both wait; bounds use it
    released_at_pc = time.perf_counter()
    released_at = time.monotonic()
    rec.gate.set()
    one, two = await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
    assert one.run_s >= released_at_pc - rec.entered_at[0] >= 0.02
    assert two.queue_s >= released_at - queued_by >= 0.02
    assert one.queue_s < two.queue_s < WAIT_S
    await batcher.stop()


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


# -- instances --------------------------------------------------------------------------------


async def test_two_instances_run_two_batches_at_once() -> None:
    rec = Recorder(gated=True)
    cfg = BatchingConfig(max_batch_size=2, max_queue_delay_s=0.0, instances=2)
    batcher = await started(rec, cfg)
    first = asyncio.ensure_future(gather(batcher, 1, 2))
    assert await rec.next_batch() == [1, 2]
    second = asyncio.ensure_future(gather(batcher, 3, 4))
    assert await rec.next_batch() == [3, 4]  # formed while batch 1 is still blocked
    assert rec.in_flight == 2
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
    assert rec.max_in_flight == 2
    await batcher.stop()


async def test_one_instance_runs_one_batch_at_a_time() -> None:
    rec = Recorder(gated=True)
    batcher = await started(rec, BatchingConfig(max_batch_size=2, max_queue_delay_s=0.0))
    first = asyncio.ensure_future(gather(batcher, 1, 2))
    assert await rec.next_batch() == [1, 2]
    second = asyncio.ensure_future(gather(batcher, 3, 4))
    await until(lambda: batcher.queue_depth() == 2)
    assert rec.entered.empty()
    rec.gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), WAIT_S)
    assert rec.batches == [[1, 2], [3, 4]]
    assert rec.max_in_flight == 1
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
