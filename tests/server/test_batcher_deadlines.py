"""Deadline-aware batches: with the expected time per batch size known, a batch is cut to what
ends before its members' deadlines, and a request too late even alone never reaches the engine.
Gated with events; the batch times are given, not measured, so the cuts are exact."""

from __future__ import annotations

import asyncio
import time

import pytest

from detserve.server.batcher import Batcher, BatchingConfig, DeadlineExpiredError

from .batcher_helpers import WAIT_S, Recorder, until

# As if measured: one image 1 s, two 2 s, three or more 10 s.
TIMES_S = {1: 1.0, 2: 2.0, 3: 10.0, 4: 10.0}


async def _batcher(rec: Recorder) -> Batcher[int, int]:
    cfg = BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0)
    batcher: Batcher[int, int] = Batcher(rec, cfg, name="t", batch_time_s=TIMES_S.__getitem__)
    await batcher.start()
    return batcher


async def test_a_batch_is_cut_to_what_ends_before_its_deadlines() -> None:
    rec = Recorder(gated=True)
    batcher = await _batcher(rec)
    try:
        first = asyncio.ensure_future(batcher.submit(0))  # holds the engine
        assert await rec.next_batch() == [0]
        soon = time.monotonic() + 5.0  # room for a batch of two (2 s), not of three (10 s)
        waiting = [asyncio.ensure_future(batcher.submit(i, soon)) for i in (1, 2, 3)]
        await until(lambda: batcher.queue_depth() == 3)
        rec.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, *waiting), WAIT_S)
    finally:
        await batcher.stop()
    assert [r.value for r in results] == [0, 10, 20, 30]
    assert rec.batches == [[0], [1, 2], [3]]  # not [[0], [1, 2, 3]]: that would end too late


async def test_a_request_too_late_even_alone_fails_before_the_engine() -> None:
    rec = Recorder(gated=True)
    batcher = await _batcher(rec)
    try:
        first = asyncio.ensure_future(batcher.submit(0))
        assert await rec.next_batch() == [0]
        doomed = asyncio.ensure_future(batcher.submit(1, time.monotonic() + 0.5))  # < 1 s
        kept = asyncio.ensure_future(batcher.submit(2))
        await until(lambda: batcher.queue_depth() == 2)
        rec.gate.set()
        with pytest.raises(DeadlineExpiredError, match=r"a batch of one takes 1000 ms; not run"):
            await asyncio.wait_for(doomed, WAIT_S)
        assert [(await first).value, (await kept).value] == [0, 20]
    finally:
        await batcher.stop()
    assert rec.seen() == [0, 2]  # the doomed request never reached run_batch


async def test_without_deadlines_batches_stay_full() -> None:
    rec = Recorder(gated=True)
    batcher = await _batcher(rec)
    try:
        first = asyncio.ensure_future(batcher.submit(0))
        assert await rec.next_batch() == [0]
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (1, 2, 3, 4)]
        await until(lambda: batcher.queue_depth() == 4)
        rec.gate.set()
        await asyncio.wait_for(asyncio.gather(first, *rest), WAIT_S)
    finally:
        await batcher.stop()
    assert rec.batches == [[0], [1, 2, 3, 4]]



async def test_with_a_backlog_a_tight_request_is_passed_over_for_a_full_batch() -> None:
    rec = Recorder(gated=True)
    times_s = {1: 1.0, 2: 2.0, 3: 2.5, 4: 3.0}  # a batch of four answers the most per second
    cfg = BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0)
    batcher: Batcher[int, int] = Batcher(rec, cfg, name="t", batch_time_s=times_s.__getitem__)
    await batcher.start()
    try:
        first = asyncio.ensure_future(batcher.submit(0))  # holds the engine
        assert await rec.next_batch() == [0]
        tight = asyncio.ensure_future(batcher.submit(1, time.monotonic() + 2.8))  # < 3 s
        rest = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4, 5, 6)]
        await until(lambda: batcher.queue_depth() == 6)
        rec.gate.set()
        results = await asyncio.wait_for(asyncio.gather(first, tight, *rest), WAIT_S)
    finally:
        await batcher.stop()
    assert [r.value for r in results] == [0, 10, 20, 30, 40, 50, 60]
    # Six waiting, more than a batch takes: [1, 2, 3] would answer 1.2 per second, the four
    # behind the tight one 1.33; it runs next, still in time (the recorder runs at once).
    assert rec.batches == [[0], [2, 3, 4, 5], [1, 6]]
