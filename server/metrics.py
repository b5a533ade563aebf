"""Prometheus metrics for one server.

Histograms, not summaries: histogram buckets add up across replicas, quantiles from summaries do
not. Each `ServerMetrics` owns its own `CollectorRegistry`, so several servers (e.g. in tests)
can live in one process without "duplicated timeseries" errors.

Label values must stay bounded: pass served model names (or one fixed placeholder such as
"unknown" for a request whose model could not be resolved), never raw client strings.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    generate_latest,
    start_http_server,
)

from detserve.server.decode_pool import DecodeOutcome
from detserve.server.metric_registrar import Registrar

# Seconds, spaced for a CPU/GPU detector: sub-millisecond queueing up to multi-second overloads.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075,
    0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
QUEUE_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
COMPUTE_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128)
DETECTION_COUNT_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50, 100, 300)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
MEGAPIXEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 33.2)
# With front-end workers (server/workers) these gauges are set by the engine process alone: its
# latest value is the server's. One process ignores the mode.
_ENGINE_SETS: Final = "mostrecent"
# Longer image side; the tiers of common camera and model resolutions (320 ... 4K UHD).
MAX_SIDE_TIERS = (320, 480, 640, 960, 1280, 1920, 2560, 3840)


def max_side_tier(width: int, height: int) -> str:
    """The resolution label of an image: "<=640" for 640x480, ">3840" above 4K."""
    side = max(width, height)
    for tier in MAX_SIDE_TIERS:
        if side <= tier:
            return f"<={tier}"
    return f">{MAX_SIDE_TIERS[-1]}"


def _check_seconds(name: str, value: float) -> None:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}")


@dataclass
class _HttpEndpoint:
    server: WSGIServer
    thread: threading.Thread


class ServerMetrics:
    """All metrics of one server, in their own registry."""

    content_type = CONTENT_TYPE_LATEST  # for serving `render()` from another HTTP stack

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        add = Registrar(self.registry)
        self.request_latency = add.histogram(
            "detserve_request_latency_seconds",
            "Server-side time from request received to response ready, successful requests.",
            ["model"], LATENCY_BUCKETS_S)
        self.queue_time = add.histogram(
            "detserve_queue_seconds",
            "Time a request waited in the batcher queue before its batch started.",
            ["model"], QUEUE_BUCKETS_S)
        self.compute_time = add.histogram(
            "detserve_compute_seconds",
            "Inference time of the engine batch each request ran in.",
            ["model"], COMPUTE_BUCKETS_S)
        self.batch_size = add.histogram(
            "detserve_batch_size",
            "Engine batch size each request ran in (one observation per request).",
            ["model"], BATCH_SIZE_BUCKETS)
        self.executed_batch_size = add.histogram(
            "detserve_executed_batch_size",
            "Images the engine computed for the batch each request ran in: detserve_batch_size "
            "plus padding to the engine's compiled sizes (one observation per request).",
            ["model"], BATCH_SIZE_BUCKETS)
        self.rejected = add.counter(
            "detserve_rejected",
            "Requests refused on arrival, before any decode, by the admission bound they hit "
            "(queue_full, queue_wait, deadline, pixel_budget) or the caller's rate limit "
            "(rate_limit).",
            ["model", "reason"])
        self.auth_refused = add.counter(
            "detserve_auth_refused",
            "Calls refused by token auth: no_token, bad_token (UNAUTHENTICATED), scope "
            "(PERMISSION_DENIED).",
            ["reason"])
        self.rejection_time = add.histogram(
            "detserve_rejection_seconds",
            "Server time from a call's arrival in the servicer to its refusal by admission.",
            ["model"], QUEUE_BUCKETS_S)
        self.decodes = add.counter(
            "detserve_decodes", "Images decoded and letterboxed.", ["model"])
        self.expired_before_decode = add.counter(
            "detserve_expired_before_decode",
            "Requests whose deadline passed while they waited for a decode thread; not decoded.",
            ["model"])
        self.decoded_after_deadline = add.counter(
            "detserve_decoded_after_deadline",
            "Decodes that finished after the caller's deadline (wasted work).",
            ["model"])
        self.requests_in_server = add.gauge(
            "detserve_requests_in_server",
            "Admitted requests not yet answered (decode, queue and engine run together).",
            ["model"], mode=_ENGINE_SETS)
        self.expected_queue_wait = add.gauge(
            "detserve_expected_queue_wait_seconds",
            "Admission's estimate of the wait a request arriving now would have.",
            ["model"], mode=_ENGINE_SETS)
        self.detections = add.histogram(
            "detserve_detections_per_frame",
            "Detections returned per frame.",
            ["model"], DETECTION_COUNT_BUCKETS)
        self.max_score = add.histogram(
            "detserve_max_score_per_frame",
            "Highest detection score per frame, for frames with at least one detection.",
            ["model"], SCORE_BUCKETS)
        self.input_megapixels = add.histogram(
            "detserve_input_megapixels",
            "Input image size in megapixels (width * height / 1e6).",
            ["model"], MEGAPIXEL_BUCKETS)
        self.input_resolution = add.counter(
            "detserve_input_resolution",
            "Input images by the tier of their longer side.",
            ["model", "max_side"])
        self.requests = add.counter(
            "detserve_requests",
            "Requests (unary calls and stream frames) by model and gRPC status code.",
            ["model", "code"])
        self.queue_depth = add.gauge(
            "detserve_queue_depth", "Requests waiting in the batcher queue.",
            ["model"], mode=_ENGINE_SETS)
        self.dropped_frames = add.counter(
            "detserve_stream_dropped_frames",
            "Stream frames dropped by the 'latest' policy.",
            ["model"])
        self._http: _HttpEndpoint | None = None

    def observe_request(
        self,
        model: str,
        code: str,
        latency_s: float,
        queue_s: float,
        compute_s: float,
        batch_size: int,
        executed_batch_size: int,
        n_detections: int,
        max_score: float | None,
        width: int,
        height: int,
    ) -> None:
        """Record one answered frame. `max_score` is None (or ignored) when nothing was found."""
        for name, value in (("latency_s", latency_s), ("queue_s", queue_s),
                            ("compute_s", compute_s)):  # fmt: skip
            _check_seconds(name, value)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if executed_batch_size < batch_size:
            raise ValueError(f"executed_batch_size {executed_batch_size!r} is below the batch "
                             f"size {batch_size!r}")
        if n_detections < 0:
            raise ValueError(f"n_detections must be >= 0, got {n_detections!r}")
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        self.requests.labels(model, code).inc()
        self.request_latency.labels(model).observe(latency_s)
        self.queue_time.labels(model).observe(queue_s)
        self.compute_time.labels(model).observe(compute_s)
        self.batch_size.labels(model).observe(batch_size)
        self.executed_batch_size.labels(model).observe(executed_batch_size)
        self.detections.labels(model).observe(n_detections)
        if n_detections > 0 and max_score is not None:
            self.max_score.labels(model).observe(max_score)
        self.input_megapixels.labels(model).observe(width * height / 1e6)
        self.input_resolution.labels(model, max_side_tier(width, height)).inc()

    def observe_error(self, model: str, code: str) -> None:
        """Count a request that ended with a non-OK status (code like "INVALID_ARGUMENT")."""
        self.requests.labels(model, code).inc()

    def start_counting(self, models: Iterable[str]) -> None:
        """Each model's decode counters, at 0 before its first request: a server that never
        decoded late reads 0, not absent (with front-end workers a counter without a sample
        is missing from /metrics altogether)."""
        for model in models:
            for counter in (self.decodes, self.expired_before_decode,
                            self.decoded_after_deadline):
                counter.labels(model)

    def observe_decode(self, model: str, outcome: DecodeOutcome) -> None:
        if outcome.decoded:
            self.decodes.labels(model).inc()
        if outcome.after_deadline:
            self.decoded_after_deadline.labels(model).inc()
        if outcome.skipped_expired:
            self.expired_before_decode.labels(model).inc()

    def set_admission(self, model: str, held: int, expected_wait_s: float) -> None:
        self.requests_in_server.labels(model).set(held)
        self.expected_queue_wait.labels(model).set(expected_wait_s)

    def set_queue_depth(self, model: str, n: int) -> None:
        if n < 0:
            raise ValueError(f"queue depth must be >= 0, got {n!r}")
        self.queue_depth.labels(model).set(n)

    def add_dropped_frames(self, model: str, n: int) -> None:
        if n < 0:
            raise ValueError(f"dropped frame count must be >= 0, got {n!r}")
        if n:
            self.dropped_frames.labels(model).inc(n)

    def render(self) -> bytes:
        """The text exposition format, as served on /metrics."""
        return generate_latest(self.registry)

    def start_http(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics over HTTP in a daemon thread; returns the bound port (0 -> ephemeral)."""
        if self._http is not None:
            raise RuntimeError(
                f"metrics endpoint already serving on port {self._http.server.server_port}"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port must be in 0..65535, got {port!r}")
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http = _HttpEndpoint(server, thread)
        return int(server.server_port)

    def stop_http(self) -> None:
        """Close the HTTP endpoint, if one is serving."""
        if self._http is None:
            return
        self._http.server.shutdown()
        self._http.server.server_close()
        self._http.thread.join(timeout=5)
        self._http = None
