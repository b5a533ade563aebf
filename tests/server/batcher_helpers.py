"""Shared by the batcher tests: `Recorder`, a real run_batch gated with events, and helpers.

`Recorder` multiplies ints by 10, records every batch it sees, turns the item -1 into a per-item
ValueError and raises for a batch holding -2. With a gate it blocks in the worker thread until the
test releases it, so the test controls when a batch finishes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

from detserve.server.batcher import Batcher, BatchingConfig, BatchOutcome

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
