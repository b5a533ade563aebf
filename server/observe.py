"""Where finished requests go: Prometheus metrics (metrics.py), one JSON line each (logs.py),
and the dead-camera and distribution-shift alerts (drift.py)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from detserve.server import logs
from detserve.server.catalog import ModelView
from detserve.server.config import ServerConfig
from detserve.server.detect import RequestRecord
from detserve.server.drift import DriftMonitor
from detserve.server.metrics import ServerMetrics
from detserve.server.registry import ModelRegistry, ServedModel

UNKNOWN_MODEL = "unknown"  # metrics label for requests whose model did not resolve


def log_record(rec: RequestRecord) -> logs.RequestRecord:
    ok = rec.code.name == "OK"
    batched = rec.batch_size > 0
    return logs.RequestRecord(
        rpc="DetectStream" if rec.stream else "Detect",
        request_id=rec.request_id,
        model=rec.model,
        status=rec.code.name,
        frame_id=rec.frame_id,
        model_version=rec.model_version or None,
        batch_size=rec.batch_size if batched else None,
        executed_batch_size=rec.executed_batch_size if batched else None,
        rejected=rec.reject_reason or None,
        queue_ms=rec.queue_ms if batched else None,
        preprocess_ms=rec.preprocess_ms if rec.decode is not None else None,
        inference_ms=rec.inference_ms if batched else None,
        postprocess_ms=rec.postprocess_ms if batched else None,
        total_ms=rec.total_ms,
        detections=rec.detections if ok else None,
        max_score=rec.max_score if ok and rec.detections else None,
        input_width=rec.image_width or None,
        input_height=rec.image_height or None,
        message=None if ok else rec.message,
        peer=rec.peer or None,
        nms=rec.nms or None,
    )


class RequestObserver:
    """Metrics and log lines of one server; `metrics_port` is the bound /metrics port, if any."""

    def __init__(self, config: ServerConfig) -> None:
        self.log_requests = config.log_requests
        self.logger = logs.get_logger()
        self.metrics = ServerMetrics()
        self.drift = DriftMonitor(config.alerts, self.metrics.registry, self.logger)
        self.metrics_port: int | None = None
        if config.metrics_port is not None:
            # Where gRPC listens, and nowhere else; "[::]" is gRPC's spelling of an IPv6 host.
            host = config.host.removeprefix("[").removesuffix("]")
            self.metrics_port = self.metrics.start_http(config.metrics_port, addr=host)

    def request(self, rec: RequestRecord, registry: ModelRegistry) -> None:
        served = registry.models.get(rec.model)
        if served is not None:
            self.model_state(served)
        self.finished(rec, served is not None)

    def model_state(self, served: ServedModel) -> None:
        """The gauges of a model's queue and admission, as they stand now."""
        self.metrics.set_queue_depth(served.key, served.batcher.queue_depth())
        self.metrics.set_admission(served.key, served.admission.held,
                                   served.admission.expected_wait_s())

    def finished(self, rec: RequestRecord, served: bool) -> None:
        """Count and log a finished request; `served`: its model resolved. A front-end process
        calls this alone: the engine process, which holds the queues, sets their gauges."""
        self._measure(rec, served)
        if self.log_requests:
            logs.log_request(self.logger, log_record(rec))
        self.drift.observe(rec)

    def watch(self, models: Iterable[ModelView]) -> None:
        """The models served: the drift alerts follow their answers (their references), and
        their decode counters start at 0."""
        served = list(models)
        self.drift.watch(served)
        self.metrics.start_counting(m.key for m in served)

    def _measure(self, rec: RequestRecord, served: bool) -> None:
        label = rec.model if served else UNKNOWN_MODEL
        if rec.reject_reason:
            self.metrics.rejected.labels(label, rec.reject_reason).inc()
            self.metrics.rejection_time.labels(label).observe(rec.total_ms / 1e3)
        if rec.decode is not None:
            self.metrics.observe_decode(label, rec.decode)
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
            executed_batch_size=rec.executed_batch_size,
            n_detections=rec.detections,
            max_score=rec.max_score if rec.detections else None,
            width=rec.image_width,
            height=rec.image_height,
        )

    def stream_drop(self, model: str) -> None:
        self.metrics.add_dropped_frames(model, 1)

    def event(self, name: str, **fields: Any) -> None:
        self.logger.info(name, **fields)

    def close(self) -> None:
        self.metrics.stop_http()


def build_observer(config: ServerConfig) -> RequestObserver:
    return RequestObserver(config)
