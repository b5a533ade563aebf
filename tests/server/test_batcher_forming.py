"""Batcher rules for forming batches (config, window, preferred sizes, instances), each gated
with events rather than sleeps; see batcher_helpers.py for `Recorder`."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any, cast

import pytest

from detserve.server.batcher import BatchingConfig

from .batcher_helpers import WAIT_S, Recorder, gather, started, until

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
