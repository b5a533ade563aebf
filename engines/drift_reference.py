"""A model's output on a known-good set, as histograms: the reference the server's
distribution-shift alert compares with (server/shift.py, server/model_shift.py).

Two signals per image: `detections` (detections in it, at the reference's score threshold) and
`max_score` (its highest score; images with no detection have none). Bins are the set's deciles
(equal-frequency bins, the usual PSI binning, so no bin expects a tiny fraction); detections
keep a bin of their own for zero.

Stored in a package's manifest as `metadata.drift_reference` by `detserve-model eval
--store-reference` (models/eval_reference.py); the server builds one from a model's first
frames when the package has none.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

SIGNALS = ("detections", "max_score")
METADATA_KEY = "drift_reference"
_DECILES = tuple(k / 10 for k in range(1, 10))


class ReferenceError(ValueError):
    """A stored reference is malformed."""


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
