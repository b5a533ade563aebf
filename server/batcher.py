"""Dynamic batching: collect single-image requests into engine batches.

Rules (DESIGN.md "Batching semantics"):
- The window opens when the first request of a batch is enqueued. A batch forms when
  `max_batch_size` items are waiting, at once when a preferred batch size is reached, or when
  `max_queue_delay_s` has passed since the first request. A delay of 0 means "take what is queued
  now, never wait". One item is one image, so batches are counted in images.
- With `coming` (the server passes when the next admitted request still decoding should reach
  the queue), the window waits only for company due before it closes: with nobody coming, or
  company due later (a decode longer than the delay), waiting would only add latency, and a
  lone caller would pay the whole delay on every request (batching losing to no batching at
  low load). Requests that arrive while the engine is busy still batch up.
- The queue is bounded: `submit` raises `QueueFullError` at once instead of growing without limit.
- Deadlines are checked when a request leaves the queue (and by a timer while it waits), so an
  expired request never reaches `run_batch`.
- A cancelled request is dropped before its batch runs.
- With `batch_time_s` (expected seconds of a batch of n, as measured), a request that could not
  finish even alone fails now rather than spend engine time on an answer nobody will read, and
  the batch is chosen by `batch_choice.choose_members`: normally cut to what ends before its
  members' deadlines; under pressure (more waiting than a batch takes, or `shedding`: the
  server is refusing requests), the members that answer the most in time per engine second.
- `instances` worker threads: batch N+1 forms while batch N runs.
- Each batch sits in one exception boundary: no future is ever left without an answer.
- A worker that dies anyway (a bug outside that boundary) fails what is queued, takes the
  batcher out of service (`fault`; submits then raise BatcherFailedError) and tells `on_fault`,
  so the server can report NOT_SERVING instead of answering UNAVAILABLE behind a SERVING health.
- `stop(drain=True, timeout_s=...)` is bounded: past it the rest is failed and an engine run
  still in progress is abandoned to its thread, so a hung engine cannot hang a shutdown.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from detserve.server.batch_choice import choose_members
from detserve.server.batch_types import (
    BatcherClosedError,
    BatcherFailedError,
    BatchOutcome,
    DeadlineExpiredError,
    Pending,
    QueueFullError,
    RunResult,
)
from detserve.server.batching_config import BatchingConfig
from detserve.server.daemon_pool import DaemonThreadPool
from detserve.server.threadnames import BATCH, name_os_thread

_CHOICE_WINDOW = 4  # batches' worth of the queue head that the deadline-aware choice looks at

__all__ = ["BatchOutcome", "Batcher", "BatcherClosedError", "BatcherFailedError",
           "BatchingConfig", "DeadlineExpiredError", "QueueFullError"]

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    """Forms batches from `submit`ted items and runs them with `run_batch` in worker threads.

    `run_batch` returns one entry per item: a value, or an Exception that fails only that item.
    If it raises, every item of the batch fails with that exception and the batcher lives on.
    """

    def __init__(
        self,
        run_batch: Callable[[list[T]], list[R | Exception]],
        config: BatchingConfig,
        name: str = "",
        queue_limit: int | None = None,
        on_batch: Callable[[int, float], None] | None = None,
        coming: Callable[[], float | None] | None = None,
        batch_time_s: Callable[[int], float] | None = None,
        shedding: Callable[[], bool] | None = None,
        on_fault: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.config = config
        self.name = name
        # Admission bounds what reaches the queue; stream frames may add to max_queue_size.
        self.queue_limit = config.max_queue_size if queue_limit is None else queue_limit
        # Told (batch size, seconds from dispatch to answered) after each batch, on the loop:
        # the time a queued request really waits per batch ahead of it.
        self._on_batch = on_batch
        self._coming = coming
        self._batch_time_s = batch_time_s
        self._shedding = shedding
        self.on_fault = on_fault
        # The error a worker died of; set once, the batcher is then out of service.
        self.fault: BaseException | None = None
        self._queue: collections.deque[Pending[T, R]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._form_lock = asyncio.Lock()
        self._workers: list[asyncio.Task[None]] = []
        self._executor: DaemonThreadPool | None = None
        self._started = False
        self._closing = False
        self._draining = False
        # Batches in an engine now: (time.monotonic() start, size) each.
        self.running: list[tuple[float, int]] = []

    async def start(self) -> None:
        if self._started:
            raise RuntimeError(f"batcher {self.name!r} is already started")
        self._started = True
        self._executor = DaemonThreadPool(self.config.instances, f"batcher-{self.name}",
                                          initializer=name_os_thread, initargs=(BATCH,))
        self._workers = [
            asyncio.create_task(self._worker(), name=f"batcher-{self.name}-{i}")
            for i in range(self.config.instances)
        ]

    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running_items(self) -> int:
        return sum(size for _, size in self.running)

    async def submit(self, item: T, deadline: float | None = None) -> BatchOutcome[R]:
        """Queue one item and wait for its result.

        `deadline` is in time.monotonic() seconds. Raises QueueFullError at once when the queue is
        full, DeadlineExpiredError when the deadline passes before the item leaves the queue,
        BatcherClosedError once `stop` has begun.
        """
        if not self._started:
            raise RuntimeError(f"batcher {self.name!r} is not started; await start() first")
        if self.fault is not None:
            raise BatcherFailedError(
                f"model {self.name!r} is out of service: its batcher stopped on an internal "
                f"error (health reports NOT_SERVING)")
        if self._closing:
            raise BatcherClosedError(f"batcher {self.name!r} is shutting down")
        if len(self._queue) >= self.queue_limit:
            raise QueueFullError(
                f"batcher {self.name!r} queue is full ({self.queue_limit} requests waiting)"
            )
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            raise DeadlineExpiredError(
                f"deadline passed {(now - deadline) * 1e3:.1f} ms before the request was queued"
            )
        loop = asyncio.get_running_loop()
        pending: Pending[T, R] = Pending(item, loop.create_future(), now, deadline)
        if deadline is not None:
            pending.timer = loop.call_later(deadline - now, self._expire, pending)
        self._queue.append(pending)
        self._wakeup.set()
        try:
            return await pending.future
        except asyncio.CancelledError:
            self._drop(pending)
            raise

    async def stop(self, drain: bool = True, timeout_s: float | None = None) -> bool:
        """Refuse new submits; with `drain`, run the queued items first, else fail them.
        `timeout_s`: past it, what is still queued fails, the workers are cancelled (their
        batches fail with BatcherClosedError) and a batch still in an engine is left to its
        thread. True when everything finished in time."""
        self._closing = True
        if drain:
            self._draining = True
        else:
            self._fail_queued()
        self._wakeup.set()
        finished = True
        if self._workers:
            _, running = await asyncio.wait(self._workers, timeout=timeout_s)
            if running:
                finished = False
                self._fail_queued()
                for task in running:
                    task.cancel()
                await asyncio.wait(running)
        if self._executor is not None:
            # An engine run that outlived the bound is abandoned, not waited for.
            self._executor.shutdown(wait=finished, cancel_futures=not finished)
            self._executor = None
        return finished

    def _fail_queued(self) -> None:
        while self._queue:
            self._settle_error(
                self._queue.popleft(),
                BatcherClosedError(f"batcher {self.name!r} stopped before the request ran"),
            )

    # -- queue bookkeeping -------------------------------------------------------------------

    def _drop(self, pending: Pending[T, R]) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        try:
            self._queue.remove(pending)
        except ValueError:
            return  # already taken into a batch or failed
        self._wakeup.set()  # the window may have changed

    def _expire(self, pending: Pending[T, R]) -> None:
        if pending.future.done():
            return
        try:
            self._queue.remove(pending)
        except ValueError:
            return  # already running: its result will come
        self._settle_error(pending, self._deadline_error(pending, time.monotonic()))
        self._wakeup.set()

    @staticmethod
    def _deadline_error(pending: Pending[T, R], now: float) -> DeadlineExpiredError:
        waited_ms = (now - pending.enqueued_at) * 1e3
        return DeadlineExpiredError(
            f"deadline expired after {waited_ms:.1f} ms in the queue, before the request ran"
        )

    @staticmethod
    def _settle_error(pending: Pending[T, R], exc: BaseException) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        if not pending.future.done():
            pending.future.set_exception(exc)

    def _prune(self, now: float) -> None:
        """Drop cancelled requests and fail expired ones, keeping order."""
        if all(not p.future.done() and not p.expired(now) for p in self._queue):
            return
        kept: collections.deque[Pending[T, R]] = collections.deque()
        for pending in self._queue:
            if pending.future.done():
                continue
            if pending.expired(now):
                self._settle_error(pending, self._deadline_error(pending, now))
                continue
            kept.append(pending)
        self._queue = kept

    # -- batch formation ---------------------------------------------------------------------

    def _ready_size(self, now: float) -> int:
        """How many items to take now; 0 means keep waiting."""
        count = len(self._queue)
        if count == 0:
            return 0
        cfg = self.config
        if count >= cfg.max_batch_size:
            return cfg.max_batch_size
        window_end = self._queue[0].enqueued_at + cfg.max_queue_delay_s
        if self._draining or now >= window_end:
            return count
        if self._coming is not None:
            arrival = self._coming()
            if arrival is None or arrival > window_end:
                return count
        reached = [size for size in cfg.preferred_batch_sizes if size <= count]
        return reached[-1] if reached else 0

    async def _form_batch(self) -> list[Pending[T, R]] | None:
        """Wait for the next batch; None once the batcher is closing and the queue is empty."""
        while True:
            self._wakeup.clear()
            now = time.monotonic()
            self._prune(now)
            if not self._queue and self._closing:
                return None
            size = self._ready_size(now)
            if size:
                return self._take(size)
            timeout: float | None = None
            if self._queue:
                window_end = self._queue[0].enqueued_at + self.config.max_queue_delay_s
                timeout = max(window_end - now, 0.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _take(self, size: int) -> list[Pending[T, R]]:
        now = time.monotonic()
        self._drop_unrunnable(now)
        if self._batch_time_s is None:
            chosen = list(range(min(size, len(self._queue))))
        else:
            # Looking further than a few batches ahead would not change the choice.
            window = list(itertools.islice(self._queue, _CHOICE_WINDOW * size))
            left = [None if p.deadline is None else p.deadline - now for p in window]
            pressed = len(self._queue) > size or (
                self._shedding is not None and self._shedding())
            chosen = choose_members(left, size, self._batch_time_s, pressed)
        picked = set(chosen)
        batch = [p for i, p in enumerate(self._queue) if i in picked]
        self._queue = collections.deque(
            p for i, p in enumerate(self._queue) if i not in picked)
        for pending in batch:
            if pending.timer is not None:
                pending.timer.cancel()
        return batch

    def _drop_unrunnable(self, now: float) -> None:
        """Drop cancelled requests and fail those that cannot finish even alone."""
        kept: collections.deque[Pending[T, R]] = collections.deque()
        for pending in self._queue:
            if pending.future.done():  # cancelled by its caller
                if pending.timer is not None:
                    pending.timer.cancel()
                continue
            error = self._hopeless(pending, now)
            if error is not None:
                self._settle_error(pending, error)
                continue
            kept.append(pending)
        self._queue = kept

    def _hopeless(self, pending: Pending[T, R], now: float) -> DeadlineExpiredError | None:
        """Why `pending` cannot be answered in time (expired, or too little time left for a
        batch of one), or None."""
        if pending.expired(now):
            return self._deadline_error(pending, now)
        if pending.deadline is None or self._batch_time_s is None:
            return None
        alone_s = self._batch_time_s(1)
        left_s = pending.deadline - now
        if alone_s <= left_s:
            return None
        return DeadlineExpiredError(
            f"deadline cannot be met: {left_s * 1e3:.0f} ms left after "
            f"{(now - pending.enqueued_at) * 1e3:.0f} ms in the queue, and a batch of one takes "
            f"{alone_s * 1e3:.0f} ms; not run"
        )

    # -- running ---------------------------------------------------------------------------

    async def _worker(self) -> None:
        try:
            while True:
                async with self._form_lock:
                    batch = await self._form_batch()
                if batch is None:
                    return
                if batch:
                    await self._run(batch)
        except Exception as exc:
            # A bug here must not leave callers waiting forever on a queue nobody serves, nor
            # the model look healthy while it answers nothing.
            self._closing = True
            first = self.fault is None
            self.fault = self.fault or exc
            while self._queue:
                self._settle_error(self._queue.popleft(), exc)
            if first and self.on_fault is not None:
                self.on_fault(exc)

    def _timed_run(self, items: list[T]) -> RunResult[R]:
        start = time.perf_counter()
        results = self._run_batch(items)
        return RunResult(results, time.perf_counter() - start)

    async def _run(self, batch: list[Pending[T, R]]) -> None:
        """Run one batch; every future in it is answered, whatever happens."""
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        entry = (started, len(batch))
        self.running.append(entry)
        try:
            run = await loop.run_in_executor(
                self._executor, self._timed_run, [p.item for p in batch]
            )
            self._deliver(batch, run, started)
            if self._on_batch is not None:
                self._on_batch(len(batch), time.monotonic() - started)
        except Exception as exc:  # one boundary for the whole batch
            for pending in batch:
                self._settle_error(pending, exc)
        finally:
            self.running.remove(entry)
            for pending in batch:  # e.g. the worker task was cancelled mid-run
                self._settle_error(
                    pending,
                    BatcherClosedError(f"batcher {self.name!r} ended before the batch answered"),
                )

    def _deliver(self, batch: list[Pending[T, R]], run: RunResult[R], started: float) -> None:
        results = run.results
        if not isinstance(results, list):
            raise RuntimeError(f"run_batch must return a list, got {type(results).__name__}")
        if len(results) != len(batch):
            raise RuntimeError(
                f"run_batch returned {len(results)} results for a batch of {len(batch)} items"
            )
        for pending, result in zip(batch, results, strict=True):
            if pending.future.done():
                continue  # cancelled while running
            if isinstance(result, Exception):
                pending.future.set_exception(result)
            else:
                pending.future.set_result(
                    BatchOutcome(
                        value=result,
                        queue_s=started - pending.enqueued_at,
                        batch_size=len(batch),
                        run_s=run.run_s,
                    )
                )
