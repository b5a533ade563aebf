"""The server's tokens, scopes and rate limits hold on the Open Inference Protocol too, over
gRPC and REST; server liveness and readiness (gRPC ServerLive/ServerReady, REST /v2/health/*)
stay open for probes, as grpc.health.v1 does."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from detserve.protos import inference_pb2 as ip
from detserve.protos import inference_pb2_grpc as ip_grpc

from ..conftest import blocks_model, server_config
from .conftest import scene_png

TOKEN = "tok-" + "a" * 28
SCOPED = "tok-" + "s" * 28  # may use model "other" only


def request() -> ip.ModelInferRequest:
    message = ip.ModelInferRequest(model_name="blocks")
    message.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        scene_png())
    return message


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_tokens_and_scopes_over_grpc_and_rest(start: Callable[..., Any],
                                                    tiny_package: Path) -> None:
    run = await start(server_config(blocks_model(tiny_package), rest_port=0, log_requests=False,
                                    auth_tokens=f"{TOKEN};{SCOPED} other"))
    stub = ip_grpc.GRPCInferenceServiceStub(run.channel)  # type: ignore[no-untyped-call]
    assert await code_of(stub.ModelInfer(request())) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(stub.ModelInfer(request(), metadata=bearer(TOKEN))) == (
        grpc.StatusCode.OK)
    for call in (stub.ModelInfer(request(), metadata=bearer(SCOPED)),
                 stub.ModelConfig(ip.ModelConfigRequest(name="blocks"), metadata=bearer(SCOPED))):
        assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED
    stats = await stub.ModelStatistics(ip.ModelStatisticsRequest(), metadata=bearer(SCOPED))
    assert not stats.model_stats  # out of scope: not listed
    url = f"http://127.0.0.1:{run.server.oip.rest_port}/v2"
    body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                        "data": ["aW1hZ2U="]}]}
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/health/ready") as reply:
            assert reply.status == 200  # probes need no token
        async with session.get(f"{url}/models/blocks") as reply:
            assert reply.status == 401
            assert "Bearer <token>" in (await reply.json())["error"]
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with session.get(f"{url}/models/blocks/config", headers=auth) as reply:
            assert reply.status == 200
        scoped = {"Authorization": f"Bearer {SCOPED}"}
        async with session.post(f"{url}/models/blocks/infer", json=body,
                                headers=scoped) as reply:
            assert reply.status == 403


async def test_liveness_and_readiness_need_no_token_model_calls_do(
        start: Callable[..., Any], tiny_package: Path) -> None:
    run = await start(server_config(blocks_model(tiny_package), rest_port=0, log_requests=False,
                                    auth_tokens=TOKEN))
    stub = ip_grpc.GRPCInferenceServiceStub(run.channel)  # type: ignore[no-untyped-call]
    assert (await stub.ServerLive(ip.ServerLiveRequest())).live
    assert (await stub.ServerReady(ip.ServerReadyRequest())).ready
    for call in (stub.ModelReady(ip.ModelReadyRequest(name="blocks")),
                 stub.ServerMetadata(ip.ServerMetadataRequest()),
                 stub.ModelMetadata(ip.ModelMetadataRequest(name="blocks")),
                 stub.ModelInfer(request())):
        assert await code_of(call) == grpc.StatusCode.UNAUTHENTICATED
    assert (await stub.ModelReady(ip.ModelReadyRequest(name="blocks"),
                                  metadata=bearer(TOKEN))).ready
    url = f"http://127.0.0.1:{run.server.oip.rest_port}/v2"
    async with aiohttp.ClientSession() as session:
        for path, body in (("/health/live", {"live": True}), ("/health/ready", {"ready": True})):
            async with session.get(url + path) as reply:
                assert (reply.status, await reply.json()) == (200, body), path
        for path in ("", "/models/blocks", "/models/blocks/ready"):
            async with session.get(url + path) as reply:
                assert reply.status == 401, path


@pytest.mark.parametrize("transport", ["grpc", "rest"])
async def test_rate_limits_refuse_with_a_retry_time(start: Callable[..., Any],
                                                    tiny_package: Path, transport: str) -> None:
    run = await start(server_config(blocks_model(tiny_package), rest_port=0, log_requests=False,
                                    rate_limit_rps=0.01, rate_limit_burst=1))
    if transport == "grpc":
        stub = ip_grpc.GRPCInferenceServiceStub(run.channel)  # type: ignore[no-untyped-call]
        assert await code_of(stub.ModelInfer(request())) == grpc.StatusCode.OK
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.ModelInfer(request())
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "retry in" in (info.value.details() or "")
        return
    url = f"http://127.0.0.1:{run.server.oip.rest_port}/v2/models/blocks/infer"
    body = {"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(scene_png()).decode()]}]}
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as reply:
            assert reply.status == 200
        async with session.post(url, json=body) as reply:
            assert reply.status == 429 and int(reply.headers["Retry-After"]) >= 1
            assert "rate limit" in (await reply.json())["error"]
