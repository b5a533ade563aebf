"""Triton's ModelStatistics from the server's own request records.

Every finished request (detserve.v1 and the Open Inference Protocol alike: one record per image)
passes here on its way to the metrics and the log line (app.start_grpc wraps the observer), so
the counts agree with detserve_requests_total. Durations are summed in nanoseconds per request,
as Triton sums them: queue (batcher queue), compute_input (decode and letterbox), compute_infer
(the engine run of the request's batch), compute_output (output decoding and NMS of that batch).

Batch statistics count engine batches by their size: the requests answered in batches of b,
over b (each batch of b answers b requests, each reporting that batch's engine time).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc

from detserve.server.detect import RequestRecord


@dataclass
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ms: float, count: int = 1) -> None:
        self.count += count
        self.ns += max(int(ms * 1e6), 0)


@dataclass
class BatchTimes:
    """Requests answered in batches of one size, and the durations they reported."""

    requests: int = 0
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelCounts:
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchTimes] = field(default_factory=dict)
    last_inference_ms: int = 0  # wall clock, milliseconds since the epoch (Triton's unit)

    @property
    def execution_count(self) -> int:
        return sum(round(t.requests / size) for size, t in self.batches.items())


class Statistics:
    """Per served model ("name@variant"), since the server started."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.models: dict[str, ModelCounts] = {key: ModelCounts() for key in keys}

    def observing(self, inner: Callable[[RequestRecord], None]
                  ) -> Callable[[RequestRecord], None]:
        """`inner` (the metrics and log observer), with every record counted here first."""
        def observe(rec: RequestRecord) -> None:
            self.record(rec)
            inner(rec)

        return observe

    def of(self, key: str) -> ModelCounts:
        return self.models.get(key, ModelCounts())

    def record(self, rec: RequestRecord) -> None:
        counts = self.models.get(rec.model)
        if counts is None:  # the model did not resolve: no model to count it for
            return
        if rec.code != grpc.StatusCode.OK:
            counts.fail.add(rec.total_ms)
            return
        counts.success.add(rec.total_ms)
        counts.queue.add(rec.queue_ms)
        counts.compute_input.add(rec.preprocess_ms)
        counts.compute_infer.add(rec.inference_ms)
        counts.compute_output.add(rec.postprocess_ms)
        counts.last_inference_ms = int(time.time() * 1e3)
        size = rec.batch_size
        if size < 1:
            return
        times = counts.batches.setdefault(size, BatchTimes())
        times.requests += 1
        # Per batch: each of its `size` requests reported the batch's time; add a share each.
        before = round((times.requests - 1) / size)
        added = round(times.requests / size) - before
        times.compute_input.add(rec.preprocess_ms, added)
        times.compute_infer.add(rec.inference_ms / size, added)
        times.compute_output.add(rec.postprocess_ms / size, added)
