"""ServerMetrics: values read back from the text exposition, as Prometheus would scrape them."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from detserve.server.metrics import ServerMetrics, max_side_tier


def samples(metrics: ServerMetrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the exposition, keyed by (sample name, labels)."""
    text = metrics.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(metrics: ServerMetrics, name: str, **labels: str) -> float:
    return samples(metrics)[(name, frozenset(labels.items()))]


def observe(metrics: ServerMetrics, **overrides: Any) -> None:
    fields: dict[str, Any] = {
        "code": "OK", "latency_s": 0.012, "queue_s": 0.0015, "compute_s": 0.008,
        "batch_size": 4, "executed_batch_size": 8, "n_detections": 3, "max_score": 0.93,
        "width": 640, "height": 480,
    }  # fmt: skip
    fields.update(overrides)
    metrics.observe_request("shapes@320", **fields)


def test_request_fills_every_histogram_in_the_right_bucket() -> None:
    m = ServerMetrics()
    observe(m)
    model = "shapes@320"
    h = "detserve_request_latency_seconds"
    assert value(m, f"{h}_bucket", model=model, le="0.01") == 0
    assert value(m, f"{h}_bucket", model=model, le="0.015") == 1
    assert value(m, f"{h}_count", model=model) == 1
    assert value(m, f"{h}_sum", model=model) == pytest.approx(0.012)
    assert value(m, "detserve_queue_seconds_bucket", model=model, le="0.001") == 0
    assert value(m, "detserve_queue_seconds_bucket", model=model, le="0.002") == 1
    assert value(m, "detserve_compute_seconds_bucket", model=model, le="0.01") == 1
    assert value(m, "detserve_compute_seconds_bucket", model=model, le="0.005") == 0
    assert value(m, "detserve_batch_size_bucket", model=model, le="3.0") == 0
    assert value(m, "detserve_batch_size_bucket", model=model, le="4.0") == 1
    assert value(m, "detserve_executed_batch_size_bucket", model=model, le="6.0") == 0
    assert value(m, "detserve_executed_batch_size_bucket", model=model, le="8.0") == 1
    assert value(m, "detserve_detections_per_frame_sum", model=model) == 3
    assert value(m, "detserve_max_score_per_frame_bucket", model=model, le="0.9") == 0
    assert value(m, "detserve_max_score_per_frame_bucket", model=model, le="0.95") == 1
    assert value(m, "detserve_input_megapixels_sum", model=model) == pytest.approx(0.3072)
    assert value(m, "detserve_input_resolution_total", model=model, max_side="<=640") == 1
    assert value(m, "detserve_requests_total", model=model, code="OK") == 1


def test_frame_without_detections_counts_zero_and_skips_max_score() -> None:
    m = ServerMetrics()
    observe(m, n_detections=0, max_score=None)
    assert value(m, "detserve_detections_per_frame_bucket", model="shapes@320", le="0.0") == 1
    assert ("detserve_max_score_per_frame_count", frozenset({("model", "shapes@320")})) not in (
        samples(m)
    )


def test_errors_queue_depth_and_dropped_frames() -> None:
    m = ServerMetrics()
    m.observe_error("shapes@320", "INVALID_ARGUMENT")
    m.observe_error("shapes@320", "INVALID_ARGUMENT")
    m.observe_error("unknown", "NOT_FOUND")
    m.set_queue_depth("shapes@640", 7)
    m.set_queue_depth("shapes@640", 3)
    m.add_dropped_frames("shapes@320", 2)
    m.add_dropped_frames("shapes@320", 5)
    assert value(m, "detserve_requests_total", model="shapes@320", code="INVALID_ARGUMENT") == 2
    assert value(m, "detserve_requests_total", model="unknown", code="NOT_FOUND") == 1
    assert value(m, "detserve_queue_depth", model="shapes@640") == 3
    assert value(m, "detserve_stream_dropped_frames_total", model="shapes@320") == 7


def test_two_servers_in_one_process_keep_separate_counts() -> None:
    a, b = ServerMetrics(), ServerMetrics()
    observe(a)
    observe(a)
    observe(b)
    assert value(a, "detserve_requests_total", model="shapes@320", code="OK") == 2
    assert value(b, "detserve_requests_total", model="shapes@320", code="OK") == 1


@pytest.mark.parametrize(
    ("size", "tier"),
    [((320, 240), "<=320"), ((640, 480), "<=640"), ((1920, 1080), "<=1920"),
     ((3840, 2160), "<=3840"), ((7680, 4320), ">3840"), ((300, 1000), "<=1280")],
)  # fmt: skip
def test_max_side_tier(size: tuple[int, int], tier: str) -> None:
    assert max_side_tier(*size) == tier


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"latency_s": -0.5}, "latency_s must be a finite number of seconds >= 0, got -0.5"),
        ({"queue_s": float("inf")}, "queue_s must be a finite number of seconds >= 0, got inf"),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"executed_batch_size": 3}, "executed_batch_size 3 is below the batch size 4"),
        ({"n_detections": -1}, "n_detections must be >= 0, got -1"),
        ({"width": 0}, "image size must be positive, got 0x480"),
    ],
)
def test_bad_observations_are_refused_naming_the_value(
    overrides: dict[str, object], message: str
) -> None:
    m = ServerMetrics()
    with pytest.raises(ValueError, match=re.escape(message)):
        observe(m, **overrides)
    with pytest.raises(ValueError, match="queue depth must be >= 0, got -1"):
        m.set_queue_depth("shapes@320", -1)


def test_http_endpoint_serves_the_registry_on_an_ephemeral_port() -> None:
    m = ServerMetrics()
    observe(m)
    port = m.start_http(0)
    try:
        assert port > 0
        with pytest.raises(RuntimeError, match=f"already serving on port {port}"):
            m.start_http(0)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            body = resp.read().decode()
        assert 'detserve_requests_total{code="OK",model="shapes@320"} 1.0' in body
    finally:
        m.stop_http()
    with pytest.raises(ValueError, match=r"metrics port must be in 0\.\.65535, got 70000"):
        m.start_http(70000)
