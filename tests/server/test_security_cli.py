"""`detserve-server` with TLS and a token file, as a process: what it serves, what it logs.

Its real stderr is read whole after a SIGTERM drain: the tokens, good and bad, never appear in
it; their fingerprints do.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.tokens import fingerprint

from .certs import make_pki
from .conftest import WAIT_S, blocks_image, boxes_of, request_for

TOKEN = "tok-" + "a" * 28
WRONG = "tok-" + "w" * 28


def _first_event(proc: subprocess.Popen[str], event: str, seen: list[str]) -> dict[str, Any]:
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        record = json.loads(line) if line.startswith("{") else {}
        if record.get("event") == event:
            return record
    raise AssertionError(f"no {event!r} line; stderr: {''.join(seen)}")


def test_tls_and_token_server_process_never_logs_a_token(
    tmp_path: Path, tiny_package: Path
) -> None:
    pki = make_pki(tmp_path / "pki")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{TOKEN}\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "detserve.server.cli", "--host", "127.0.0.1", "--port", "0",
         "--metrics-port", "off", "--model", str(tiny_package),
         "--tls-cert-file", str(pki.server_cert), "--tls-key-file", str(pki.server_key),
         "--auth-token-file", str(tokens), "--rate-limit-rps", "100"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )
    seen: list[str] = []
    try:
        loaded = _first_event(proc, "auth_tokens_loaded", seen)
        assert loaded["fingerprints"] == [fingerprint(TOKEN)]
        listening = _first_event(proc, "listening", seen)
        assert listening["security"] == {"tls": "on", "auth": f"1 token from {tokens}",
                                         "rate_limit_rps": 100.0, "reflection": True}
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca.read_bytes())
        with grpc.secure_channel(listening["address"], creds) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            status = health.Check(health_pb2.HealthCheckRequest(), timeout=WAIT_S).status
            assert status == health_pb2.HealthCheckResponse.SERVING
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            image = request_for(blocks_image(64, 64, [(0, 32, 2)]))
            reply = stub.Detect(image, metadata=(("authorization", f"Bearer {TOKEN}"),),
                                timeout=WAIT_S)
            assert boxes_of(reply) == [("blue", 1.0, [0.0, 32.0, 32.0, 64.0])]
            try:
                stub.Detect(image, metadata=(("authorization", f"Bearer {WRONG}"),),
                            timeout=WAIT_S)
                raise AssertionError("a wrong token was answered")
            except grpc.RpcError as err:
                assert err.code() is grpc.StatusCode.UNAUTHENTICATED
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=WAIT_S * 3) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.stderr is not None
    log = "".join(seen) + proc.stderr.read()
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    refusal = next(r for r in records if r.get("event") == "refused")
    assert (refusal["status"], refusal["reason"], refusal["rpc"]) == (
        "UNAUTHENTICATED", "bad_token", "Detect")
    assert fingerprint(WRONG) in refusal["message"]
    assert any(r.get("event") == "stopped" for r in records)
    assert TOKEN not in log and WRONG not in log
