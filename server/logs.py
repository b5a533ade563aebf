"""Structured logging: one JSON line per request (unary call or stream frame).

`configure_logging` sets structlog up once per process; `log_request` writes the request line
from a `RequestRecord`, so every line has the same keys in the same order whatever the outcome.

Lines are rendered where they are logged and written by a thread (line_writer.py): a stderr that
is slow or blocked (a full pipe nobody reads) holds that thread, never the event loop. Every
string field is clipped to MAX_FIELD_CHARS, so a 1 MB request id cannot make a 2 MB line.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from detserve.server.line_writer import LineSink, sink_for
from detserve.server.text import clip

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Server faults are errors; a client's bad input or a full queue is worth a warning, not a page.
_ERROR_CODES = frozenset({"INTERNAL", "UNKNOWN", "DATA_LOSS", "UNIMPLEMENTED"})
MAX_FIELD_CHARS = 2048  # of any one string value in a log line
_sink: LineSink | None = None  # where this process's lines go now


def bound_fields(logger: Any, method: str, event: MutableMapping[str, Any]
                 ) -> MutableMapping[str, Any]:
    """structlog processor: string values clipped to MAX_FIELD_CHARS."""
    for key, value in event.items():
        if isinstance(value, str) and len(value) > MAX_FIELD_CHARS:
            event[key] = clip(value, MAX_FIELD_CHARS)
    return event


class _LineLogger:
    """structlog's final logger: hands each rendered line to the sink, whatever the level."""

    def __init__(self, sink: LineSink) -> None:
        self._sink = sink

    def msg(self, message: str) -> None:
        self._sink.write_line(message)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def flush_logs(timeout_s: float = 2.0) -> bool:
    """Wait until the lines logged so far are written (False: the stream stayed blocked)."""
    return _sink.flush(timeout_s) if _sink is not None else True


def configure_logging(level: str | int = "INFO", stream: TextIO | None = None) -> None:
    """Route structlog to `stream` (stderr by default) as JSON lines at `level` and above;
    through a writer thread unless `stream` is in memory (it cannot block)."""
    global _sink
    if isinstance(level, str):
        name = level.upper()
        if name not in LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
        numeric = logging.getLevelNamesMapping()[name]
    elif isinstance(level, int) and not isinstance(level, bool):
        numeric = level
    else:
        raise ValueError(f"log level must be a level name or number, got {level!r}")
    if _sink is not None:
        _sink.close()
    sink = _sink = sink_for(stream if stream is not None else sys.stderr)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            bound_fields,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=lambda *_: _LineLogger(sink),
        # Not cached: tests and embedding servers reconfigure the stream at runtime.
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "detserve.server") -> Any:
    """A structlog logger that stamps `logger=name` on each line."""
    return structlog.get_logger().bind(logger=name)


def _ms(seconds_or_ms: float | None) -> float | None:
    return None if seconds_or_ms is None else round(float(seconds_or_ms), 3)


@dataclass(frozen=True)
class RequestRecord:
    """Everything one request line holds; times are milliseconds."""

    rpc: str  # "Detect" or "DetectStream"
    request_id: str
    model: str  # resolved "name@variant", or what the client asked for if it did not resolve
    status: str  # gRPC status code name, e.g. "OK", "INVALID_ARGUMENT"
    frame_id: int | None = None
    model_version: str | None = None
    batch_size: int | None = None  # None when the request failed before it was batched
    executed_batch_size: int | None = None  # batch_size plus the engine's padding
    rejected: str | None = None  # the admission bound that refused it (admission.REASONS)
    queue_ms: float | None = None
    preprocess_ms: float | None = None
    inference_ms: float | None = None
    postprocess_ms: float | None = None
    total_ms: float | None = None
    detections: int | None = None
    max_score: float | None = None
    input_width: int | None = None
    input_height: int | None = None
    message: str | None = None  # the error detail sent to the client, when not OK
    peer: str | None = None
    nms: str | None = None  # "host": NMS time is in postprocess_ms; else in inference_ms

    def fields(self) -> dict[str, Any]:
        """JSON-ready values: plain floats/ints even if numpy scalars came in."""
        return {
            "rpc": self.rpc,
            "request_id": self.request_id,
            "frame_id": None if self.frame_id is None else int(self.frame_id),
            "model": self.model,
            "model_version": self.model_version,
            "status": self.status,
            "batch_size": None if self.batch_size is None else int(self.batch_size),
            "executed_batch_size": (None if self.executed_batch_size is None
                                    else int(self.executed_batch_size)),
            "rejected": self.rejected,
            "queue_ms": _ms(self.queue_ms),
            "preprocess_ms": _ms(self.preprocess_ms),
            "inference_ms": _ms(self.inference_ms),
            "postprocess_ms": _ms(self.postprocess_ms),
            "total_ms": _ms(self.total_ms),
            "detections": None if self.detections is None else int(self.detections),
            "max_score": None if self.max_score is None else round(float(self.max_score), 4),
            "input_width": None if self.input_width is None else int(self.input_width),
            "input_height": None if self.input_height is None else int(self.input_height),
            "message": self.message,
            "peer": self.peer,
            "nms": self.nms,
        }


def log_request(logger: Any, record: RequestRecord) -> None:
    """Write the request's JSON line: info when OK, error for server faults, else warning."""
    fields = record.fields()
    if record.status == "OK":
        logger.info("request", **fields)
    elif record.status in _ERROR_CODES:
        logger.error("request", **fields)
    else:
        logger.warning("request", **fields)
