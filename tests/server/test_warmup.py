"""Every batch size an engine will run has run once before health first says SERVING.

The server binds its port and sets health only after the models are loaded and warmed, so the
first health answer a client can get comes after the warm-up: the tests ask health first, then
look at what the engines ran.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from detserve.engines.openvino import OpenVinoEngine
from detserve.server.app import start_server
from detserve.server.batcher import BatchingConfig
from detserve.server.config import ModelConfig

from .conftest import blocks_model, server_config


async def _health(port: int) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=""))
    return int(reply.status)


async def test_each_batch_size_the_batcher_forms_ran_before_serving(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    # Gates closed: only the warm-up runs may pass before a test opens them.
    config = server_config(blocks_model(tiny_package, max_batch_size=4, instances=2))
    run = await start(config, open_gate=False)
    assert await _health(run.server.port) == health_pb2.HealthCheckResponse.SERVING
    assert [e.warmed for e in run.engines.engines] == [[1, 2, 4], [1, 2, 4]]  # each instance
    assert [e.batches for e in run.engines.engines] == [[], []]  # no request batch ran yet
    assert run.server.registry.default.warmed_batch_sizes == (1, 2, 4)


async def test_openvino_runs_each_compiled_size_once_before_serving(tiny_package: Path) -> None:
    pytest.importorskip("openvino")
    # Costs given, so start-up measures nothing: every run counted below is the warm-up's.
    options = {"precision": "f32", "num_threads": 1, "static_batch_sizes": [1, 2, 4],
               "plan_costs_ms": {1: 1.0, 2: 1.5, 4: 2.5}}
    model = ModelConfig(package=tiny_package, engine="openvino", engine_options=options,
                        batching=BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0))
    server = await start_server(server_config(model))
    try:
        assert await _health(server.port) == health_pb2.HealthCheckResponse.SERVING
        (engine,) = server.registry.default.pool.engines
        assert isinstance(engine, OpenVinoEngine)
        assert engine.runs_by_size == {1: 1, 2: 1, 4: 1}
        assert server.registry.default.warmed_batch_sizes == (1, 2, 4)
    finally:
        await server.stop(grace_s=1.0)
