"""`detserve-client stream` failures: one clear line and the documented exit code, from the
real command in a subprocess (so stderr holds everything a user would see), and the client's
own exception when a caller's frames fail mid-stream."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from detserve.client import DetectClient
from detserve.client.cli import main as client_main
from detserve.client.cli_output import EXIT_FAILED, EXIT_UNAVAILABLE, EXIT_USAGE

from .conftest import ThreadedServer, blocks_image

RED = 0


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "detserve.client.cli", *argv],
                          capture_output=True, text=True, timeout=60, check=False)


def test_missing_video_is_one_line_and_exit_2(server: ThreadedServer, tmp_path: Path) -> None:
    proc = run_cli("stream", str(tmp_path / "missing.mp4"), "--target", server.target)
    assert proc.returncode == EXIT_USAGE and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"error: video file not found: '{tmp_path / 'missing.mp4'}'"]


def test_a_file_that_is_no_video_is_one_line_and_exit_2(server: ThreadedServer,
                                                        tmp_path: Path) -> None:
    fake = tmp_path / "clip.mp4"
    fake.write_text("these are notes, not a video\n")  # FFmpeg: "moov atom not found"
    proc = run_cli("stream", str(fake), "--target", server.target)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == EXIT_USAGE and proc.stdout == ""
    assert len(lines) == 1 and lines[0].startswith("error: OpenCV cannot read")
    assert "UNKNOWN" not in lines[0] and str(fake) in lines[0]


def test_stream_without_server_is_exit_3(tmp_path: Path) -> None:
    proc = run_cli("stream", "--synthetic", "--frames", "2", "--width", "64", "--height", "64",
                   "--json", "--target", "127.0.0.1:1")
    assert proc.returncode == EXIT_UNAVAILABLE and proc.stderr == ""
    (line,) = [json.loads(x) for x in proc.stdout.strip().splitlines()]
    assert line["error"]["code"] == "UNAVAILABLE"
    assert "is the server running at 127.0.0.1:1?" in line["error"]["hint"]


def test_failed_frames_are_exit_1_and_counted(server: ThreadedServer,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # Class id 7 is out of range for the 3-class model: every frame is refused on its own.
    code = client_main(["stream", "--synthetic", "--frames", "3", "--width", "64", "--height",
                        "64", "--classes", "7", "--json", "--target", server.target])
    *frames, last = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert code == EXIT_FAILED
    assert [f["error"]["code"] for f in frames] == ["INVALID_ARGUMENT"] * 3
    summary = last["summary"]
    assert (summary["frames_sent"], summary["frames_answered"], summary["frames_failed"]) == (
        3, 0, 3)
    assert summary["latency_p50_ms"] is None


def test_text_summary_line(server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert client_main(["stream", "--synthetic", "--frames", "3", "--width", "64", "--height",
                        "64", "--target", server.target]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("stream: 3 frames sent, 3 answered, 0 dropped, 0 failed; ")
    assert "frames/s answered" in last and "latency p50 " in last and " p99 " in last


def test_a_failing_frame_source_raises_its_own_error(server: ThreadedServer) -> None:
    def frames() -> Iterator[npt.NDArray[np.uint8]]:
        yield np.ascontiguousarray(blocks_image(64, 64, [(0, 0, RED)])[:, :, ::-1])
        raise OSError("camera unplugged")

    results = []
    with DetectClient(server.target) as client, pytest.raises(OSError, match="unplugged"):
        for result in client.stream(frames()):
            results.append(result)
    assert [(r.frame_id, [d.label for d in r.detections]) for r in results] == [(1, ["red"])]


async def test_a_failing_frame_source_raises_its_own_error_async(server: ThreadedServer) -> None:
    from detserve.client import AsyncDetectClient

    def frames() -> Iterator[npt.NDArray[np.uint8]]:
        yield np.ascontiguousarray(blocks_image(64, 64, [(0, 0, RED)])[:, :, ::-1])
        raise OSError("camera unplugged")

    results = []
    async with AsyncDetectClient(server.target) as client:
        with pytest.raises(OSError, match="unplugged"):
            async for result in client.stream(frames()):
                results.append(result)
    assert [(r.frame_id, [d.label for d in r.detections]) for r in results] == [(1, ["red"])]
