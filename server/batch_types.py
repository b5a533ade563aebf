"""What a batcher hands back and keeps per request: its errors (each maps to one gRPC status),
the outcome of a batched request, and the bookkeeping of one waiting request."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueueFullError(Exception):
    """The batcher's queue holds `max_queue_size` requests; maps to RESOURCE_EXHAUSTED."""


class DeadlineExpiredError(Exception):
    """The request's deadline passed before it left the queue; maps to DEADLINE_EXCEEDED."""


class BatcherClosedError(RuntimeError):
    """The batcher is stopping or stopped and takes no new requests; maps to UNAVAILABLE."""


class BatcherFailedError(BatcherClosedError):
    """A worker of the batcher died on an internal error: out of service; UNAVAILABLE."""


@dataclass(frozen=True)
class BatchOutcome(Generic[R]):
    value: R
    queue_s: float  # submit -> batch starts running
    batch_size: int  # items in the engine batch
    run_s: float  # wall time of run_batch for the whole batch


@dataclass(eq=False)
class Pending(Generic[T, R]):
    """One waiting request (one image)."""

    item: T
    future: asyncio.Future[BatchOutcome[R]]
    enqueued_at: float  # time.monotonic()
    deadline: float | None  # time.monotonic() seconds
    timer: asyncio.TimerHandle | None = field(default=None)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


@dataclass(frozen=True)
class RunResult(Generic[R]):
    results: object  # run_batch's return value, checked before use
    run_s: float
