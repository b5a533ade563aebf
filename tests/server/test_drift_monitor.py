"""DriftMonitor on finished-request records: its Prometheus series and log events, including the
label limit ("other"), forgotten cameras and a warm-up reference."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry

from detserve.engines.base import DecodeParams
from detserve.engines.drift_reference import build_reference
from detserve.engines.manifest import Manifest, Postprocess
from detserve.server.alerts_config import AlertsConfig
from detserve.server.catalog import ModelEntry
from detserve.server.config import ModelConfig
from detserve.server.detect import RequestRecord
from detserve.server.drift import DriftMonitor
from detserve.server.logs import configure_logging, get_logger

MODEL = "m@1"
MANIFEST = Manifest(name="m", version="1", classes=("a",), input_width=64, input_height=64,
                    postprocess=Postprocess(score_threshold=0.5, iou_threshold=0.5,
                                            max_detections=100))
DEFAULT = DecodeParams.from_manifest(MANIFEST)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    yield buf
    structlog.reset_defaults()


def events(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def monitor(clock: Clock, **alerts: Any) -> tuple[DriftMonitor, CollectorRegistry]:
    settings = {"dead_camera_frames": 3, "dead_camera_seconds": 0.0, "dead_camera_min_frames": 3,
                "shift_warmup_frames": 20, "shift_window_frames": 20, "shift_min_frames": 20,
                **alerts}  # fmt: skip
    registry = CollectorRegistry()
    mon = DriftMonitor(AlertsConfig(**settings), registry, get_logger(), clock)
    mon.watch([ModelEntry(MODEL, "m", "1", ModelConfig(package=Path(".")), MANIFEST,
                          "onnxruntime", True)])
    return mon, registry


def frame(camera: str, scores: tuple[float, ...], params: DecodeParams = DEFAULT
          ) -> RequestRecord:
    return RequestRecord("r", 0, MODEL, grpc.StatusCode.OK, camera=camera, scores=scores,
                         detections=len(scores), max_score=max(scores, default=0.0),
                         params=params)


def dead(registry: CollectorRegistry, camera: str) -> float | None:
    return registry.get_sample_value("detserve_camera_dead", {"model": MODEL, "camera": camera})


def kill(mon: DriftMonitor, clock: Clock, camera: str) -> None:
    """Three busy frames, then three empty ones: the alert starts on the third."""
    for scores in [(0.9, 0.8)] * 3 + [()] * 3:
        clock.now += 1.0
        mon.observe(frame(camera, scores))


def test_cameras_beyond_the_label_limit_are_counted_under_other(log: io.StringIO) -> None:
    clock = Clock()
    mon, registry = monitor(clock, camera_labels=1)
    kill(mon, clock, "a")
    kill(mon, clock, "b")
    kill(mon, clock, "c")
    assert dead(registry, "a") == 1.0 and dead(registry, "other") == 2.0
    assert dead(registry, "b") is None and dead(registry, "c") is None
    assert registry.get_sample_value("detserve_dead_camera_alerts_total", {"model": MODEL}) == 3
    assert registry.get_sample_value("detserve_cameras_tracked", {"model": MODEL}) == 3
    started = [e for e in events(log) if e["event"] == "dead_camera_started"]
    assert [(e["camera"], e["label"], e["zero_frames"]) for e in started] == [
        ("a", "a", 3), ("b", "other", 3), ("c", "other", 3)]
    assert started[0]["level"] == "warning" and started[0]["baseline_detections"] == 2.0
    mon.observe(frame("b", (0.7,)))  # b sees objects again
    assert dead(registry, "other") == 1.0
    [cleared] = [e for e in events(log) if e["event"] == "dead_camera_cleared"]
    assert (cleared["camera"], cleared["reason"], cleared["level"]) == ("b", "detections", "info")


def test_forgotten_cameras_lose_their_series_and_their_alert_is_cleared(
        log: io.StringIO) -> None:
    clock = Clock()
    mon, registry = monitor(clock, forget_camera_s=100.0, camera_labels=1)
    kill(mon, clock, "a")
    kill(mon, clock, "b")  # under "other"
    clock.now += 200.0
    mon.observe(frame("c", (0.9,)))  # a and b idle for 200 s: forgotten; c takes a's label
    assert dead(registry, "a") is None and dead(registry, "c") == 0.0
    assert dead(registry, "other") == 0.0
    assert registry.get_sample_value("detserve_cameras_tracked", {"model": MODEL}) == 1
    forgotten = [e["camera"] for e in events(log)
                 if e["event"] == "dead_camera_cleared" and e["reason"] == "forgotten"]
    assert forgotten == ["a", "b"]


def test_warmup_reference_then_a_shift_alert_that_clears(log: io.StringIO) -> None:
    clock = Clock()
    mon, registry = monitor(clock)
    normal = [(0.9, 0.8, 0.7), (0.95, 0.6), (0.85,), (0.99, 0.9, 0.8, 0.7)]
    for k in range(20):  # the warm-up
        mon.observe(frame("", normal[k % 4]))
    assert registry.get_sample_value("detserve_distribution_shift_reference_frames",
                                     {"model": MODEL, "source": "warmup"}) == 20
    for k in range(20):  # the same again: no shift
        mon.observe(frame("", normal[k % 4]))
    shift = {s: registry.get_sample_value("detserve_distribution_shift",
                                          {"model": MODEL, "signal": s})
             for s in ("detections", "max_score")}  # fmt: skip
    assert shift["detections"] == pytest.approx(0.0, abs=1e-9)
    assert shift["max_score"] == pytest.approx(0.0, abs=1e-9)
    for _ in range(20):  # one low-scoring detection each
        mon.observe(frame("", (0.55,)))
    for s in ("detections", "max_score"):
        value = registry.get_sample_value("detserve_distribution_shift",
                                          {"model": MODEL, "signal": s})
        assert value is not None and value > 0.2
    # A caller's own class filter or a higher threshold does not count.
    filtered = DecodeParams(0.5, 0.5, 100, frozenset({0}))
    for _ in range(20):
        mon.observe(frame("", normal[0], filtered))
        mon.observe(frame("", normal[0], DecodeParams(0.7, 0.5, 100)))
    assert registry.get_sample_value("detserve_distribution_shift_alerts_total",
                                     {"model": MODEL, "signal": "max_score"}) == 1
    for k in range(20):
        mon.observe(frame("", normal[k % 4]))
    names = [(e["event"], e["signal"]) for e in events(log) if "shift" in e["event"]]
    assert names == [("distribution_shift_started", "detections"),
                     ("distribution_shift_started", "max_score"),
                     ("distribution_shift_cleared", "detections"),
                     ("distribution_shift_cleared", "max_score")]


def _with_reference(threshold: float) -> Manifest:
    ref = build_reference([1, 2] * 50, [0.95] * 100, threshold, "package", {"split": "val"})
    return replace(MANIFEST, metadata={"drift_reference": ref.to_metadata()})


def test_a_package_reference_counts_at_its_own_threshold(log: io.StringIO) -> None:
    registry = CollectorRegistry()
    mon = DriftMonitor(AlertsConfig(shift_window_frames=100, shift_min_frames=100), registry,
                       get_logger(), Clock())
    mon.watch([ModelEntry(MODEL, "m", "1", ModelConfig(package=Path(".")),
                          _with_reference(0.7), "onnxruntime", True)])
    assert registry.get_sample_value("detserve_distribution_shift_reference_frames",
                                     {"model": MODEL, "source": "package"}) == 100
    low = DecodeParams(0.3, 0.5, 100)  # the caller asked for more than the reference counts
    for k in range(100):
        # At 0.7: one detection, then two, as in the reference; the low ones do not count.
        scores = (0.95, 0.65, 0.5) if k % 2 == 0 else (0.95, 0.8, 0.6)
        mon.observe(frame("", scores, low))
    value = registry.get_sample_value("detserve_distribution_shift",
                                      {"model": MODEL, "signal": "detections"})
    assert value == pytest.approx(0.0, abs=1e-9)


def test_a_reference_below_the_served_threshold_is_not_used(log: io.StringIO) -> None:
    registry = CollectorRegistry()
    mon = DriftMonitor(AlertsConfig(), registry, get_logger(), Clock())
    mon.watch([ModelEntry(MODEL, "m", "1", ModelConfig(package=Path(".")),
                          _with_reference(0.3), "onnxruntime", True)])
    [unused] = [e for e in events(log) if e["event"] == "drift_reference_unused"]
    assert "below the served score_threshold 0.5" in unused["reason"]
    assert registry.get_sample_value("detserve_distribution_shift_reference_frames",
                                     {"model": MODEL, "source": "package"}) is None
