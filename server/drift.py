"""The server's own alerts on what its models return: dead cameras and distribution shift.

`DriftMonitor.observe` takes every finished request (observe.py calls it on the event loop):
- frames from a camera (a DetectStream, or calls with `detserve-camera-id`) go through the
  dead-camera rule (dead_camera.py);
- comparable frames of a model go into its shift windows (model_shift.py, shift.py).
Each alert that starts or clears sets its Prometheus series (drift_metrics.py) and writes one
log event: `dead_camera_started` / `dead_camera_cleared`, `distribution_shift_started` /
`distribution_shift_cleared`.

Per frame the work is O(1): a dict look-up, an EWMA step, one bisect per signal, and every
`model_shift.EVERY_FRAMES` frames a PSI over about ten bins (benchmarks/drift_overhead.py).

Shift is computed per model, not per camera: a window per camera would cost its frames' memory
times the cameras, and one camera's few hundred frames give a PSI that is mostly sampling noise
(about bins / frames); the per-camera signal is the dead-camera rule.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry

from detserve.engines.drift_reference import METADATA_KEY, Reference
from detserve.server.alerts_config import AlertsConfig
from detserve.server.cameras import OTHER
from detserve.server.catalog import ModelView
from detserve.server.dead_camera import CameraState, CameraTable, DeadCameraRule, Transition
from detserve.server.detect import RequestRecord
from detserve.server.drift_metrics import DriftMetrics
from detserve.server.model_shift import ModelShift, ShiftChange, package_reference

_OK = grpc.StatusCode.OK


class DriftMonitor:
    def __init__(self, config: AlertsConfig, registry: CollectorRegistry, logger: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.logger = logger
        self.clock = clock
        self.metrics = DriftMetrics(registry)
        self.rule = DeadCameraRule(config)
        self.cameras = CameraTable(config, label_streams=not self.metrics.multiprocess)
        self.shifts: dict[str, ModelShift] = {}
        self._per_model: dict[str, int] = {}  # cameras tracked per model
        self._other_dead: dict[str, int] = {}

    def watch(self, models: Iterable[ModelView]) -> None:
        """Start watching the served models: each one's reference, or its warm-up."""
        for model in models:
            ref, why = package_reference(model.manifest)
            if ref is None and model.manifest.metadata.get(METADATA_KEY) is not None:
                self.logger.warning("drift_reference_unused", model=model.key, reason=why,
                                    warmup_frames=self.config.shift_warmup_frames)
            self.shifts[model.key] = ModelShift(model.manifest, self.config, ref)
            if ref is not None:
                self._reference(model.key, ref)

    def observe(self, rec: RequestRecord) -> None:
        if rec.code is not _OK or not self.config.enabled:
            return
        shift = self.shifts.get(rec.model)
        if shift is None:
            return
        if rec.model not in self._per_model:
            self._per_model[rec.model] = 0
            self._other_dead[rec.model] = 0
            self.metrics.model_seen(rec.model)
        if rec.params is not None and shift.comparable(rec.params):
            changes, warmed = shift.frame(rec.scores, rec.params, rec.max_score)
            if warmed is not None:
                self._warmed(rec.model, warmed)
            for change in changes:
                self._shift_changed(rec.model, change)
        if rec.camera:
            self._camera_frame(rec)

    # -- dead cameras

    def _camera_frame(self, rec: RequestRecord) -> None:
        now = self.clock()
        cam, new, gone = self.cameras.get(rec.model, rec.camera, now)
        for old in gone:
            self._forget(old)
        if new:
            self._tracked(cam, 1)
        elif self.cameras.promote(cam):
            self._promoted(cam)
        change = self.rule.frame(cam, rec.detections, rec.max_score, now)
        if change is not None:
            self._dead_changed(change, "detections")

    def _tracked(self, cam: CameraState, delta: int) -> None:
        self._per_model[cam.model] = self._per_model.get(cam.model, 0) + delta
        self.metrics.cameras.labels(cam.model).set(self._per_model[cam.model])
        if delta > 0 and cam.label != OTHER:
            self.metrics.set_dead(cam.model, cam.label, 0)

    def _promoted(self, cam: CameraState) -> None:
        if cam.dead:
            self._add_other(cam.model, -1)
        self.metrics.set_dead(cam.model, cam.label, 1 if cam.dead else 0)

    def _forget(self, cam: CameraState) -> None:
        if cam.dead:
            cam.dead = False
            self._dead_changed(Transition("cleared", cam, cam.zero_run,
                                          self.clock() - cam.zero_since), "forgotten")
        self._tracked(cam, -1)
        if cam.label != OTHER:
            self.metrics.remove_camera(cam.model, cam.label)

    def _add_other(self, model: str, delta: int) -> None:
        self._other_dead[model] = self._other_dead.get(model, 0) + delta
        self.metrics.set_dead(model, OTHER, self._other_dead[model])

    def _dead_changed(self, change: Transition, reason: str) -> None:
        cam, started = change.camera, change.state == "started"
        if cam.label == OTHER:
            self._add_other(cam.model, 1 if started else -1)
        else:
            self.metrics.set_dead(cam.model, cam.label, 1 if started else 0)
        fields = {
            "model": cam.model, "camera": cam.camera, "label": cam.label,
            "zero_frames": change.zero_frames, "zero_seconds": round(change.zero_seconds, 3),
            "baseline_detections": round(cam.baseline, 3),
            "baseline_max_score": round(cam.score_baseline, 4),
            "baseline_frames": cam.frames,
        }  # fmt: skip
        if started:
            self.metrics.dead_alerts.labels(cam.model).inc()
            self.logger.warning("dead_camera_started", **fields)
        else:
            self.logger.info("dead_camera_cleared", reason=reason, **fields)

    # -- distribution shift

    def _reference(self, model: str, ref: Reference) -> None:
        self.metrics.reference_frames.labels(model, ref.source).set(ref.frames)
        for signal in ref.signals:  # the alert counters exist, at zero, once they can count
            self.metrics.shift_alerts.labels(model, signal)

    def _warmed(self, model: str, ref: Reference) -> None:
        self._reference(model, ref)
        self.logger.info("drift_reference_ready", model=model, source=ref.source,
                         frames=ref.frames, score_threshold=ref.score_threshold,
                         signals=sorted(ref.signals))

    def _shift_changed(self, model: str, change: ShiftChange) -> None:
        self.metrics.shift.labels(model, change.signal).set(change.psi)
        if not change.state:
            return
        shift = self.shifts[model]
        source = shift.reference.source if shift.reference is not None else ""
        fields = {"model": model, "signal": change.signal, "psi": round(change.psi, 4),
                  "window_frames": change.window_frames, "reference": source}
        if change.state == "started":
            self.metrics.shift_alerts.labels(model, change.signal).inc()
            self.logger.warning("distribution_shift_started",
                                threshold=self.config.shift_threshold, **fields)
        else:
            self.logger.info("distribution_shift_cleared", clear_below=self.config.shift_clear,
                             **fields)
