"""A detserve server in a subprocess, one per sweep setting: generated YAML config, start, wait
for gRPC health SERVING, stop with SIGTERM (graceful drain), kill if it hangs."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

# Batching fields BatchSetting knows by name; any other key of a batching mapping is carried
# through unchanged (`extra`), so a field the server gains later needs no change here.
KNOWN_BATCHING = ("max_batch_size", "max_queue_delay_ms", "instances", "max_queue_size",
                  "preferred_batch_sizes", "max_queue_wait_ms")
_DEFAULTS: dict[str, Any] = {"max_batch_size": 8, "max_queue_delay_ms": 2.0, "instances": 1}


def _ms_tag(value: float) -> str:
    return f"{value:g}".replace(".", "p")


@dataclass(frozen=True)
class BatchSetting:
    max_batch_size: int
    max_queue_delay_ms: float
    instances: int
    max_queue_size: int = 256
    preferred_batch_sizes: tuple[int, ...] = ()
    # None: not emitted, so the YAML also suits a server that does not know the field.
    max_queue_wait_ms: float | None = None
    extra: tuple[tuple[str, Any], ...] = ()  # other batching keys, passed through as given

    @classmethod
    def from_yaml(cls, raw: Mapping[str, Any]) -> BatchSetting:
        """From a detserve-server `batching:` mapping; missing fields take the sweep defaults."""
        get = {**_DEFAULTS, **raw}
        wait = get.get("max_queue_wait_ms")
        return cls(
            max_batch_size=int(get["max_batch_size"]),
            max_queue_delay_ms=float(get["max_queue_delay_ms"]),
            instances=int(get["instances"]),
            max_queue_size=int(get.get("max_queue_size", 256)),
            preferred_batch_sizes=tuple(int(v) for v in get.get("preferred_batch_sizes") or ()),
            max_queue_wait_ms=None if wait is None else float(wait),
            extra=tuple((k, v) for k, v in raw.items() if k not in KNOWN_BATCHING),
        )

    @property
    def name(self) -> str:
        name = f"b{self.max_batch_size}_d{_ms_tag(self.max_queue_delay_ms)}ms_i{self.instances}"
        if self.max_queue_wait_ms is not None:
            name += f"_w{_ms_tag(self.max_queue_wait_ms)}ms"
        return name

    def to_yaml(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_batch_size": self.max_batch_size,
            "max_queue_delay_ms": self.max_queue_delay_ms,
            # The server refuses preferred sizes above max_batch_size.
            "preferred_batch_sizes": [b for b in self.preferred_batch_sizes
                                      if b <= self.max_batch_size],
            "max_queue_size": self.max_queue_size,
            "instances": self.instances,
        }
        if self.max_queue_wait_ms is not None:
            out["max_queue_wait_ms"] = self.max_queue_wait_ms
        out.update(dict(self.extra))
        return out


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_config(
    model: Mapping[str, Any], setting: BatchSetting, port: int,
    server: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A detserve-server YAML document serving `model` (a models[] entry) with `setting`."""
    doc: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": port,
        "metrics_port": None,
        "log_requests": False,  # a log line per request would cost the server CPU it needs
    }
    doc.update(dict(server or {}))
    entry = dict(model)
    entry["batching"] = setting.to_yaml()
    entry["default"] = True
    doc["models"] = [entry]
    doc["port"] = port
    return doc


async def wait_serving(target: str, timeout_s: float, proc: subprocess.Popen[bytes] | None = None,
                       log: Path | None = None) -> None:
    """Poll gRPC health (service "") until SERVING; fail early if the process exits."""
    deadline = time.monotonic() + timeout_s
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
                raise RuntimeError(f"server exited with code {proc.returncode} before serving:\n"
                                   f"{tail}")
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.aio.AioRpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server at {target} not SERVING after {timeout_s}s")
            await asyncio.sleep(0.2)


class ServerProcess:
    """`detserve-server --config <generated yaml>`; stderr/stdout go to `log_path`."""

    def __init__(self, config: Mapping[str, Any], workdir: Path, name: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / f"server-{name}.yaml"
        self.log_path = workdir / f"server-{name}.log"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.target = f"127.0.0.1:{config['port']}"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self, timeout_s: float = 120.0) -> None:
        cmd = [sys.executable, "-m", "detserve.server.cli", "--config", str(self.config_path)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            await wait_serving(self.target, timeout_s, self.proc, self.log_path)
        except BaseException:
            self.stop()
            raise

    def stop(self, grace_s: float = 15.0) -> int | None:
        """SIGTERM (the server drains), then SIGKILL after `grace_s`; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
