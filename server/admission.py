"""Admission: every bound a request must pass is checked when it arrives, before decode.

Triton decides queue policy on arrival; so does detserve (issue 12). Without this, every call
was decoded on an unbounded thread-pool queue before the batcher's bound was seen, and under
3x overload rejections took seconds, memory grew by gigabytes and goodput fell to a third.

Per model (`ModelAdmission`):
- `max_queue_size` bounds the requests waiting in the server: admitted and not yet in an engine,
  so the decode stage counts as well as the batcher queue.
- `max_queue_wait_s` bounds the expected wait: what is left of the soonest-ending running batch
  if every engine is busy, then one measured batch time per full round of waiting requests, or
  the decode backlog if that ends later (decode threads work while the engines run). Batches
  are taken at their slow tail here (mean + TAIL_DEVIATIONS deviations), so the bound holds
  for the late requests too; deadlines use the mean (a refusal there loses a request). A request
  whose expected wait plus one batch run exceeds its remaining deadline is refused with
  DEADLINE_EXCEEDED at once, since it could only be answered late.

Server-wide (`PixelBudget`): decoded pixels in flight, reserved from the header before any pixel
is decoded, so a few small files that declare 40 Mpx each cannot multiply memory.

Stream frames (`held=True`) are already bounded by the streams' shared frame slots
(stream_slots.py); they wait for the pixel budget and skip the count and wait bounds, so a
camera sees backpressure rather than per-frame RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import grpc

from detserve.server.batching_config import BatchingConfig
from detserve.server.errors import RequestError

EWMA_WEIGHT = 0.2  # weight of the newest sample: follows a change within ~10 batches
# The queue-wait bound is meant to hold for the slow tail, not the mean: a wait spans several
# batches, and on a shared machine their times vary together. Its estimate takes each batch at
# its mean plus this many mean deviations (TCP's retransmit timer does the same with 4).
TAIL_DEVIATIONS = 2.0
REASONS = ("queue_full", "queue_wait", "deadline", "pixel_budget")


PUSHBACK_KEY = "grpc-retry-pushback-ms"  # gRPC's own retry hint, honoured by its retry policy


class Rejected(RequestError):
    """Refused on arrival; `reason` (one of REASONS) labels the rejection metric, and
    `retry_after_s` (sent as grpc-retry-pushback-ms) says when a retry could be admitted: a
    caller that retries at once only burns the CPU the queue needs (a retry storm)."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str,
                 retry_after_s: float | None = None) -> None:
        super().__init__(code, message)
        self.reason = reason
        self.retry_after_s = retry_after_s


def _ewma(old: float | None, sample: float) -> float:
    return sample if old is None else old + EWMA_WEIGHT * (sample - old)


@dataclass
class ServiceTimes:
    """Measured time per batch by formed size (dispatch to answered, as the event loop sees
    it), and decode time per image. EWMAs, so they follow a machine that gets busier."""

    max_batch_size: int
    batch_s: dict[int, float] = field(default_factory=dict)
    batch_dev_s: dict[int, float] = field(default_factory=dict)  # EWMA of |sample - mean|
    decode_s: float | None = None

    def observe_batch(self, size: int, seconds: float) -> None:
        if size >= 1 and math.isfinite(seconds) and seconds >= 0:
            mean = self.batch_s.get(size)
            if mean is not None:
                self.batch_dev_s[size] = _ewma(self.batch_dev_s.get(size), abs(seconds - mean))
            self.batch_s[size] = _ewma(mean, seconds)

    def observe_decode(self, seconds: float) -> None:
        if math.isfinite(seconds) and seconds >= 0:
            self.decode_s = _ewma(self.decode_s, seconds)

    def batch_time_s(self, size: int, tail: bool = False) -> float:
        """Expected time of a batch of `size`: measured, else scaled linearly from the nearest
        size measured; 0 before the first batch (nothing to go on yet: admit). `tail`: plus
        TAIL_DEVIATIONS mean deviations, a slow batch rather than a typical one."""
        if not self.batch_s:
            return 0.0
        nearest = size if size in self.batch_s else min(
            self.batch_s, key=lambda s: (abs(s - size), -s))
        seconds = self.batch_s[nearest]
        if tail:
            seconds += TAIL_DEVIATIONS * self.batch_dev_s.get(nearest, 0.0)
        return seconds * size / nearest


