"""Request logging: captured output parsed back as JSON, one line per request."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import structlog

from detserve.server.logs import RequestRecord, configure_logging, get_logger, log_request


@pytest.fixture(autouse=True)
def _restore_structlog() -> Iterator[None]:
    yield
    structlog.reset_defaults()


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def ok_record(**overrides: Any) -> RequestRecord:
    fields: dict[str, Any] = {
        "rpc": "Detect", "request_id": "req-1", "model": "shapes@320", "status": "OK",
        "model_version": "1", "batch_size": 4, "queue_ms": 1.23456, "preprocess_ms": 2.0,
        "inference_ms": 8.5, "postprocess_ms": 0.75, "total_ms": 12.5, "detections": 3,
        "max_score": 0.912345, "input_width": 640, "input_height": 480, "peer": "ipv4:127.0.0.1:5",
    }  # fmt: skip
    fields.update(overrides)
    return RequestRecord(**fields)


def test_ok_request_is_one_json_line_with_every_field() -> None:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    log_request(get_logger(), ok_record())
    [line] = lines(buf)
    assert line["event"] == "request" and line["level"] == "info"
    assert line["logger"] == "detserve.server"
    assert line["timestamp"].endswith("Z")
    expected = {
        "rpc": "Detect", "request_id": "req-1", "frame_id": None, "model": "shapes@320",
        "model_version": "1", "status": "OK", "batch_size": 4, "queue_ms": 1.235,
        "preprocess_ms": 2.0, "inference_ms": 8.5, "postprocess_ms": 0.75, "total_ms": 12.5,
        "detections": 3, "max_score": 0.9123, "input_width": 640, "input_height": 480,
        "message": None, "peer": "ipv4:127.0.0.1:5",
    }  # fmt: skip
    assert {k: line[k] for k in expected} == expected


def test_numpy_scalars_come_out_as_plain_json_numbers() -> None:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    record = ok_record(max_score=np.float32(0.5), detections=np.int64(2), frame_id=np.int64(7))
    log_request(get_logger(), record)
    [line] = lines(buf)
    assert (line["max_score"], line["detections"], line["frame_id"]) == (0.5, 2, 7)


def test_levels_follow_the_status_and_filter() -> None:
    buf = io.StringIO()
    configure_logging("warning", stream=buf)
    log = get_logger("detserve.server.stream")
    log_request(log, ok_record(request_id="quiet"))
    log_request(log, ok_record(request_id="bad", status="INVALID_ARGUMENT",
                               message="image is 1x1; the minimum side is 8 pixels"))  # fmt: skip
    log_request(log, ok_record(request_id="boom", status="INTERNAL", message="engine failed"))
    got = [(line["request_id"], line["level"], line["status"]) for line in lines(buf)]
    assert got == [("bad", "warning", "INVALID_ARGUMENT"), ("boom", "error", "INTERNAL")]
    assert lines(buf)[0]["message"] == "image is 1x1; the minimum side is 8 pixels"
    assert lines(buf)[0]["logger"] == "detserve.server.stream"


def test_stream_frames_log_one_line_each_with_their_frame_ids() -> None:
    buf = io.StringIO()
    configure_logging(20, stream=buf)
    for frame in range(3):
        log_request(get_logger(), ok_record(rpc="DetectStream", frame_id=frame))
    assert [(line["rpc"], line["frame_id"]) for line in lines(buf)] == [
        ("DetectStream", 0), ("DetectStream", 1), ("DetectStream", 2),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("level", "message"),
    [
        (
            "verbose",
            "log level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, got 'verbose'",
        ),
        (True, "log level must be a level name or number, got True"),
    ],
)
def test_bad_level_is_refused_naming_it(level: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        configure_logging(level)
