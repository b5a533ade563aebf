"""The `alerts:` section of the server config: defaults, file values, and errors that name the
field and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from detserve.server.alerts_config import AlertsConfig
from detserve.server.config import ConfigError, load_config


def _write(tmp_path: Path, alerts: str) -> Path:
    path = tmp_path / "server.yaml"
    path.write_text("models:\n  - package: builtin:shapes_320\n" + alerts)
    return path


def test_defaults_and_the_served_default_config() -> None:
    default = load_config().alerts
    assert default.dead_camera_frames == 30 and default.dead_camera_min_baseline == 1.0
    assert default.shift_threshold == 0.2 and default.shift_clear == 0.1
    assert AlertsConfig().ewma_alpha == pytest.approx(2 / 51)


def test_file_values(tmp_path: Path) -> None:
    path = _write(tmp_path, "alerts:\n  dead_camera_frames: 12\n  dead_camera_seconds: 5\n"
                            "  camera_labels: 0\n  shift_threshold: 0.25\n  enabled: false\n")
    alerts = load_config(path).alerts
    assert (alerts.dead_camera_frames, alerts.dead_camera_seconds) == (12, 5.0)
    assert alerts.camera_labels == 0 and alerts.shift_threshold == 0.25 and not alerts.enabled
    assert alerts.shift_window_frames == AlertsConfig().shift_window_frames


@pytest.mark.parametrize(("alerts", "match"), [
    ("alerts: 3\n", "'alerts' must be a mapping"),
    ("alerts:\n  dead_camera_frame: 3\n", r"unknown field\(s\) \['dead_camera_frame'\]"),
    ("alerts:\n  dead_camera_frames: 0\n", "alerts.dead_camera_frames must be an integer >= 1"),
    ("alerts:\n  dead_camera_frames: true\n", "alerts.dead_camera_frames must be an integer"),
    ("alerts:\n  dead_camera_min_baseline: -1\n", "dead_camera_min_baseline must be a number"),
    ("alerts:\n  shift_min_frames: 2000\n", "shift_min_frames \\(2000\\) must be at most"),
    ("alerts:\n  shift_clear: 0.5\n", "shift_clear \\(0.5\\) must be at most shift_threshold"),
])  # fmt: skip
def test_bad_values_name_the_field(tmp_path: Path, alerts: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(_write(tmp_path, alerts))
