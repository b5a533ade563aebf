"""A user's own fixed-batch export serves from `detserve-server --model NAME=PKG` alone.

`yolo export format=onnx` writes a graph whose batch is fixed at 1. Here the project's own
detector is exported the same way (static batch 1, Ultralytics metadata), imported with
`detserve-model import`, and served by the real server process on loopback: batching is limited
to what the model takes, with one log line saying so, and the answer equals the engine's own.
"""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

import grpc
import numpy as np
import pytest

from detserve.engines.factory import create_engine
from detserve.engines.manifest import load_package
from detserve.engines.pipeline import detect_images
from detserve.models.cli import main as model_main
from detserve.models.scenes import render_scene, split_seeds
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc

from ..models.detector_packages import export_detector_onnx
from .conftest import WAIT_S, png

pytest.importorskip("torch")  # the export needs it; serving does not

ULTRALYTICS_META = {"names": "{0: 'fall', 1: 'sit', 2: 'stand'}", "version": "8.3.40",
                    "task": "detect", "imgsz": "[96, 96]", "batch": "1"}


@pytest.fixture(scope="module")
def static_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static")
    onnx_path = export_detector_onnx(root / "best.onnx", size=96, dynamic="none",
                                     metadata=ULTRALYTICS_META)
    out = root / "fall_pkg"
    # A low threshold, so the comparison below has detections to compare.
    assert model_main(["import", str(onnx_path), "--out", str(out),
                       "--score-threshold", "0.05"]) == 0
    return out


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _events_until(lines: queue.Queue[str], event: str) -> list[dict[str, Any]]:
    seen = []
    while True:
        line = lines.get(timeout=WAIT_S * 6)
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            seen.append(record)
            if record.get("event") == event:
                return seen


def test_static_batch_export_serves_from_the_model_flag_alone(static_package: Path) -> None:
    manifest = load_package(static_package).manifest
    assert manifest.max_batch_size == 1 and manifest.metadata["import"]["batch"] == "fixed at 1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "detserve.server.cli", "--model", f"fall={static_package}",
         "--host", "127.0.0.1", "--port", "0", "--metrics-port", "off"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    try:
        seen = _events_until(lines, "listening")
        limited = [r for r in seen if r.get("event") == "batching_limited"]
        assert len(limited) == 1 and limited[0]["max_batch_size"] == 1
        assert "at most 1" in limited[0]["message"] and "default 8" in limited[0]["message"]
        assert seen[-1]["serving"] == {"fall@96": {"engine": "onnxruntime", "precision": "fp32",
                                                   "nms": "host"}}
        image = render_scene(split_seeds("val", 1)[0], 128, 96).image
        with grpc.insecure_channel(seen[-1]["address"]) as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            info = stub.GetModelInfo(pb.GetModelInfoRequest(model="fall"), timeout=WAIT_S)
            reply = stub.Detect(pb.DetectRequest(image=pb.Image(encoded=png(image))),
                                timeout=WAIT_S)
        assert info.batching.max_batch_size == 1
        assert list(info.classes) == ["fall", "sit", "stand"]
        engine = create_engine(load_package(static_package))
        (expected,) = detect_images(engine, [image])
        engine.close()
        assert len(reply.detections) == len(expected.scores) > 0
        got = np.array([[d.box.x1, d.box.y1, d.box.x2, d.box.y2] for d in reply.detections])
        np.testing.assert_allclose(got, expected.boxes, atol=1e-3)
        np.testing.assert_allclose([d.score for d in reply.detections], expected.scores,
                                   atol=1e-5)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S * 3) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_chosen_batch_size_the_model_cannot_take_is_one_line(static_package: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "detserve.server.cli", "--model", str(static_package),
         "--max-batch-size", "4", "--host", "127.0.0.1", "--port", "0", "--metrics-port", "off"],
        capture_output=True, text=True, timeout=WAIT_S * 6,
    )
    assert done.returncode == 2
    err = [ln for ln in done.stderr.splitlines() if ln.startswith("detserve-server")]
    assert len(err) == 1
    assert "'models[0].batching.max_batch_size' is 4, above the model's input.max_batch_size " \
           "1" in err[0]
