"""`detserve-client stream`: a video file or the synthetic camera over one DetectStream, paced
at --fps, with one reply line per frame and a summary at the end."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from detserve.client.cli_output import EXIT_FAILED, EXIT_OK, Output, UsageError
from detserve.client.client import DetectClient, DetectOptions
from detserve.client.images import PixelFormat, image_from_array, synthetic_camera, video_frames
from detserve.client.results import DetectError, DetectResult
from detserve.protos import detection_pb2 as pb

SYNTHETIC_FRAMES = 100  # --frames default for the synthetic camera; a video is sent whole


def open_frames(args: argparse.Namespace) -> tuple[Iterator[npt.NDArray[np.uint8]], PixelFormat]:
    """The frames to send and their pixel format; a video that cannot be read fails here, before
    the stream starts, with one line."""
    if args.frames is not None and args.frames < 1:
        raise UsageError(f"--frames must be >= 1, got {args.frames}")
    if args.synthetic:
        n = args.frames or SYNTHETIC_FRAMES
        return synthetic_camera(n, args.width, args.height, args.seed), "RGB8"
    # FFmpeg would print its own complaint ("moov atom not found") on stderr before ours.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        return video_frames(args.video, args.frames), "BGR8"  # OpenCV decodes to BGR
    except (FileNotFoundError, ValueError) as err:
        raise UsageError(str(err)) from None


@dataclass
class StreamTally:
    """What the summary reports, counted as frames go out and replies come back."""

    sent: int = 0
    answered: int = 0
    failed: int = 0
    dropped: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    last_reply: float | None = None

    def reply(self, result: DetectResult) -> None:
        self.last_reply = time.monotonic()
        self.dropped += result.dropped_frames
        if result.ok:
            self.answered += 1
            self.latencies_ms.append(result.latency_ms)
        else:
            self.failed += 1

    def to_json(self) -> dict[str, Any]:
        elapsed = (self.last_reply or time.monotonic()) - self.started
        lat = np.asarray(self.latencies_ms, np.float64)
        p50, p99 = (np.percentile(lat, [50, 99]).tolist() if lat.size else (None, None))
        return {
            "frames_sent": self.sent, "frames_answered": self.answered,
            "frames_failed": self.failed, "frames_dropped": self.dropped,
            "elapsed_s": round(elapsed, 3),
            "answered_fps": round(self.answered / elapsed, 2) if elapsed > 0 else 0.0,
            "latency_p50_ms": None if p50 is None else round(p50, 2),
            "latency_p99_ms": None if p99 is None else round(p99, 2),
        }

    def text(self) -> str:
        s = self.to_json()
        lat = ("no latency (nothing answered)" if s["latency_p50_ms"] is None else
               f"latency p50 {s['latency_p50_ms']:.1f} ms, p99 {s['latency_p99_ms']:.1f} ms")
        return (f"stream: {s['frames_sent']} frames sent, {s['frames_answered']} answered, "
                f"{s['frames_dropped']} dropped, {s['frames_failed']} failed; "
                f"{s['answered_fps']:.1f} frames/s answered over {s['elapsed_s']:.2f} s; {lat}")


def paced(frames: Iterator[npt.NDArray[np.uint8]], fps: float, fmt: PixelFormat,
          tally: StreamTally) -> Iterator[pb.Image]:
    """Frames as request images, each sent no earlier than its slot at `fps` (0 = at once)."""
    interval = 1.0 / fps if fps > 0 else 0.0
    start = time.monotonic()
    for i, frame in enumerate(frames):
        if interval:
            delay = start + i * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        tally.sent += 1
        yield image_from_array(frame, fmt)


def run_stream(client: DetectClient, args: argparse.Namespace, options: DetectOptions,
               frames: Iterator[npt.NDArray[np.uint8]], fmt: PixelFormat, out: Output) -> int:
    tally = StreamTally()
    replies = client.stream(paced(frames, args.fps, fmt, tally), options, policy=args.policy)
    try:
        for result in replies:
            tally.reply(result)
            out.result(result, f"frame {result.frame_id}")
    except DetectError:
        if tally.last_reply is not None:  # a stream that broke off says how far it got
            out.summary(tally.to_json(), tally.text())
        raise
    out.summary(tally.to_json(), tally.text())
    return EXIT_FAILED if tally.failed else EXIT_OK
