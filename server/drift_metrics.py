"""Prometheus metrics of the server's own alerts (drift.py), in the server's registry.

Camera label values are bounded by the camera table (dead_camera.py): a camera has its own
series while it holds a label slot; the cameras beyond the limit share camera="other", whose
gauge counts how many of them are dead. A forgotten camera's series is removed.

With front-end workers (server/workers) each front end watches its own streams and calls:
the gauges read the largest value across live front ends ("livemax"), so a camera dead on
any of them, or a shift seen by any of them, shows. prometheus_client cannot remove a series
there (its value lives in the process's file): a forgotten camera's series stays, at 0, so
streams without a caller's camera id get no label of their own in that mode (`multiprocess`).
"""

from __future__ import annotations

import os
from typing import Final

from prometheus_client import CollectorRegistry

from detserve.server.metric_registrar import Registrar

_ANY_FRONT_END: Final = "livemax"


class DriftMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.multiprocess = "PROMETHEUS_MULTIPROC_DIR" in os.environ
        add = Registrar(registry)
        self.camera_dead = add.gauge(
            "detserve_camera_dead",
            "1 while a camera is in the dead-camera alert (busy, then no detections for "
            "alerts.dead_camera_frames frames or alerts.dead_camera_seconds), else 0; for "
            "camera=\"other\" the number of dead cameras beyond the label limit.",
            ["model", "camera"], mode=_ANY_FRONT_END)
        self.dead_alerts = add.counter(
            "detserve_dead_camera_alerts",
            "Dead-camera alerts started.",
            ["model"])
        self.cameras = add.gauge(
            "detserve_cameras_tracked",
            "Cameras (streams, or callers' detserve-camera-id) the dead-camera rule watches.",
            ["model"], mode=_ANY_FRONT_END)
        self.shift = add.gauge(
            "detserve_distribution_shift",
            "PSI of the model's recent frames against its reference, per signal (detections "
            "per frame, max score per frame): < 0.1 no real change, 0.1-0.2 moderate, > 0.2 "
            "significant.",
            ["model", "signal"], mode=_ANY_FRONT_END)
        self.shift_alerts = add.counter(
            "detserve_distribution_shift_alerts",
            "Distribution-shift alerts started (PSI reached alerts.shift_threshold).",
            ["model", "signal"])
        self.reference_frames = add.gauge(
            "detserve_distribution_shift_reference_frames",
            "Frames in the model's shift reference; source=package (detserve-model eval) or "
            "warmup (the model's first frames).",
            ["model", "source"], mode=_ANY_FRONT_END)

    def model_seen(self, model: str) -> None:
        """Series that exist from a model's first frame, at zero."""
        self.dead_alerts.labels(model)
        self.cameras.labels(model).set(0)
        self.camera_dead.labels(model, "other")

    def set_dead(self, model: str, camera: str, value: float) -> None:
        self.camera_dead.labels(model, camera).set(value)

    def add_dead(self, model: str, camera: str, delta: float) -> None:
        self.camera_dead.labels(model, camera).inc(delta)

    def remove_camera(self, model: str, camera: str) -> None:
        self.camera_dead.labels(model, camera).set(0)
        if not self.multiprocess:
            self.camera_dead.remove(model, camera)
