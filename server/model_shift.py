"""One model's distribution shift: its reference, sliding windows and the shift alert's state.

The reference is the package's (`metadata.drift_reference`, written by `detserve-model eval`)
when it applies: it counted detections at a score threshold the server's answers reach (the
served threshold is at most the reference's). Otherwise the model's first
`shift_warmup_frames` frames become its reference.

A frame counts only if its request used settings that let it be compared with the reference:
no class filter, a score threshold at most the reference's, and max_detections at least the
model's. Its detections are re-counted at the reference's threshold.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from detserve.engines.base import DecodeParams
from detserve.engines.drift_reference import (
    METADATA_KEY,
    Reference,
    ReferenceError,
    build_reference,
)
from detserve.engines.manifest import Manifest
from detserve.server.alerts_config import AlertsConfig
from detserve.server.shift import SlidingHistogram

EVERY_FRAMES = 10  # PSI is recomputed every this many frames of a signal: O(bins) / 10 a frame
_SLACK = 1e-6  # thresholds are float32 on the wire


@dataclass(frozen=True)
class ShiftChange:
    """A signal's PSI was recomputed (`state` ""), or its alert "started" or "cleared"."""

    signal: str
    psi: float
    state: str
    window_frames: int


def package_reference(manifest: Manifest) -> tuple[Reference | None, str]:
    """The package's reference if it applies to how the model is served, and why not if not."""
    raw = manifest.metadata.get(METADATA_KEY)
    if raw is None:
        return None, "the package has no drift_reference"
    try:
        ref = Reference.from_metadata(raw)
    except ReferenceError as exc:
        return None, str(exc)
    served = manifest.postprocess.score_threshold
    if served > ref.score_threshold + _SLACK:
        return None, (f"drift_reference counted detections at score >= {ref.score_threshold:g}, "
                      f"below the served score_threshold {served:g}")
    return ref, ""


@dataclass
class _Warmup:
    detections: list[int] = field(default_factory=list)
    max_scores: list[float] = field(default_factory=list)


class ModelShift:
    def __init__(self, manifest: Manifest, config: AlertsConfig,
                 reference: Reference | None) -> None:
        self.config = config
        self.max_detections = manifest.postprocess.max_detections
        self.threshold = (reference.score_threshold if reference is not None
                          else manifest.postprocess.score_threshold)
        self.reference: Reference | None = None
        self.windows: dict[str, SlidingHistogram] = {}
        self.alerting: dict[str, bool] = {}
        self._warmup: _Warmup | None = _Warmup() if reference is None else None
        if reference is not None:
            self._use(reference)

    def comparable(self, params: DecodeParams) -> bool:
        return (params.class_ids is None and params.score_threshold <= self.threshold + _SLACK
                and params.max_detections >= self.max_detections)

    def frame(self, scores: Sequence[float], params: DecodeParams,
              top: float) -> tuple[list[ShiftChange], Reference | None]:
        """Add one comparable frame (its scores, the settings it ran with and its max score):
        the PSI changes it caused, and the warm-up reference if this frame completed it."""
        n = len(scores)
        if params.score_threshold < self.threshold - _SLACK:  # re-count at the reference's
            kept = [s for s in scores if s >= self.threshold - _SLACK]
            n, top = len(kept), max(kept, default=0.0)
        if self._warmup is not None:
            return [], self._warm(self._warmup, n, top)
        changes = [self._add("detections", float(n))]
        if n:
            changes.append(self._add("max_score", top))
        return [c for c in changes if c is not None], None

    def _warm(self, warm: _Warmup, n: int, top: float) -> Reference | None:
        warm.detections.append(n)
        if n:
            warm.max_scores.append(top)
        if len(warm.detections) < self.config.shift_warmup_frames:
            return None
        ref = build_reference(warm.detections, warm.max_scores, self.threshold, "warmup")
        self._warmup = None
        self._use(ref)
        return ref

    def _use(self, reference: Reference) -> None:
        self.reference = reference
        size = self.config.shift_window_frames
        self.windows = {name: SlidingHistogram(s, size) for name, s in reference.signals.items()}
        self.alerting = dict.fromkeys(self.windows, False)

    def _add(self, signal: str, value: float) -> ShiftChange | None:
        window = self.windows.get(signal)
        if window is None:  # a warm-up without one detection has no max_score reference
            return None
        window.add(value)
        window.since += 1
        if window.filled < self.config.shift_min_frames or window.since < EVERY_FRAMES:
            return None
        window.since = 0
        psi = window.psi()
        state = ""
        if not self.alerting[signal] and psi >= self.config.shift_threshold:
            state = "started"
        elif self.alerting[signal] and psi < self.config.shift_clear:
            state = "cleared"
        if state:
            self.alerting[signal] = state == "started"
        return ShiftChange(signal, psi, state, window.filled)
