"""How the server declares its Prometheus series: `Registrar(registry)` builds counters, gauges
and histograms in that one registry, so each metric class (metrics.py, drift_metrics.py,
workers/mp_metrics.py) declares a series in one call: name, help text, labels, then its
buckets or its gauge mode."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypeAlias

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# How front-end worker processes' values of one gauge combine (prometheus_client's modes); one
# process ignores it.
GaugeMode: TypeAlias = Literal["all", "liveall", "min", "livemin", "max", "livemax", "sum",
                               "livesum", "mostrecent", "livemostrecent"]


class Registrar:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = (),
              mode: GaugeMode = "all") -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)

    def histogram(self, name: str, doc: str, labels: Sequence[str],
                  buckets: Sequence[float]) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)
