"""Where finished requests go: Prometheus metrics and one structlog JSON line each."""

from __future__ import annotations

import sys
from typing import Any

import structlog

from detserve.server.config import ServerConfig
from detserve.server.detect import RequestRecord
from detserve.server.metrics import ServerMetrics
from detserve.server.registry import ModelRegistry

UNKNOWN_MODEL = "unknown"  # metrics label for requests whose model did not resolve


class RequestObserver:
    def __init__(self, config: ServerConfig) -> None:
        self.log_requests = config.log_requests
        self.metrics = ServerMetrics()
        self.metrics_port: int | None = None
        if config.metrics_port is not None:
            self.metrics_port = self.metrics.start_http(config.metrics_port, addr=config.host)
        self._log = structlog.wrap_logger(
            structlog.PrintLogger(sys.stderr),
            processors=[
                structlog.processors.add_log_level,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
                structlog.processors.JSONRenderer(),
            ],
        )

    def request(self, rec: RequestRecord, registry: ModelRegistry) -> None:
        self._measure(rec, registry)
        if self.log_requests:
            self._log.info(
                "request",
                request_id=rec.request_id,
                frame_id=rec.frame_id,
                model=rec.model,
                code=rec.code.name,
                message=rec.message,
                stream=rec.stream,
                batch_size=rec.batch_size,
                queue_ms=round(rec.queue_ms, 3),
                preprocess_ms=round(rec.preprocess_ms, 3),
                inference_ms=round(rec.inference_ms, 3),
                postprocess_ms=round(rec.postprocess_ms, 3),
                total_ms=round(rec.total_ms, 3),
                detections=rec.detections,
                max_score=round(rec.max_score, 4),
                image_width=rec.image_width,
                image_height=rec.image_height,
            )

    def _measure(self, rec: RequestRecord, registry: ModelRegistry) -> None:
        served = registry.models.get(rec.model)
        label = rec.model if served is not None else UNKNOWN_MODEL
        if served is not None:
            self.metrics.set_queue_depth(label, served.batcher.queue_depth())
        if rec.code.name != "OK":
            self.metrics.observe_error(label, rec.code.name)
            return
        self.metrics.observe_request(
            label,
            "OK",
            latency_s=rec.total_ms / 1e3,
            queue_s=rec.queue_ms / 1e3,
            compute_s=rec.inference_ms / 1e3,
            batch_size=rec.batch_size,
            n_detections=rec.detections,
            max_score=rec.max_score if rec.detections else None,
            width=rec.image_width,
            height=rec.image_height,
        )

    def stream_drop(self, model: str) -> None:
        self.metrics.add_dropped_frames(model, 1)

    def event(self, name: str, **fields: Any) -> None:
        self._log.info(name, **fields)

    def close(self) -> None:
        self.metrics.stop_http()


def build_observer(config: ServerConfig) -> RequestObserver:
    return RequestObserver(config)
