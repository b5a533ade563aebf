"""Counters from a server's Prometheus /metrics text, read tolerantly.

A counter the server does not expose reads as None (the caller says so), not as 0. A labelled
counter that has not been incremented yet has no samples but is still declared (`# TYPE`);
it reads as 0, so a before/after difference works from the first increment on.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

DECODED_AFTER_DEADLINE = "detserve_decoded_after_deadline_total"
DECODES = "detserve_decodes_total"
REJECTED = "detserve_rejected_total"
EXPIRED_BEFORE_DECODE = "detserve_expired_before_decode_total"
REJECTION_SECONDS = "detserve_rejection_seconds"  # histogram: server time to refuse
OVERLOAD_COUNTERS = (DECODED_AFTER_DEADLINE, DECODES, REJECTED, EXPIRED_BEFORE_DECODE)

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Snapshot:
    """Sample values by sample name, then by label set; `declared` names with no samples yet."""

    samples: Mapping[str, Mapping[Labels, float]] = field(default_factory=dict)
    declared: frozenset[str] = frozenset()

    def has(self, name: str) -> bool:
        return name in self.samples or name in self.declared

    def total(self, name: str) -> float | None:
        """Sum over every label set; None when the server does not expose `name`."""
        if not self.has(name):
            return None
        return sum(self.samples.get(name, {}).values())

    def by_label(self, name: str, label: str) -> dict[str, float] | None:
        """Sums per value of `label` ("" where a sample lacks it); None when not exposed."""
        if not self.has(name):
            return None
        out: dict[str, float] = {}
        for labels, value in self.samples.get(name, {}).items():
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
        return out


def parse_metrics(text: str) -> Snapshot:
    """Parse exposition text; an unparsable text reads as exposing nothing."""
    samples: dict[str, dict[Labels, float]] = {}
    declared: set[str] = set()
    try:
        for family in text_string_to_metric_families(text):
            if family.type == "counter":
                declared.add(f"{family.name}_total")
            for s in family.samples:
                samples.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = float(s.value)
    except ValueError:
        return Snapshot()
    return Snapshot(samples, frozenset(declared))


def scrape(url: str, timeout_s: float = 2.0) -> Snapshot | None:
    """GET `url` and parse it; None when the endpoint cannot be read."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as reply:
            return parse_metrics(reply.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError, TimeoutError):
        return None


def counter_delta(before: Snapshot | None, after: Snapshot | None, name: str) -> float | None:
    """after - before of a counter summed over its labels; None when not exposed."""
    if before is None or after is None:
        return None
    end = after.total(name)
    if end is None:
        return None
    return end - (before.total(name) or 0.0)


def label_delta(before: Snapshot | None, after: Snapshot | None, name: str,
                label: str) -> dict[str, float] | None:
    """Per-`label` after - before of a counter; None when not exposed."""
    if before is None or after is None:
        return None
    end = after.by_label(name, label)
    if end is None:
        return None
    start = before.by_label(name, label) or {}
    return {k: v - start.get(k, 0.0) for k, v in sorted(end.items())}


def histogram_quantile_delta(before: Snapshot | None, after: Snapshot | None, name: str,
                             q: float) -> float | None:
    """The q-quantile (0..1) of the observations a histogram gained between two snapshots,
    as the upper edge of the bucket it falls in (Prometheus' histogram_quantile without the
    interpolation); None when not exposed or nothing was observed."""
    if before is None or after is None:
        return None
    end = after.samples.get(f"{name}_bucket")
    if not end:
        return None
    start = before.samples.get(f"{name}_bucket", {})
    counts: dict[float, float] = {}
    for labels, value in end.items():
        edge = float(dict(labels).get("le", "inf"))
        counts[edge] = counts.get(edge, 0.0) + value - start.get(labels, 0.0)
    total = counts.get(float("inf"), 0.0)
    if total <= 0:
        return None
    for edge in sorted(counts):
        if counts[edge] >= q * total:
            return edge
    return None
