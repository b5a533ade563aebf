"""Rate limits over loopback: per peer without auth, per token with it, streams throttled.

Rates are tiny (one request per 100 s) where a test counts refusals, so no refill can happen
however slow the machine; the throttled stream checks a lower bound on time, which cannot
flake the other way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from detserve.protos import detection_pb2 as pb
from detserve.server.admission import PUSHBACK_KEY

from .conftest import WAIT_S, blocks_image, blocks_model, boxes_of, request_for, server_config

BLUE = blocks_image(64, 64, [(0, 32, 2)])
TOKEN = "tok-" + "a" * 28
OTHER = "tok-" + "b" * 28


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def detect(run: Any, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    try:
        await run.stub.Detect(request_for(BLUE), metadata=metadata, timeout=WAIT_S)
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


async def test_a_peer_over_its_rate_gets_resource_exhausted_with_a_retry_hint(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run = await start(server_config(blocks_model(tiny_package), rate_limit_rps=0.01,
                                    rate_limit_burst=2))
    assert [await detect(run), await detect(run)] == [grpc.StatusCode.OK] * 2
    call = run.stub.Detect(request_for(BLUE), timeout=WAIT_S)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    err = info.value
    assert err.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    details = err.details() or ""
    assert details.startswith("rate limit: client ipv4:127.0.0.1 is over 0.01 requests/s "
                              "(burst 2); retry in ")
    pushback = dict(err.trailing_metadata() or ())[PUSHBACK_KEY]
    # The next request refills in 100 s, less the moments the two calls took.
    assert 90_000 < int(pushback) <= 100_000
    assert f"retry in {pushback} ms" in details
    # The limit is per caller, not per method: ListModels shares the bucket.
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await run.stub.ListModels(pb.ListModelsRequest(), timeout=WAIT_S)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    reg = run.server.observer.metrics.registry
    assert reg.get_sample_value("detserve_rejected_total",
                                {"model": "blocks@64", "reason": "rate_limit"}) == 1.0
    assert reg.get_sample_value("detserve_rejected_total",
                                {"model": "unknown", "reason": "rate_limit"}) == 1.0
    assert reg.get_sample_value("detserve_requests_total",
                                {"model": "blocks@64", "code": "RESOURCE_EXHAUSTED"}) == 1.0


async def test_with_auth_each_token_has_its_own_bucket(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run = await start(server_config(blocks_model(tiny_package), auth_tokens=f"{TOKEN};{OTHER}",
                                    rate_limit_rps=0.01, rate_limit_burst=1))
    assert await detect(run, bearer(TOKEN)) is grpc.StatusCode.OK
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await run.stub.Detect(request_for(BLUE), metadata=bearer(TOKEN), timeout=WAIT_S)
    assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "rate limit: token " in (info.value.details() or "")
    assert TOKEN not in (info.value.details() or "")
    # The same peer with another token is not held back by the first token's use.
    assert await detect(run, bearer(OTHER)) is grpc.StatusCode.OK
    # No token at all is refused by auth before any rate limit is spent.
    assert await detect(run) is grpc.StatusCode.UNAUTHENTICATED


async def test_stream_frames_over_the_rate_wait_instead_of_failing(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    rate = 20.0
    run = await start(server_config(blocks_model(tiny_package), rate_limit_rps=rate,
                                    rate_limit_burst=1))
    frames = [request_for(BLUE, frame_id=i) for i in range(1, 5)]
    started = time.monotonic()
    replies = [r async for r in run.stub.DetectStream(iter(frames), timeout=WAIT_S)]
    elapsed = time.monotonic() - started
    assert [(r.frame_id, r.status.code) for r in replies] == [(1, 0), (2, 0), (3, 0), (4, 0)]
    assert all(boxes_of(r) == [("blue", 1.0, [0.0, 32.0, 32.0, 64.0])] for r in replies)
    # Frames 2-4 each waited for their turn: at least 3 / rate seconds in all.
    assert elapsed >= 3 / rate
