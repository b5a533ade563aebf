"""Distribution shift of a model's output: PSI of a sliding window against a reference.

Two signals per frame: `detections` (detections in the frame, at the reference's score
threshold) and `max_score` (its highest score; frames with no detection have none).

Why PSI (population stability index), not KS or Wasserstein:
- Both signals are histograms already (the detection count is discrete, and Prometheus
  exposes scores in buckets). PSI compares binned distributions directly; KS assumes a
  continuous variable (ties in a count make it conservative) and its p-value shrinks with
  the window, so a big window flags shifts too small to matter.
- PSI is unitless, with rules of thumb that hold for both signals alike: below 0.1 no real
  change, 0.1-0.2 moderate, above 0.2 significant. A Wasserstein distance is in the signal's
  own units (detections vs score), so each would need a threshold of its own.
- On running bin counts it costs O(bins) per evaluation, whatever the window length.

PSI = sum_i (a_i - e_i) * ln(a_i / e_i), a/e the window's and the reference's bin fractions.
Bins are the reference's deciles (equal-frequency bins, the usual PSI binning), so no bin
expects a tiny fraction; detections keep a bin of their own for zero. Counts get +0.5 each
(Laplace smoothing) so an empty bin contributes a large, finite term instead of infinity.
Sampling noise: with no shift, PSI averages about (bins - 1) * (1/n_window + 1/n_reference),
e.g. 0.03 for 10 bins, a 1000-frame window and a 500-image reference.

A reference is stored in a model package by `detserve-model eval` (manifest metadata
`drift_reference`, see `Reference.to_metadata`), or built from a model's first frames.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SIGNALS = ("detections", "max_score")
METADATA_KEY = "drift_reference"
PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.2  # the rules of thumb
_DECILES = tuple(k / 10 for k in range(1, 10))
_SMOOTHING = 0.5


class ReferenceError(ValueError):
    """A stored reference is malformed."""


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """PSI of the bin counts `actual` against `expected` (same bins), Laplace-smoothed."""
    if len(expected) != len(actual) or not expected:
        raise ValueError(f"PSI needs two count lists of one length, got {len(expected)} and "
                         f"{len(actual)}")
    e_total = sum(expected) + _SMOOTHING * len(expected)
    a_total = sum(actual) + _SMOOTHING * len(actual)
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        pe, pa = (e + _SMOOTHING) / e_total, (a + _SMOOTHING) / a_total
        total += (pa - pe) * math.log(pa / pe)
    return total


@dataclass(frozen=True)
class Bins:
    """Bins by upper edge: bin i holds values <= edges[i] (and above edges[i-1]); the last bin,
    len(edges), holds everything above the last edge."""

    edges: tuple[float, ...]

    def __post_init__(self) -> None:
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ReferenceError(f"bin edges must increase, got {list(self.edges)}")

    @property
    def count(self) -> int:
        return len(self.edges) + 1

    def index(self, value: float) -> int:
        return bisect.bisect_left(self.edges, value)

    def histogram(self, values: Sequence[float]) -> tuple[int, ...]:
        counts = [0] * self.count
        for v in values:
            counts[self.index(v)] += 1
        return tuple(counts)


def decile_bins(values: Sequence[float], zero_bin: bool) -> Bins:
    """Equal-frequency bins of `values`: their distinct deciles as upper edges; with `zero_bin`
    (detection counts) 0 is a bin of its own."""
    if not values:
        raise ValueError("no values to bin")
    qs = np.quantile(np.asarray(values, np.float64), _DECILES, method="inverted_cdf")
    edges = sorted({round(float(q), 6) for q in qs})
    if zero_bin:
        edges = sorted({0.0, *edges})
    while edges and edges[-1] >= max(values):  # the open last bin holds the top decile
        edges.pop()
        if not edges:
            break
    if zero_bin and not edges:
        edges = [0.0]
    return Bins(tuple(edges))


@dataclass(frozen=True)
class SignalReference:
    bins: Bins
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.counts) != self.bins.count or any(c < 0 for c in self.counts):
            raise ReferenceError(f"a reference needs {self.bins.count} counts >= 0 for edges "
                                 f"{list(self.bins.edges)}, got {list(self.counts)}")

    @classmethod
    def of(cls, values: Sequence[float], zero_bin: bool) -> SignalReference:
        bins = decile_bins(values, zero_bin)
        return cls(bins, bins.histogram(values))


@dataclass(frozen=True)
class Reference:
    """What a model's output looked like on a known-good set: per signal, bins and counts."""

    signals: Mapping[str, SignalReference]
    score_threshold: float  # detections were counted at this score
    source: str  # "package" (detserve-model eval) or "warmup"
    frames: int
    details: Mapping[str, Any]  # dataset, split... for people, not used here

    def to_metadata(self) -> dict[str, Any]:
        """The manifest's `metadata.drift_reference` mapping (plain YAML types)."""
        return {
            "score_threshold": self.score_threshold, "images": self.frames, **self.details,
            **{name: {"edges": list(s.bins.edges), "counts": list(s.counts)}
               for name, s in self.signals.items()},
        }  # fmt: skip

    @classmethod
    def from_metadata(cls, raw: Any) -> Reference:
        if not isinstance(raw, Mapping):
            raise ReferenceError(f"metadata.{METADATA_KEY} must be a mapping, got {raw!r}")
        try:
            signals = {name: SignalReference(Bins(tuple(float(e) for e in raw[name]["edges"])),
                                             tuple(int(c) for c in raw[name]["counts"]))
                       for name in SIGNALS if name in raw}  # fmt: skip
            threshold, frames = float(raw["score_threshold"]), int(raw["images"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ReferenceError(f"metadata.{METADATA_KEY} is malformed ({exc!r}); run "
                                 f"`detserve-model eval --store-reference` again") from exc
        if "detections" not in signals:
            raise ReferenceError(f"metadata.{METADATA_KEY} has no 'detections' histogram")
        details = {k: v for k, v in raw.items()
                   if k not in (*SIGNALS, "score_threshold", "images")}
        return cls(signals, threshold, "package", frames, details)


def build_reference(detections: Sequence[int], max_scores: Sequence[float],
                    score_threshold: float, source: str,
                    details: Mapping[str, Any] | None = None) -> Reference:
    """A reference from per-frame detection counts and the max scores of frames with any."""
    signals = {"detections": SignalReference.of([float(n) for n in detections], zero_bin=True)}
    if max_scores:
        signals["max_score"] = SignalReference.of(max_scores, zero_bin=False)
    return Reference(signals, score_threshold, source, len(detections), dict(details or {}))


class SlidingHistogram:
    """Bin counts of the last `size` values: O(log bins) per value, memory of `size` bin indices."""

    def __init__(self, reference: SignalReference, size: int) -> None:
        self.reference = reference
        self._ring = [0] * size
        self._counts = [0] * reference.bins.count
        self._next = 0
        self.filled = 0
        self.since = 0  # values added since the caller last computed the PSI

    def add(self, value: float) -> None:
        index = self.reference.bins.index(value)
        ring = self._ring
        if self.filled == len(ring):
            self._counts[ring[self._next]] -= 1
        else:
            self.filled += 1
        ring[self._next] = index
        self._counts[index] += 1
        self._next = (self._next + 1) % len(ring)

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(self._counts)

    def psi(self) -> float:
        return psi(self.reference.counts, self._counts)
