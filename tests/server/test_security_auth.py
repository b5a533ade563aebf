"""Bearer-token auth over loopback: refusals, rotation, per-model scopes, open health."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from detserve.protos import detection_pb2 as pb
from detserve.server.tokens import fingerprint

from .conftest import WAIT_S, blocks_image, blocks_model, boxes_of, request_for, server_config

TOKEN = "tok-" + "a" * 28
OTHER = "tok-" + "b" * 28
NEW = "tok-" + "c" * 28
BLUE = blocks_image(64, 64, [(0, 32, 2)])
BLUE_BOXES = [("blue", 1.0, [0.0, 32.0, 32.0, 64.0])]


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def detect(run: Any, metadata: Sequence[tuple[str, str]] = (), model: str = ""
                 ) -> grpc.StatusCode | pb.DetectResponse:
    try:
        return await run.stub.Detect(request_for(BLUE, model=model), metadata=metadata,
                                     timeout=WAIT_S)
    except grpc.aio.AioRpcError as err:
        return err.code()


async def failure(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value


def refused(metrics: Any, reason: str) -> float:
    value = metrics.registry.get_sample_value("detserve_auth_refused_total", {"reason": reason})
    return value or 0.0


async def test_no_token_is_unauthenticated_and_a_valid_token_is_answered(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run = await start(server_config(blocks_model(tiny_package), auth_tokens=f"{TOKEN};{OTHER}"))
    err = await failure(run.stub.Detect(request_for(BLUE), timeout=WAIT_S))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "authorization: Bearer <token>" in (err.details() or "")
    reply = await detect(run, bearer(TOKEN))
    assert isinstance(reply, pb.DetectResponse) and boxes_of(reply) == BLUE_BOXES
    reply = await detect(run, bearer(OTHER))
    assert isinstance(reply, pb.DetectResponse) and boxes_of(reply) == BLUE_BOXES
    # A wrong token is named by its fingerprint only; a malformed header says what to send.
    wrong = "tok-" + "z" * 28
    err = await failure(run.stub.Detect(request_for(BLUE), metadata=bearer(wrong),
                                        timeout=WAIT_S))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert fingerprint(wrong) in (err.details() or "") and wrong not in (err.details() or "")
    err = await failure(run.stub.Detect(request_for(BLUE), metadata=(("authorization",
                                                                       f"Basic {TOKEN}"),),
                                        timeout=WAIT_S))
    assert "must read 'Bearer <token>'" in (err.details() or "")
    # Every Detector method is guarded, streams at their start.
    err = await failure(run.stub.ListModels(pb.ListModelsRequest(), timeout=WAIT_S))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    stream = run.stub.DetectStream(iter([request_for(BLUE, frame_id=1)]), timeout=WAIT_S)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stream:
            pass
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    stream = run.stub.DetectStream(iter([request_for(BLUE, frame_id=1)]), timeout=WAIT_S,
                                   metadata=bearer(TOKEN))
    assert [boxes_of(r) async for r in stream] == [BLUE_BOXES]
    metrics = run.server.observer.metrics
    assert (refused(metrics, "no_token"), refused(metrics, "bad_token")) == (3.0, 2.0)


async def test_health_is_open_and_reflection_needs_a_token(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run = await start(server_config(blocks_model(tiny_package), auth_tokens=TOKEN))
    health = health_pb2_grpc.HealthStub(run.channel)
    for service in ("", "detserve.v1.Detector"):
        reply = await health.Check(health_pb2.HealthCheckRequest(service=service),
                                   timeout=WAIT_S)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert await list_services(run.channel) is grpc.StatusCode.UNAUTHENTICATED
    assert "detserve.v1.Detector" in await list_services(run.channel, bearer(TOKEN))


async def test_reflection_can_be_turned_off(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run = await start(server_config(blocks_model(tiny_package), reflection=False))
    assert await list_services(run.channel) is grpc.StatusCode.UNIMPLEMENTED
    run = await start(server_config(blocks_model(tiny_package)))
    assert "detserve.v1.Detector" in await list_services(run.channel)


async def list_services(channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]] = ()
                        ) -> list[str] | grpc.StatusCode:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)

    async def ask() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
        yield reflection_pb2.ServerReflectionRequest(list_services="")

    try:
        async for reply in stub.ServerReflectionInfo(ask(), metadata=metadata, timeout=WAIT_S):
            return [s.name for s in reply.list_services_response.service]
    except grpc.aio.AioRpcError as err:
        return err.code()
    raise AssertionError("reflection answered nothing")


def write_tokens(path: Path, text: str, mtime_ns: int | None = None) -> None:
    """Replace the file as an operator's tooling would (write aside, rename over it)."""
    aside = path.with_suffix(".new")
    aside.write_text(text)
    os.replace(aside, path)
    if mtime_ns is not None:
        os.utime(path, ns=(mtime_ns, mtime_ns))


