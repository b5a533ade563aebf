"""Issue 14: log lines are written off the event loop. A server process whose stderr is a pipe
nobody reads (its 64 KB buffer fills after a few dozen request lines) keeps answering promptly;
the lines come out once the pipe is read again, and the process exits 0 on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detserve.protos import detection_pb2_grpc as pb_grpc

from .conftest import WAIT_S, blocks_image, boxes_of, request_for

GOOD = blocks_image(64, 64, [(0, 32, 2)])
GOOD_BOXES = [("blue", 1.0, [0.0, 32.0, 32.0, 64.0])]
CALLS = 300  # x ~1.6 KB lines: several times what a pipe buffers


def _listening(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("event") == "listening":
            return record
    raise AssertionError(f"no listening line; stderr: {''.join(seen)}")


def test_a_blocked_stderr_pipe_does_not_block_requests(tiny_package: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "detserve.server.cli", "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "off", "--model", str(tiny_package), "--drain-grace-s", "5"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    try:
        address = _listening(proc)["address"]
        # From here on nobody reads the pipe until every call is answered.
        slowest = 0.0
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            for i in range(CALLS):
                started = time.monotonic()
                reply = stub.Detect(request_for(GOOD, request_id=f"{i:04d}" + "x" * 1000),
                                    timeout=WAIT_S)
                slowest = max(slowest, time.monotonic() - started)
                assert boxes_of(reply) == GOOD_BOXES
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        assert slowest < 2.0, slowest
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    lines = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    ids = [line["request_id"][:4] for line in lines if line.get("event") == "request"]
    assert ids == [f"{i:04d}" for i in range(CALLS)]  # none lost, in order
    assert [line["event"] for line in lines[-2:]] == ["draining", "stopped"]
