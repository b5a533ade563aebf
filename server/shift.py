"""Distribution shift of a model's output: PSI of a sliding window against a reference
(engines/drift_reference.py: bins and counts of detections and max score per frame).

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
Counts get +0.5 each (Laplace smoothing) so an empty bin contributes a large, finite term
instead of infinity. Sampling noise: with no shift, PSI averages about
(bins - 1) * (1/n_window + 1/n_reference), e.g. 0.03 for 10 bins, a 1000-frame window and a
500-image reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from detserve.engines.drift_reference import SignalReference

PSI_MODERATE, PSI_SIGNIFICANT = 0.1, 0.2  # the rules of thumb
_SMOOTHING = 0.5


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
