"""What a server exposes: /metrics binds the gRPC host only, on IPv4 and IPv6 alike."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import blocks_model, server_config


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def metrics_address(run: Any) -> str:
    http = run.server.observer.metrics._http
    assert http is not None
    return str(http.server.server_address[0])


async def test_metrics_bind_the_grpc_host_not_every_interface(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run = await start(server_config(blocks_model(tiny_package), metrics_port=0))
    assert metrics_address(run) == "127.0.0.1"
    url = f"http://127.0.0.1:{run.server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as reply:
        assert b"detserve_requests_total" in reply.read()


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
async def test_an_ipv6_host_in_grpc_brackets_binds_metrics_there_too(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run = await start(server_config(blocks_model(tiny_package), host="[::1]", metrics_port=0))
    assert metrics_address(run) == "::1"
    with urllib.request.urlopen(f"http://[::1]:{run.server.metrics_port}/metrics",
                                timeout=10) as reply:
        assert reply.status == 200
