"""The dead-camera rule and its camera table, frame by frame with explicit times."""

from __future__ import annotations

from dataclasses import replace

import pytest

from detserve.server.alerts_config import AlertsConfig
from detserve.server.cameras import OTHER
from detserve.server.dead_camera import CameraState, CameraTable, DeadCameraRule

CONFIG = AlertsConfig(dead_camera_frames=5, dead_camera_seconds=0.0, dead_camera_min_baseline=1.0,
                      dead_camera_min_frames=10, baseline_frames=9)  # alpha 0.2


def camera() -> CameraState:
    return CameraState("m@1", "cam", "cam", 0.0)


def feed(rule: DeadCameraRule, cam: CameraState, counts: list[int], start: float = 0.0,
         step: float = 0.1) -> list[tuple[int, str]]:
    """(frame index, "started"/"cleared") for each change."""
    out = []
    for k, n in enumerate(counts):
        change = rule.frame(cam, n, 0.9 if n else 0.0, start + k * step)
        if change is not None:
            out.append((k, change.state))
    return out


def test_busy_camera_alerts_on_the_nth_empty_frame_and_clears_on_a_detection() -> None:
    rule, cam = DeadCameraRule(CONFIG), camera()
    changes = feed(rule, cam, [3] * 10 + [0] * 7 + [2])
    assert changes == [(14, "started"), (17, "cleared")]
    assert cam.baseline == pytest.approx(3.0 * 0.8 + 2 * 0.2)  # the dead run stayed out
    # It dies again: the baseline still says busy, so it alerts again after 5 frames.
    assert feed(rule, cam, [0] * 5) == [(4, "started")]


def test_quiet_or_new_cameras_never_alert() -> None:
    rule = DeadCameraRule(CONFIG)
    assert feed(rule, camera(), [1, 0] * 10 + [0] * 20) == []  # baseline about 0.5 < 1.0
    assert feed(rule, camera(), [5] * 9 + [0] * 20) == []  # 9 frames < dead_camera_min_frames


def test_a_short_empty_run_is_folded_into_the_baseline() -> None:
    rule, cam = DeadCameraRule(CONFIG), camera()
    feed(rule, cam, [4] * 10)
    assert feed(rule, cam, [0, 0, 0, 4]) == []
    assert cam.baseline == pytest.approx(4.0 * 0.8**3 + 0.2 * (4.0 - 4.0 * 0.8**3))
    assert cam.frames == 14 and not cam.dead


def test_seconds_alone_raise_the_alert_for_a_slow_camera() -> None:
    rule, cam = DeadCameraRule(replace(CONFIG, dead_camera_frames=100,
                                       dead_camera_seconds=5.0)), camera()
    feed(rule, cam, [2] * 10, step=1.0)
    # One frame a second: the run starts at t=10, and t=15 is 5 s into it.
    assert feed(rule, cam, [0] * 8, start=10.0, step=1.0) == [(5, "started")]


def test_table_is_an_lru_with_bounded_labels() -> None:
    table = CameraTable(AlertsConfig(max_cameras=3, camera_labels=2, forget_camera_s=100.0))
    a, new, gone = table.get("m", "a", 0.0)
    assert new and not gone and a.label == "a"
    b = table.get("m", "b", 1.0)[0]
    c = table.get("m", "c", 2.0)[0]
    assert (b.label, c.label) == ("b", OTHER) and table.labelled == 2
    assert table.get("m", "a", 3.0)[1] is False  # seen again: now the most recent
    d, new, gone = table.get("m", "d", 4.0)  # full: b, the least recently seen, goes
    assert new and [g.camera for g in gone] == ["b"] and d.label == "d" and len(table) == 3
    # c holds no label; none is free until one is forgotten.
    assert not table.promote(c)
    _, _, gone = table.get("m", "d", 103.5)  # a (3.0) and c (2.0) idle for over 100 s
    assert sorted(g.camera for g in gone) == ["a", "c"] and table.labelled == 1


def test_same_camera_under_two_models_is_two_cameras() -> None:
    table = CameraTable(AlertsConfig())
    first, second = table.get("m@1", "cam", 0.0)[0], table.get("m@2", "cam", 0.0)[0]
    assert first is not second and len(table) == 2


def test_stream_ids_can_go_unlabelled() -> None:
    """With front-end workers, series cannot be removed: streams' own ids get no label."""
    table = CameraTable(AlertsConfig(), label_streams=False)
    assert table.get("m", "stream-7", 0.0)[0].label == OTHER
    assert table.get("m", "gate-1", 0.0)[0].label == "gate-1" and table.labelled == 1
