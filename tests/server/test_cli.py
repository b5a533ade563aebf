"""`detserve-server` as a process: serves, logs JSON, exposes metrics, drains on SIGTERM."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path
from typing import IO, Any

import grpc

from detserve.protos import detection_pb2_grpc as pb_grpc

from .conftest import WAIT_S, blocks_image, boxes_of, request_for


def _lines(stream: IO[str], into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _wait_for_event(lines: queue.Queue[str], event: str, seen: list[dict[str, Any]]) -> dict[
        str, Any]:
    while True:
        line = lines.get(timeout=WAIT_S * 3)
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(record, dict):
            continue
        seen.append(record)
        if record.get("event") == event:
            return record


def test_process_serves_then_drains_on_sigterm(tmp_path: Path, tiny_package: Path) -> None:
    config = tmp_path / "server.yaml"
    config.write_text(f"""
host: 127.0.0.1
port: 0
metrics_port: 0
models:
  - package: {tiny_package}
    engine_options: {{intra_op_threads: 1}}
  - package: {tiny_package}
    variant: ov
    engine: openvino
    engine_options: {{num_threads: 1, precision: f32}}
""")
    proc = subprocess.Popen(
        [sys.executable, "-m", "detserve.server.cli", "--config", str(config)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stderr is not None
    threading.Thread(target=_lines, args=(proc.stderr, lines), daemon=True).start()
    seen: list[dict[str, Any]] = []
    try:
        listening = _wait_for_event(lines, "listening", seen)
        assert listening["models"] == ["blocks@64", "blocks@ov"]
        assert listening["default_model"] == "blocks@64"
        # Start-up's objects are out of the collector's reach (server/app.py, `serve`).
        assert listening["gc_frozen_objects"] > 10_000
        # Which engine serves each model, the precision it runs at and where NMS runs.
        assert listening["serving"] == {
            "blocks@64": {"engine": "onnxruntime", "precision": "fp32", "nms": "host"},
            "blocks@ov": {"engine": "openvino", "precision": "fp32", "nms": "host"},
        }
        with grpc.insecure_channel(listening["address"]) as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            image = blocks_image(64, 64, [(0, 32, 2)])
            reply = stub.Detect(request_for(image, request_id="cli-1"), timeout=WAIT_S)
        assert boxes_of(reply) == [("blue", 1.0, [0.0, 32.0, 32.0, 64.0])]
        request_line = _wait_for_event(lines, "request", seen)
        assert {k: request_line[k] for k in ("rpc", "request_id", "model", "status", "batch_size",
                                               "detections", "max_score", "input_width")} == {
            "rpc": "Detect", "request_id": "cli-1", "model": "blocks@64", "status": "OK",
            "batch_size": 1, "detections": 1, "max_score": 1.0, "input_width": 64}
        assert request_line["peer"].startswith("ipv4:127.0.0.1:")
        assert request_line["total_ms"] >= request_line["inference_ms"] > 0
        url = f"http://127.0.0.1:{listening['metrics_port']}/metrics"
        with urllib.request.urlopen(url, timeout=WAIT_S) as response:
            metrics = response.read().decode()
        assert 'detserve_requests_total{code="OK",model="blocks@64"} 1.0' in metrics
        assert 'detserve_batch_size_count{model="blocks@64"} 1.0' in metrics
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S * 3) == 0
        _wait_for_event(lines, "stopped", seen)
        # Each model ran its batch sizes once before the server listened (and said SERVING).
        assert [r["event"] for r in seen if r["event"] != "request"] == [
            "warmed_up", "warmed_up", "listening", "draining", "stopped"]
        assert [r["batch_sizes"] for r in seen if r["event"] == "warmed_up"] == [
            [1, 2, 4, 8], [1, 2, 4, 8]]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_config_exits_2_naming_the_problem(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "detserve.server.cli", "--config", str(missing)],
        capture_output=True, text=True, timeout=WAIT_S * 3,
    )
    assert done.returncode == 2
    assert f"config file '{missing}' does not exist" in done.stderr


def test_model_flag_needs_an_existing_package(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "detserve.server.cli", "--model", f"x@1={tmp_path}", "--port", "0"],
        capture_output=True, text=True, timeout=WAIT_S * 3,
    )
    assert done.returncode == 2
    assert "models[0].package" in done.stderr and "no manifest.yaml" in done.stderr
