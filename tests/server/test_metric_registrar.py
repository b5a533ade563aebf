"""The one way metric classes declare series (server/metric_registrar.py): each kind lands in
the registry it was given, with its labels, buckets and gauge mode."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from detserve.server.drift_metrics import DriftMetrics
from detserve.server.metric_registrar import Registrar
from detserve.server.metrics import ServerMetrics
from detserve.server.workers.mp_metrics import WorkerMetrics


def test_each_kind_lands_in_its_registry_with_labels_and_buckets() -> None:
    registry, other = CollectorRegistry(), CollectorRegistry()
    add = Registrar(registry)
    add.counter("t_calls", "Calls.", ["model"]).labels("m").inc(2)
    add.gauge("t_depth", "Depth.", ["model"], mode="livemax").labels("m").set(7)
    add.histogram("t_seconds", "Seconds.", ["model"], (0.1, 1.0)).labels("m").observe(0.5)
    assert registry.get_sample_value("t_calls_total", {"model": "m"}) == 2
    assert registry.get_sample_value("t_depth", {"model": "m"}) == 7
    assert registry.get_sample_value("t_seconds_bucket", {"model": "m", "le": "0.1"}) == 0
    assert registry.get_sample_value("t_seconds_bucket", {"model": "m", "le": "1.0"}) == 1
    assert other.get_sample_value("t_calls_total", {"model": "m"}) is None
    with pytest.raises(ValueError, match="Invalid multiprocess mode"):
        add.gauge("t_bad", "Bad.", mode="newest")  # type: ignore[arg-type]


def test_the_metric_classes_declare_through_it_in_their_own_registry() -> None:
    registry = CollectorRegistry()
    server = ServerMetrics(registry)
    DriftMetrics(registry).dead_alerts.labels("blocks").inc()
    WorkerMetrics(registry).connected.set(2)
    server.observe_error("blocks", "NOT_FOUND")
    assert registry.get_sample_value("detserve_dead_camera_alerts_total", {"model": "blocks"}) == 1
    assert registry.get_sample_value("detserve_workers_connected") == 2
    assert registry.get_sample_value("detserve_requests_total",
                                     {"model": "blocks", "code": "NOT_FOUND"}) == 1
    assert registry.get_sample_value("detserve_queue_seconds_bucket",
                                     {"model": "blocks", "le": "0.0001"}) is None  # unobserved
    server.queue_time.labels("blocks").observe(0.00005)
    assert registry.get_sample_value("detserve_queue_seconds_bucket",
                                     {"model": "blocks", "le": "0.0001"}) == 1
