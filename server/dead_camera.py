"""The dead-camera rule, and the bounded table of the cameras it watches.

A camera's baseline is an EWMA of its detections per frame (and of its max score, for the
alert's log line). A camera is busy once it has `dead_camera_min_frames` frames in its baseline
and the baseline is at least `dead_camera_min_baseline`. A busy camera that then answers
`dead_camera_frames` frames in a row with no detection, or keeps answering none for
`dead_camera_seconds`, is dead; the first frame with a detection clears it.

The zero frames of a run are kept out of the baseline until the run ends: a short run (an
empty moment of a busy scene) is then folded in; the run of a dead camera is dropped, so the
baseline still says what the camera looked like alive and a camera that dies again alerts
again. The seconds are checked when a frame arrives: a camera that sends nothing is a stream
gone, which the request rate shows, not this rule.

All of it runs on the event loop, O(1) per frame; the table is an LRU of at most
`max_cameras` cameras, and one not seen for `forget_camera_s` is forgotten.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from detserve.server.alerts_config import AlertsConfig
from detserve.server.cameras import OTHER, STREAM_PREFIX

CameraKey = tuple[str, str]  # (model, camera)


@dataclass
class CameraState:
    model: str
    camera: str
    label: str  # the camera's own id, or OTHER beyond the label limit
    last_seen: float
    baseline: float = 0.0  # detections per frame (EWMA)
    score_baseline: float = 0.0  # max score of frames with detections (EWMA)
    frames: int = 0  # frames in the baseline
    scored_frames: int = 0  # frames in score_baseline
    zero_run: int = 0  # frames in a row with no detection, not yet in the baseline
    zero_since: float = 0.0  # when the run started
    dead: bool = False


@dataclass(frozen=True)
class Transition:
    """A camera's alert started ("started") or ended ("cleared")."""

    state: str
    camera: CameraState
    zero_frames: int
    zero_seconds: float


class DeadCameraRule:
    def __init__(self, config: AlertsConfig) -> None:
        self.config = config
        self.keep = 1.0 - config.ewma_alpha

    def frame(self, cam: CameraState, detections: int, max_score: float,
              now: float) -> Transition | None:
        """Fold one answered frame into `cam`; the alert's change, if this frame made one."""
        cam.last_seen = now
        if detections == 0:
            return self._zero(cam, now)
        change = None
        if cam.dead:
            cam.dead = False
            change = Transition("cleared", cam, cam.zero_run, now - cam.zero_since)
        elif cam.zero_run:
            self._fold_zeros(cam, cam.zero_run)
        cam.zero_run = 0
        self._add(cam, detections, max_score)
        return change

    def _zero(self, cam: CameraState, now: float) -> Transition | None:
        if cam.zero_run == 0:
            cam.zero_since = now
        cam.zero_run += 1
        c = self.config
        if cam.dead or cam.frames < c.dead_camera_min_frames:
            return None
        if cam.baseline < c.dead_camera_min_baseline:
            return None
        seconds = now - cam.zero_since
        timed_out = c.dead_camera_seconds > 0 and seconds >= c.dead_camera_seconds
        if cam.zero_run >= c.dead_camera_frames or timed_out:
            cam.dead = True
            return Transition("started", cam, cam.zero_run, seconds)
        return None

    def _fold_zeros(self, cam: CameraState, n: int) -> None:
        cam.baseline = 0.0 if cam.frames == 0 else cam.baseline * self.keep**n
        cam.frames += n

    def _add(self, cam: CameraState, detections: int, max_score: float) -> None:
        a = self.config.ewma_alpha
        cam.baseline = (float(detections) if cam.frames == 0
                        else cam.baseline + a * (detections - cam.baseline))
        cam.score_baseline = (max_score if cam.scored_frames == 0
                              else cam.score_baseline + a * (max_score - cam.score_baseline))
        cam.frames += 1
        cam.scored_frames += 1


class CameraTable:
    """The watched cameras, least recently seen first; label slots go to the first
    `camera_labels` cameras and free up when they are forgotten. `label_streams` False: the
    server's own stream ids ("stream-<n>", one per stream, never seen again once it ends) get
    no label of their own."""

    def __init__(self, config: AlertsConfig, label_streams: bool = True) -> None:
        self.config = config
        self.label_streams = label_streams
        self._cameras: OrderedDict[CameraKey, CameraState] = OrderedDict()
        self.labelled = 0

    def __len__(self) -> int:
        return len(self._cameras)

    def get(self, model: str, camera: str,
            now: float) -> tuple[CameraState, bool, list[CameraState]]:
        """The state of `camera` under `model`, whether it is new, and the cameras forgotten
        to make room or for idleness."""
        key = (model, camera)
        cam = self._cameras.get(key)
        gone = self._forget_idle(now, key)
        if cam is not None:
            self._cameras.move_to_end(key)
            return cam, False, gone
        if len(self._cameras) >= self.config.max_cameras:
            gone.append(self._drop(next(iter(self._cameras))))
        cam = CameraState(model, camera, self._take_label(camera), now)
        self._cameras[key] = cam
        return cam, True, gone

    def promote(self, cam: CameraState) -> bool:
        """Give `cam` its own label if it has none and a slot is free."""
        if cam.label != OTHER or self.labelled >= self.config.camera_labels:
            return False
        cam.label = self._take_label(cam.camera)
        return True

    def _take_label(self, camera: str) -> str:
        if not self.label_streams and camera.startswith(STREAM_PREFIX):
            return OTHER
        if self.labelled < self.config.camera_labels:
            self.labelled += 1
            return camera
        return OTHER

    def _forget_idle(self, now: float, keep: CameraKey) -> list[CameraState]:
        gone = []
        limit = now - self.config.forget_camera_s
        while self._cameras:
            key, oldest = next(iter(self._cameras.items()))
            if key == keep or oldest.last_seen >= limit:
                break
            gone.append(self._drop(key))
        return gone

    def _drop(self, key: CameraKey) -> CameraState:
        cam = self._cameras.pop(key)
        if cam.label != OTHER:
            self.labelled -= 1
        return cam
