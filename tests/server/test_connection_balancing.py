"""Client-side balancing over replicas: round_robin over a static address list, connection age.

Real servers on loopback (the blocks model), one client channel; which replica answered is read
from each replica's own engine (`EngineRecorder.first.batches`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from detserve.client.client import AsyncDetectClient, channel_options
from detserve.server.config import ConfigError, load_config
from detserve.server.connection_age import connection_age_options

from .conftest import (
    WAIT_S,
    blocks_image,
    blocks_model,
    png,
    request_for,
    server_config,
    until,
)

GOOD_PNG = png(blocks_image(64, 64, [(32, 32, 1)]))


def test_connection_age_options_map_seconds_to_grpc_ms(tiny_package: Path) -> None:
    config = server_config(blocks_model(tiny_package), max_connection_age_s=30.0,
                           max_connection_age_grace_s=12.5)
    assert connection_age_options(config) == [
        ("grpc.max_connection_age_ms", 30_000), ("grpc.max_connection_age_grace_ms", 12_500)]
    assert connection_age_options(server_config(blocks_model(tiny_package))) == []


def test_connection_age_config_from_env_and_bad_value(tmp_path: Path, tiny_package: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"models: [{{package: {tiny_package}}}]\nmax_connection_age_s: 300\n")
    config = load_config(path, env={"DETSERVE_MAX_CONNECTION_AGE_GRACE_S": "20"})
    assert (config.max_connection_age_s, config.max_connection_age_grace_s) == (300.0, 20.0)
    with pytest.raises(ConfigError, match="'max_connection_age_s' must be a number >= 0"):
        load_config(path, overrides={"max_connection_age_s": -1})


def test_round_robin_option_sets_the_service_config() -> None:
    options = dict(channel_options(1024, "round_robin"))
    config = json.loads(options["grpc.service_config"])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert {n["method"] for n in method["name"]} == {"Detect", "ListModels", "GetModelInfo"}
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE", "CANCELLED"]
    assert "grpc.service_config" not in dict(channel_options(1024))


async def test_a_draining_replica_loses_no_calls(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    """A caller keeps going while one of two replicas drains and stops: the calls it refuses
    (UNAVAILABLE) are retried on the next pick, the other replica, and none fails. One caller:
    round robin then alternates strictly, so the retry's pick is the other replica (with
    concurrent callers a retry can hit the draining one again; see UNARY_RETRY_POLICY)."""
    replicas = [await start(server_config(blocks_model(tiny_package, max_batch_size=1)))
                for _ in range(2)]
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.server.port}" for r in replicas)
    draining, survivor = replicas[0], replicas[1]
    stopping = asyncio.Event()
    async with AsyncDetectClient(target, load_balancing="round_robin") as client:
        await client.wait_ready(WAIT_S)

        async def caller() -> int:
            sent = 0
            while not stopping.is_set() or sent < 40:
                reply = await client.detect(GOOD_PNG)  # raises on any failed call
                assert len(reply.detections) == 1
                sent += 1
            return sent

        calls = asyncio.create_task(caller())
        await until(lambda: draining.engines.first.images_run >= 5)
        stop = asyncio.create_task(draining.server.stop(grace_s=2.0))
        await until(lambda: draining.server.service.draining)
        at_drain = survivor.engines.first.images_run
        stopping.set()
        sent = await asyncio.wait_for(calls, WAIT_S)
        await stop
    assert sent >= 40
    assert survivor.engines.first.images_run > at_drain  # it took the calls after the drain


async def test_round_robin_spreads_calls_over_every_replica(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    replicas = [await start(server_config(blocks_model(tiny_package, max_batch_size=1)))
                for _ in range(3)]
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.server.port}" for r in replicas)
    async with AsyncDetectClient(target, load_balancing="round_robin") as client:
        await client.wait_ready(WAIT_S)
        for _ in range(30):  # one at a time: each call is its own pick
            await client.detect(GOOD_PNG)
    served = [r.engines.first.images_run for r in replicas]
    assert sum(served) == 30
    assert all(n >= 5 for n in served), served  # round robin: 10 each, give or take a reconnect


async def test_pick_first_sends_every_call_to_one_replica(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    replicas = [await start(server_config(blocks_model(tiny_package, max_batch_size=1)))
                for _ in range(2)]
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.server.port}" for r in replicas)
    async with AsyncDetectClient(target) as client:
        for _ in range(10):
            await client.detect(GOOD_PNG)
    assert sorted(r.engines.first.images_run for r in replicas) == [0, 10]


async def test_max_connection_age_closes_the_connection_and_calls_go_on(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    """The server sends GOAWAY once the connection is older than the age: the client's channel
    leaves READY (that is what makes it re-resolve), and the next call reconnects."""
    run = await start(server_config(blocks_model(tiny_package), max_connection_age_s=0.2,
                                    max_connection_age_grace_s=5.0))
    channel = run.channel
    await run.stub.Detect(_request(), timeout=WAIT_S)
    assert channel.get_state() == grpc.ChannelConnectivity.READY
    await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), WAIT_S)
    reply = await run.stub.Detect(_request(), timeout=WAIT_S)
    assert len(reply.detections) == 1
    assert run.engines.first.images_run == 2


def _request() -> Any:
    return request_for(blocks_image(64, 64, [(32, 32, 1)]))
