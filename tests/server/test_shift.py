"""PSI, reference bins and the sliding window, on known histograms and seeded samples."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from detserve.engines.drift_reference import (
    Bins,
    Reference,
    ReferenceError,
    SignalReference,
    build_reference,
    decile_bins,
)
from detserve.server.shift import PSI_MODERATE, PSI_SIGNIFICANT, SlidingHistogram, psi


def test_psi_of_known_histograms() -> None:
    assert psi([50, 50], [50, 50]) == 0.0
    # Smoothed: e = (0.5, 0.5), a = (90.5/101, 10.5/101); sum (a-e) ln(a/e) by hand.
    assert psi([50, 50], [90, 10]) == pytest.approx(0.85306, abs=1e-4)
    assert psi([50, 50], [90, 10]) == pytest.approx(psi([90, 10], [50, 50]), abs=1e-12)
    # An empty reference bin gives a large but finite term.
    assert 1.0 < psi([100, 0], [50, 50]) < 10.0
    with pytest.raises(ValueError, match="one length"):
        psi([1, 2], [1, 2, 3])


def test_decile_bins_cut_equal_frequencies() -> None:
    bins = decile_bins([float(v) for v in range(100)], zero_bin=False)
    assert bins.edges == (9.0, 19.0, 29.0, 39.0, 49.0, 59.0, 69.0, 79.0, 89.0)
    assert bins.histogram([float(v) for v in range(100)]) == (10,) * 10
    counts = decile_bins([0.0, 1.0, 1.0, 2.0, 3.0, 3.0, 3.0, 5.0, 8.0, 9.0], zero_bin=True)
    assert counts.edges[0] == 0.0 and counts.index(0) == 0 and counts.index(0.5) == 1
    # Everything above the last edge lands in the open last bin.
    assert counts.index(1000.0) == counts.count - 1
    assert decile_bins([4.0] * 20, zero_bin=True).edges == (0.0,)


def test_bins_must_increase() -> None:
    with pytest.raises(ReferenceError, match="increase"):
        Bins((0.0, 2.0, 1.0))


def test_reference_round_trips_through_manifest_yaml() -> None:
    rng = np.random.default_rng(0)
    counts = rng.poisson(4, 300).tolist()
    tops = rng.uniform(0.4, 1.0, 280).tolist()
    ref = build_reference(counts, tops, 0.4, "package", {"dataset": "val.json", "split": "val"})
    raw = yaml.safe_load(yaml.safe_dump({"drift_reference": ref.to_metadata()}))
    back = Reference.from_metadata(raw["drift_reference"])
    assert back.frames == 300 and back.score_threshold == 0.4 and back.source == "package"
    assert back.details == {"dataset": "val.json", "split": "val"}
    for name in ("detections", "max_score"):
        assert back.signals[name] == ref.signals[name]
    assert sum(back.signals["detections"].counts) == 300
    assert sum(back.signals["max_score"].counts) == 280


@pytest.mark.parametrize(("raw", "match"), [
    ("nonsense", "must be a mapping"),
    ({"score_threshold": 0.3, "images": 5}, "no 'detections'"),
    ({"score_threshold": 0.3, "images": 5, "detections": {"edges": [0, 1]}}, "malformed"),
    ({"score_threshold": 0.3, "images": 5,
      "detections": {"edges": [0, 1], "counts": [1, 2]}}, "3 counts"),
])  # fmt: skip
def test_malformed_references_are_refused_with_the_reason(raw: object, match: str) -> None:
    with pytest.raises(ReferenceError, match=match):
        Reference.from_metadata(raw)


def test_sliding_histogram_keeps_the_last_values_only() -> None:
    ref = SignalReference(Bins((0.0, 1.0)), (10, 10, 10))
    window = SlidingHistogram(ref, size=4)
    for v in (0, 0, 0, 0):
        window.add(v)
    assert window.counts == (4, 0, 0) and window.filled == 4
    for v in (5, 1, 5):
        window.add(v)
    assert window.counts == (1, 1, 2) and window.filled == 4
    assert window.psi() == pytest.approx(psi([10, 10, 10], [1, 1, 2]))


def _window_psi(ref: SignalReference, values: list[float]) -> float:
    window = SlidingHistogram(ref, len(values))
    for v in values:
        window.add(v)
    return window.psi()


def test_same_distribution_stays_low_and_a_shift_goes_high() -> None:
    rng = np.random.default_rng(1)
    ref_counts = rng.poisson(5, 500).astype(float).tolist()
    ref_scores = rng.beta(8, 2, 500).tolist()
    counts_ref = SignalReference.of(ref_counts, zero_bin=True)
    scores_ref = SignalReference.of(ref_scores, zero_bin=False)
    other = np.random.default_rng(2)
    assert _window_psi(counts_ref, other.poisson(5, 1000).astype(float).tolist()) < PSI_MODERATE
    assert _window_psi(scores_ref, other.beta(8, 2, 1000).tolist()) < PSI_MODERATE
    # Fewer objects found, and less sure of them: both signals move past "significant".
    assert _window_psi(counts_ref, other.poisson(2.5, 1000).astype(float).tolist()) > \
        PSI_SIGNIFICANT
    assert _window_psi(scores_ref, (other.beta(8, 2, 1000) * 0.85).tolist()) > PSI_SIGNIFICANT
    # A camera gone dark: all frames empty.
    assert _window_psi(counts_ref, [0.0] * 200) > PSI_SIGNIFICANT
