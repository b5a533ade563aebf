"""Settings of the server's own alerts (server/drift.py): dead cameras and distribution shift.

The `alerts:` section of the config file; every field is optional. Validated on creation, and
`parse_alerts` names the field and the value for anything wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any


class AlertsConfigError(ValueError):
    """An `alerts` field has a bad value (config.py turns it into a ConfigError)."""


_INT_MINIMUMS = {
    "dead_camera_frames": 1, "dead_camera_min_frames": 1, "baseline_frames": 1,
    "max_cameras": 1, "camera_labels": 0, "shift_window_frames": 10,
    "shift_warmup_frames": 10, "shift_min_frames": 10,
}  # fmt: skip


@dataclass(frozen=True)
class AlertsConfig:
    """Dead camera: a camera whose baseline was at least `dead_camera_min_baseline` detections
    per frame over at least `dead_camera_min_frames` frames, then answers `dead_camera_frames`
    frames in a row with none, or keeps answering none for `dead_camera_seconds` (0: frames
    only). The baseline is an EWMA spanning `baseline_frames` frames.

    Cameras: at most `max_cameras` (model, camera) pairs are tracked (least recently seen
    forgotten first, and any not seen for `forget_camera_s`); the first `camera_labels` of them
    get their own Prometheus label, the rest are counted under camera="other".

    Shift: PSI of the last `shift_window_frames` frames of a model against its reference (the
    package's, else its first `shift_warmup_frames` frames), published once the window holds
    `shift_min_frames`; the alert starts at `shift_threshold` and clears below `shift_clear`."""

    enabled: bool = True
    dead_camera_frames: int = 30
    dead_camera_seconds: float = 60.0
    dead_camera_min_baseline: float = 1.0
    dead_camera_min_frames: int = 30
    baseline_frames: int = 50
    max_cameras: int = 1000
    camera_labels: int = 100
    forget_camera_s: float = 600.0
    shift_window_frames: int = 1000
    shift_warmup_frames: int = 500
    shift_min_frames: int = 200
    shift_threshold: float = 0.2
    shift_clear: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise AlertsConfigError(f"alerts.enabled must be true or false, got {self.enabled!r}")
        for name, minimum in _INT_MINIMUMS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise AlertsConfigError(
                    f"alerts.{name} must be an integer >= {minimum}, got {value!r}")
        for name in ("dead_camera_seconds", "dead_camera_min_baseline", "forget_camera_s",
                     "shift_threshold", "shift_clear"):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value < 0):
                raise AlertsConfigError(f"alerts.{name} must be a number >= 0, got {value!r}")
        if self.shift_min_frames > self.shift_window_frames:
            raise AlertsConfigError(
                f"alerts.shift_min_frames ({self.shift_min_frames}) must be at most "
                f"shift_window_frames ({self.shift_window_frames})")
        if self.shift_clear > self.shift_threshold:
            raise AlertsConfigError(
                f"alerts.shift_clear ({self.shift_clear}) must be at most shift_threshold "
                f"({self.shift_threshold}), or an alert could never clear")

    @property
    def ewma_alpha(self) -> float:
        """The EWMA weight of a new frame: a span of n frames weighs it 2 / (n + 1)."""
        return 2.0 / (self.baseline_frames + 1)


ALERT_FIELDS = tuple(f.name for f in fields(AlertsConfig))


def _number(value: Any) -> Any:
    """YAML and environment strings as numbers where they read as one."""
    if isinstance(value, str):
        for kind in (int, float):
            try:
                return kind(value)
            except ValueError:
                continue
        if value.lower() in ("true", "false"):
            return value.lower() == "true"
    return value


def parse_alerts(raw: Any) -> AlertsConfig:
    """The `alerts:` mapping of a config file (None or absent: the defaults)."""
    if raw is None:
        return AlertsConfig()
    if not isinstance(raw, Mapping):
        raise AlertsConfigError(f"config field 'alerts' must be a mapping, got {raw!r}")
    unknown = sorted(set(raw) - set(ALERT_FIELDS))
    if unknown:
        raise AlertsConfigError(
            f"config 'alerts' has unknown field(s) {unknown}; allowed: {sorted(ALERT_FIELDS)}")
    values = {k: _number(v) for k, v in raw.items()}
    # An integer-valued float field may come as an int from YAML; make it a float.
    for name in ("dead_camera_seconds", "dead_camera_min_baseline", "forget_camera_s",
                 "shift_threshold", "shift_clear"):
        if isinstance(values.get(name), int) and not isinstance(values[name], bool):
            values[name] = float(values[name])
    return AlertsConfig(**values)
