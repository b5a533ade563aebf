"""DetectClient, AsyncDetectClient and detserve-client against a real server (blocks model)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from detserve.client.cli import main as client_main
from detserve.client.client import AsyncDetectClient, DetectClient, DetectOptions
from detserve.client.results import DetectError

from .conftest import ThreadedServer, blocks_image, png_bytes

RED, GREEN, BLUE = 0, 1, 2


def _boxes(result: object) -> list[tuple[str, float, tuple[float, ...]]]:
    dets = result.detections  # type: ignore[attr-defined]
    return [(d.label, round(d.score, 3), d.bbox) for d in dets]


def test_sync_detect_from_path_bytes_and_array(server: ThreadedServer, tmp_path: Path) -> None:
    image = blocks_image(64, 64, [(0, 0, RED), (32, 32, BLUE)])
    path = tmp_path / "two.png"
    path.write_bytes(png_bytes(image))
    want = [("red", 1.0, (0.0, 0.0, 32.0, 32.0)), ("blue", 1.0, (32.0, 32.0, 64.0, 64.0))]
    with DetectClient(server.target, timeout_s=10) as client:
        client.wait_ready(10)
        from_path = client.detect(path, request_id="p", frame_id=3)
        from_bytes = client.detect(png_bytes(image))
        from_array = client.detect(image, DetectOptions(pixel_format="RGB8"))
        from_bgr = client.detect(np.ascontiguousarray(image[:, :, ::-1]))  # BGR: the default
        rgb_as_bgr = client.detect(image)  # an RGB array without pixel_format="RGB8"
    # The default is OpenCV's order, so an RGB array sent as it is has red and blue swapped.
    assert [d.label for d in rgb_as_bgr.detections] == ["blue", "red"]
    for result in (from_path, from_bytes, from_array, from_bgr):
        assert _boxes(result) == want
        assert result.model == "blocks@64" and result.batch_size >= 1
        assert result.executed_batch_size == result.batch_size  # ONNX Runtime never pads
        assert result.latency_ms > 0 and result.timing.inference_ms > 0
    assert (from_path.request_id, from_path.frame_id) == ("p", 3)
    assert [d.class_id for d in from_path.detections] == [RED, BLUE]


def test_options_filter_classes_and_thresholds(server: ThreadedServer) -> None:
    image = blocks_image(64, 64, [(0, 0, RED), (32, 32, BLUE)])
    with DetectClient(server.target) as client:
        only_blue = client.detect(image, DetectOptions(class_ids=(BLUE,)))
        one = client.detect(image, DetectOptions(max_detections=1))
    assert [d.label for d in only_blue.detections] == ["blue"]
    assert len(one.detections) == 1


def test_errors_carry_the_grpc_code(server: ThreadedServer) -> None:
    with DetectClient(server.target) as client:
        with pytest.raises(DetectError) as unknown:
            client.detect(blocks_image(64, 64, []), DetectOptions(model="nope"))
        with pytest.raises(DetectError) as garbage:
            client.detect(b"this is not an image")
        with pytest.raises(DetectError) as threshold:
            client.detect(blocks_image(64, 64, []), DetectOptions(score_threshold=1.5))
    assert unknown.value.code is grpc.StatusCode.NOT_FOUND and "nope" in unknown.value.details
    assert garbage.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert threshold.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "1.5" in threshold.value.details


def test_unreachable_server_is_unavailable() -> None:
    with DetectClient("127.0.0.1:1", timeout_s=2) as client, pytest.raises(DetectError) as err:
        client.detect(blocks_image(64, 64, []))
    assert err.value.code is grpc.StatusCode.UNAVAILABLE


def test_sync_stream_keeps_order_and_survives_a_bad_frame(server: ThreadedServer) -> None:
    frames: list[Any] = [blocks_image(64, 64, [(0, 0, GREEN)]), b"garbage",
                         blocks_image(64, 64, [(32, 0, RED)])[:, :, ::-1]]  # as BGR
    with DetectClient(server.target) as client:
        results = list(client.stream(frames, policy="block"))
    assert [r.frame_id for r in results] == [1, 2, 3]
    assert _boxes(results[0]) == [("green", 1.0, (0.0, 0.0, 32.0, 32.0))]
    assert results[1].error is not None
    assert results[1].error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert _boxes(results[2]) == [("red", 1.0, (32.0, 0.0, 64.0, 32.0))]
    assert all(r.latency_ms > 0 for r in results)


def test_models_listing(server: ThreadedServer) -> None:
    with DetectClient(server.target) as client:
        listing = client.list_models()
        info = client.model_info("blocks")
    assert listing.default_model == "blocks@64"
    assert [m.name for m in listing.models] == ["blocks@64"]
    assert info.classes == ("red", "green", "blue")
    assert (info.input_width, info.input_height) == (64, 64)
    assert info.batching.max_batch_size == 4 and info.is_default
    assert info.batching.max_queue_wait_ms == 5000.0


async def test_async_client(server: ThreadedServer) -> None:
    image = blocks_image(64, 64, [(32, 32, GREEN)])
    async with AsyncDetectClient(server.target) as client:
        await client.wait_ready(10)
        one = await client.detect(image)
        streamed = [r async for r in client.stream([image, image, image])]
        info = await client.model_info()
        with pytest.raises(DetectError) as err:
            await client.detect(image, DetectOptions(model="missing@1"))
    assert _boxes(one) == [("green", 1.0, (32.0, 32.0, 64.0, 64.0))]
    assert [r.frame_id for r in streamed] == [1, 2, 3]
    assert all(_boxes(r) == _boxes(one) for r in streamed)
    assert info.name == "blocks@64"
    assert err.value.code is grpc.StatusCode.NOT_FOUND


def test_cli_detect_json(server: ThreadedServer, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(png_bytes(blocks_image(64, 64, [(0, 32, BLUE)])))
    b.write_bytes(png_bytes(blocks_image(64, 64, [])))
    code = client_main(["detect", str(a), str(b), "--json", "--target", server.target])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["image"] == str(a)
    assert first["detections"] == [{"label": "blue", "class_id": 2, "score": 1.0,
                                    "bbox": [0.0, 32.0, 32.0, 64.0]}]
    assert first["latency_ms"] > 0 and first["model"] == "blocks@64"
    assert second["detections"] == []


def test_cli_detect_reports_bad_file(server: ThreadedServer, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    code = client_main(["detect", str(bad), str(tmp_path / "missing.png"),
                        "--target", server.target])
    err = capsys.readouterr().err
    assert code == 1
    assert "INVALID_ARGUMENT" in err and "missing.png" in err


def test_cli_models(server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    assert client_main(["models", "--json", "--target", server.target]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["default_model"] == "blocks@64"
    assert out["models"][0]["classes"] == ["red", "green", "blue"]
    assert out["models"][0]["batching"]["max_queue_wait_ms"] == 5000.0
    assert client_main(["models", "--target", server.target]) == 0
    assert "max_batch=4 max_queue_wait=5000ms" in capsys.readouterr().out


def test_cli_stream_synthetic(server: ThreadedServer, capsys: pytest.CaptureFixture[str]) -> None:
    code = client_main(["stream", "--synthetic", "--frames", "4", "--width", "96", "--height",
                        "64", "--fps", "50", "--json", "--target", server.target])
    *lines, last = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert code == 0
    assert [x["frame_id"] for x in lines] == [1, 2, 3, 4]
    assert all(x["image_size"] == [96, 64] and "error" not in x for x in lines)
    summary = last["summary"]
    assert (summary["frames_sent"], summary["frames_answered"]) == (4, 4)
    assert (summary["frames_dropped"], summary["frames_failed"]) == (0, 0)
    latencies = sorted(x["latency_ms"] for x in lines)
    assert latencies[0] <= summary["latency_p50_ms"] <= summary["latency_p99_ms"]
    assert summary["latency_p99_ms"] <= latencies[-1] + 0.01
    # Paced at 50 fps, 4 frames take at least 3 intervals (60 ms): no more than 4 / 0.06 s.
    assert 0 < summary["answered_fps"] <= 4 / 0.06


def test_cli_stream_video_file(server: ThreadedServer, tmp_path: Path,
                               capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), 10.0, (64, 64))
    frame = blocks_image(64, 64, [(0, 0, RED)])
    for _ in range(3):
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))  # VideoWriter takes BGR
    writer.release()
    code = client_main(["stream", str(path), "--json", "--target", server.target])
    *lines, last = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert code == 0 and len(lines) == 3
    assert last["summary"]["frames_answered"] == 3
    for line in lines:  # sent as BGR8 raw frames: the red block must stay red
        assert [d["label"] for d in line["detections"]] == ["red"]
        assert line["detections"][0]["bbox"] == [0.0, 0.0, 32.0, 32.0]