class EngineLoad(Protocol):
    """What the batcher reports of its engines (server/batcher.py)."""

    @property
    def running(self) -> list[tuple[float, int]]:
        """(time.monotonic() start, size) of each batch in an engine now."""
        ...

    @property
    def running_items(self) -> int: ...


@dataclass
class InServer:
    """Admitted requests of one model, shared with its batcher (which waits for `decoding`)."""

    held: int = 0  # admitted, not yet answered
    decoding: int = 0  # of those, waiting for or in decode
    refused_at: float = -math.inf  # time.monotonic() of the last refusal by a bound or deadline
    # Admitted and not yet queued: ticket -> time.monotonic() admitted, oldest first.
    on_way: dict[int, float] = field(default_factory=dict)

    def refused_within(self, seconds: float) -> bool:
        return time.monotonic() - self.refused_at < seconds

    def expected_arrival(self, decode_s: float) -> float | None:
        """time.monotonic() at which the next request on its way should reach the batch queue
        (its admission + a mean decode); None when none is on its way. The batcher's window
        waits for company only when it should come before the window closes."""
        for admitted_at in self.on_way.values():  # the oldest, admitted and decoded first
            return admitted_at + decode_s
        return None


class ModelAdmission:
    """The per-model bounds; one per served model."""

    def __init__(self, key: str, batching: BatchingConfig, decode_threads: int,
                 load: EngineLoad, times: ServiceTimes, counts: InServer) -> None:
        self.key = key
        self.max_queue_size = batching.max_queue_size
        self.max_queue_wait_s = batching.max_queue_wait_s
        self.instances = batching.instances
        self.max_batch_size = batching.max_batch_size
        self.slots_per_round = batching.max_batch_size * batching.instances
        self.decode_threads = decode_threads
        self.load = load
        self.times = times
        self.counts = counts

    @property
    def held(self) -> int:
        return self.counts.held

    @property
    def decoding(self) -> int:
        return self.counts.decoding

    @property
    def engines_busy(self) -> bool:
        return len(self.load.running) >= self.instances

    @property
    def waiting(self) -> int:
        """Admitted requests not yet in an engine (decode and batcher queue)."""
        return self.held - self.load.running_items

    def expected_wait_s(self, tail: bool = False) -> float:
        """Expected time before a request arriving now starts its engine run: the later of
        its engine turn (what is left of the batch that ends first when every engine is busy,
        then one full batch per round of requests waiting ahead) and its own decode (after
        the decode backlog). Decode threads work while the engines run, so the two overlap;
        adding them would refuse requests that would be answered in time. `tail`: with slow
        batches (ServiceTimes.batch_time_s)."""
        engine_free_s = 0.0
        if self.engines_busy:
            started, size = min(self.load.running)
            elapsed = time.monotonic() - started
            engine_free_s = max(self.times.batch_time_s(size, tail) - elapsed, 0.0)
        rounds = self.waiting // self.slots_per_round
        full_s = self.times.batch_time_s(self.max_batch_size, tail)
        engine_turn_s = engine_free_s + rounds * full_s
        decoded_s = (self.times.decode_s or 0.0) * (self.decoding // self.decode_threads + 1)
        return max(engine_turn_s, decoded_s)

    def expected_answer_s(self) -> float:
        """Expected time to answer a request arriving now: its wait, then its own batch. With
        every engine busy, requests keep coming while it waits, so its batch is taken to be a
        full one; otherwise the requests waiting ahead of it and itself. A request admitted
        with room for only a small batch would make the batcher cut batches short (see
        Batcher._fits_deadlines) and the engine would lose its batching."""
        if self.engines_busy:
            own = self.max_batch_size
        else:
            own = min(self.waiting % self.slots_per_round + 1, self.max_batch_size)
        return self.expected_wait_s() + self.times.batch_time_s(own)

    def admit(self, deadline: float | None, held: bool = False) -> None:
        """Count the request in, or raise Rejected naming the bound it hit."""
        try:
            if not held:
                self._check_bounds()
            if deadline is not None:
                self._check_deadline(deadline)
        except Rejected:
            self.counts.refused_at = time.monotonic()
            raise
        self.counts.held += 1
        self.counts.decoding += 1

    def _check_bounds(self) -> None:
        full_s = self.times.batch_time_s(self.max_batch_size)
        if self.waiting >= self.max_queue_size:
            raise Rejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "queue_full",
                f"server busy: model {self.key} has {self.waiting} requests waiting, its "
                f"batching.max_queue_size; retry with backoff",
                retry_after_s=full_s,  # a round of the queue drains by then
            )
        limit = self.max_queue_wait_s
        if limit is not None:
            wait_s = self.expected_wait_s(tail=True)
            if wait_s > limit:
                raise Rejected(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, "queue_wait",
                    f"server busy: model {self.key} expects a {wait_s * 1e3:.0f} ms wait "
                    f"({self.waiting} requests waiting), above batching.max_queue_wait_ms "
                    f"{limit * 1e3:g}; retry with backoff",
                    retry_after_s=max(wait_s - limit, full_s),  # the excess has drained
                )

    def _check_deadline(self, deadline: float) -> None:
        remaining_s = deadline - time.monotonic()
        needed_s = self.expected_answer_s()
        if needed_s > remaining_s:
            raise Rejected(
                grpc.StatusCode.DEADLINE_EXCEEDED, "deadline",
                f"deadline cannot be met: {max(remaining_s, 0) * 1e3:.0f} ms left, model "
                f"{self.key} expects {needed_s * 1e3:.0f} ms to answer ({self.waiting} requests "
                f"waiting); refused before any work",
            )

    def decoded(self) -> None:
        """The request left the decode stage (decoded, skipped or failed)."""
        self.counts.decoding -= 1

    def release(self) -> None:
        """The request is answered (or failed) and no longer held."""
        self.counts.held -= 1