async def test_rotated_token_file_takes_effect_without_a_restart(
    start: Callable[..., Any], tiny_package: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    write_tokens(tokens, f"# camera fleet\n{TOKEN}\n")
    run = await start(server_config(blocks_model(tiny_package), auth_token_file=tokens))
    assert isinstance(await detect(run, bearer(TOKEN)), pb.DetectResponse)
    assert await detect(run, bearer(NEW)) is grpc.StatusCode.UNAUTHENTICATED
    before = tokens.stat().st_mtime_ns
    write_tokens(tokens, f"{NEW}\n", mtime_ns=before + 5_000_000_000)
    assert tokens.stat().st_mtime_ns != before  # the change the store looks for
    store = run.server.security.tokens
    assert store.check_now() is True
    assert store.check_now() is False  # unchanged since: not read again
    assert await detect(run, bearer(TOKEN)) is grpc.StatusCode.UNAUTHENTICATED
    reply = await detect(run, bearer(NEW))
    assert isinstance(reply, pb.DetectResponse) and boxes_of(reply) == BLUE_BOXES


async def test_a_broken_rotation_keeps_the_tokens_in_force(
    start: Callable[..., Any], tiny_package: Path, tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    write_tokens(tokens, f"{TOKEN}\n")
    run = await start(server_config(blocks_model(tiny_package), auth_token_file=tokens))
    store = run.server.security.tokens
    stamp = tokens.stat().st_mtime_ns
    write_tokens(tokens, f"{NEW} blocks extra-field\n", mtime_ns=stamp + 1_000_000_000)
    assert store.check_now() is False
    assert isinstance(await detect(run, bearer(TOKEN)), pb.DetectResponse)
    tokens.unlink()
    assert store.check_now() is False
    assert isinstance(await detect(run, bearer(TOKEN)), pb.DetectResponse)
    # Fixed: the next look reads it.
    write_tokens(tokens, f"{NEW}\n", mtime_ns=stamp + 2_000_000_000)
    assert store.check_now() is True
    assert isinstance(await detect(run, bearer(NEW)), pb.DetectResponse)


def two_models(package: Path, tokens: str) -> Any:
    return server_config(blocks_model(package), replace(blocks_model(package), variant="b"),
                         auth_tokens=tokens)


async def test_a_scoped_token_may_use_its_models_only(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run = await start(two_models(tiny_package, f"{TOKEN} blocks@b\n{OTHER} blocks"))
    scoped, by_name = bearer(TOKEN), bearer(OTHER)
    reply = await detect(run, scoped, model="blocks@b")
    assert isinstance(reply, pb.DetectResponse) and reply.model == "blocks@b"
    err = await failure(run.stub.Detect(request_for(BLUE), metadata=scoped, timeout=WAIT_S))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "the default model (blocks@64)" in (err.details() or "")
    assert "['blocks@b']" in (err.details() or "")
    # An unknown model is refused the same way: a scoped caller learns no other model's name.
    err = await failure(run.stub.Detect(request_for(BLUE, model="nope"), metadata=scoped,
                                        timeout=WAIT_S))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "blocks@64" not in (err.details() or "")
    err = await failure(run.stub.GetModelInfo(pb.GetModelInfoRequest(), metadata=scoped,
                                              timeout=WAIT_S))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    listing = await run.stub.ListModels(pb.ListModelsRequest(), metadata=scoped, timeout=WAIT_S)
    assert ([m.name for m in listing.models], listing.default_model) == (["blocks@b"], "")
    # A name in the scope allows every variant of it.
    for model in ("", "blocks", "blocks@64", "blocks@b"):
        assert isinstance(await detect(run, by_name, model=model), pb.DetectResponse)
    listing = await run.stub.ListModels(pb.ListModelsRequest(), metadata=by_name,
                                        timeout=WAIT_S)
    assert sorted(m.name for m in listing.models) == ["blocks@64", "blocks@b"]
    assert refused(run.server.observer.metrics, "scope") == 3.0


async def test_a_stream_frame_outside_the_scope_ends_the_stream_after_the_frames_before(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    run = await start(two_models(tiny_package, f"{TOKEN} blocks@b"))
    frames = [request_for(BLUE, frame_id=i, model=m)
              for i, m in ((1, "blocks@b"), (2, "blocks@b"), (3, "blocks@64"), (4, "blocks@b"))]
    stream = run.stub.DetectStream(iter(frames), metadata=bearer(TOKEN), timeout=WAIT_S)
    answered: list[int] = []
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for reply in stream:
            assert boxes_of(reply) == BLUE_BOXES
            answered.append(reply.frame_id)
    assert answered == [1, 2]
    assert info.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert (info.value.details() or "").startswith("frame 3: ")
