"""Prometheus across processes: every child writes its metrics into one directory
(prometheus_client's multiprocess mode, PROMETHEUS_MULTIPROC_DIR), and the supervisor serves
one /metrics that adds them up, so the server reads as one server with the metric names and
labels of a single process. Counters and histograms add up across front ends; the queue and
admission gauges are set by the engine process alone ("mostrecent").

The metrics only this process model has: per front end (`worker` = its index) the requests it
brought, the slots its requests hold in the engine process and the slots freed when it died,
the JPEGs it left encoded for the engine's device;
the front ends connected, and the restarts.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from detserve.server.metric_registrar import Registrar

ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_dir(path: Path) -> None:
    """An empty metrics directory, named in the environment the children inherit. It must be
    set before a child imports prometheus_client: that import picks file-backed values."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ[ENV] = str(path)


class WorkerMetrics:
    """Written by the engine process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        add = Registrar(self.registry)
        self.slots_in_use = add.gauge(
            "detserve_worker_slots_in_use",
            "Shared-memory slots held by a front end's requests in the engine process "
            "(admitted, not yet answered).",
            ["worker"], mode="mostrecent")
        self.slots_freed = add.counter(
            "detserve_worker_slots_freed",
            "Slots of a front end that died, freed by the engine process with the requests "
            "they held (dropped: their callers' connections died with it).",
            ["worker"])
        self.requests = add.counter(
            "detserve_worker_requests",
            "Requests each front end brought to admission (admitted or refused): how evenly "
            "the kernel spreads connections over the front ends.",
            ["worker"])
        self.encoded_jpegs = add.counter(
            "detserve_worker_encoded_jpegs",
            "JPEGs a front end handed over still encoded, for the model's engine to decode on "
            "its device (torch-cuda decode: device): via slot, or via message when larger than "
            "a slot.",
            ["worker", "via"])
        self.connected = add.gauge(
            "detserve_workers_connected", "Front ends connected to the engine process.",
            mode="mostrecent")


class _Restarts(Collector):
    def __init__(self) -> None:
        self.count = 0

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "detserve_worker_restarts", "Front-end processes the supervisor restarted after "
            "they died.")
        family.add_metric([], float(self.count))
        yield family


class SupervisorMetrics:
    """The one /metrics endpoint: every child's files, plus the supervisor's own restarts."""

    def __init__(self, path: Path) -> None:
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(path))  # type: ignore[no-untyped-call]
        self._restarts = _Restarts()
        self.registry.register(self._restarts)
        self._http: tuple[WSGIServer, threading.Thread] | None = None

    def restarted(self) -> None:
        self._restarts.count += 1

    def start_http(self, port: int, addr: str) -> int:
        server, thread = start_http_server(port, addr=addr, registry=self.registry)
        self._http = (server, thread)
        return int(server.server_port)

    def stop_http(self) -> None:
        if self._http is not None:
            server, thread = self._http
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._http = None