class PixelBudget:
    """Decoded pixels in flight across the server, reserved from image headers."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"pixel budget must be >= 1, got {capacity}")
        self.capacity = capacity
        self.in_use = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()

    def try_reserve(self, pixels: int, retry_after_s: float | None = None) -> None:
        """Reserve at once or raise Rejected (unary calls: refuse rather than queue)."""
        if self._waiters or self.in_use + pixels > self.capacity:
            raise Rejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "pixel_budget",
                f"server busy: {self.in_use} decoded pixels in flight; this image's {pixels} "
                f"would pass max_pixels_in_flight {self.capacity}; retry with backoff",
                retry_after_s=retry_after_s,
            )
        self.in_use += pixels

    async def reserve(self, pixels: int) -> None:
        """Wait in arrival order until `pixels` fit (stream frames: backpressure)."""
        if not self._waiters and self.in_use + pixels <= self.capacity:
            self.in_use += pixels
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((pixels, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(pixels)  # granted just as the caller went away
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove((pixels, waiter))
                self._grant()  # a smaller request behind it may fit now
            raise

    def release(self, pixels: int) -> None:
        self.in_use -= pixels
        self._grant()

    def _grant(self) -> None:
        while self._waiters:
            pixels, waiter = self._waiters[0]
            if self.in_use + pixels > self.capacity:
                return
            self._waiters.popleft()
            if not waiter.done():
                self.in_use += pixels
                waiter.set_result(None)
