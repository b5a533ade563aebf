"""Admission before decode, on a real server over loopback: every bound is checked when the call
arrives, the decode counter proves no refused or expired request was decoded, the pixel budget
holds, and padding shows in the executed batch size. Gated with events, never sleeps."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from detserve.client.results import retry_after_s
from detserve.protos import detection_pb2 as pb
from detserve.server.app import Server, start_server
from detserve.server.batcher import DeadlineExpiredError
from detserve.server.config import ModelConfig
from detserve.server.decode_pool import DecodeOutcome, DecodePool

from .conftest import (
    WAIT_S,
    Running,
    blocks_image,
    blocks_model,
    boxes_of,
    request_for,
    server_config,
    until,
)

GOOD = blocks_image(64, 64, [(32, 32, 1)])
GOOD_BOXES = [("green", 1.0, [32.0, 32.0, 64.0, 64.0])]
MODEL = "blocks@64"


def metric(server: Server, name: str, **labels: str) -> float:
    """A sample of the server's own Prometheus registry (0 when the series does not exist)."""
    text = server.observer.metrics.render().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def decodes(server: Server) -> float:
    return metric(server, "detserve_decodes_total", model=MODEL)


async def _busy_engine(start: Callable[..., Any], model: ModelConfig,
                       **fields: Any) -> tuple[Running, asyncio.Future[pb.DetectResponse]]:
    """A server whose only engine is held (gated) by a first request."""
    run: Running = await start(server_config(model, **fields), open_gate=False)
    first = asyncio.ensure_future(run.stub.Detect(request_for(GOOD, frame_id=1)))
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    return run, first


class DecodeBlocker:
    """Occupies every decode thread of a real server's pool until `release()`."""

    def __init__(self, server: Server, threads: int) -> None:
        self.gate = threading.Event()
        self.entered = threading.Semaphore(0)
        pool = server.core.decoder._executor
        for _ in range(threads):
            pool.submit(self._hold)
        for _ in range(threads):
            assert self.entered.acquire(timeout=WAIT_S)

    def _hold(self) -> None:
        self.entered.release()
        self.gate.wait(WAIT_S)

    def release(self) -> None:
        self.gate.set()


async def test_full_queue_is_refused_before_decode(start: Callable[..., Any],
                                                   tiny_package: Path) -> None:
    model = blocks_model(tiny_package, max_batch_size=1, max_queue_size=1)
    run, first = await _busy_engine(start, model)
    second = asyncio.ensure_future(run.stub.Detect(request_for(GOOD, frame_id=2)))
    await until(lambda: run.server.registry.default.batcher.queue_depth() == 1)
    assert decodes(run.server) == 0  # metrics are written when a request ends
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD, frame_id=3), timeout=WAIT_S / 2)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "1 requests waiting, its batching.max_queue_size" in (err.value.details() or "")
    assert metric(run.server, "detserve_rejected_total", model=MODEL, reason="queue_full") == 1
    run.engines.first.gate.set()
    assert [(await t).frame_id for t in (first, second)] == [1, 2]
    assert decodes(run.server) == 2  # the refused third was never decoded


async def test_expected_wait_above_the_bound_is_refused_at_once(
        start: Callable[..., Any], tiny_package: Path) -> None:
    model = blocks_model(tiny_package, max_batch_size=1, max_queue_wait_s=0.1)
    run, first = await _busy_engine(start, model)
    # As measured by a slow engine: a batch takes 5 s, and one has just begun.
    run.server.registry.default.admission.times.observe_batch(1, 5.0)
    began = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD, frame_id=2), timeout=WAIT_S)
    refused_in_s = time.monotonic() - began
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    found = re.search(r"expects a (\d+) ms wait \(0 requests waiting\), above "
                      r"batching.max_queue_wait_ms 100;", err.value.details() or "")
    assert found and 4000 < int(found[1]) <= 5000  # what is left of the running batch
    assert refused_in_s < WAIT_S / 4  # answered without waiting for the held engine
    # The retry hint gRPC's retry policy honours: once the excess wait has drained.
    assert dict(err.value.trailing_metadata() or ())["grpc-retry-pushback-ms"] == "5000"
    assert retry_after_s(err.value) == 5.0
    assert metric(run.server, "detserve_rejected_total", model=MODEL, reason="queue_wait") == 1
    run.engines.first.gate.set()
    assert boxes_of(await first) == GOOD_BOXES
    assert decodes(run.server) == 1


async def test_a_deadline_that_cannot_be_met_is_refused_before_decode(
        start: Callable[..., Any], tiny_package: Path) -> None:
    run, first = await _busy_engine(start, blocks_model(tiny_package, max_batch_size=1))
    run.server.registry.default.admission.times.observe_batch(1, 5.0)
    with pytest.raises(grpc.aio.AioRpcError) as err:  # ~5 s wait + 5 s run > 0.9 s left
        await run.stub.Detect(request_for(GOOD, frame_id=2), timeout=0.9)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    found = re.search(r"deadline cannot be met: \d+ ms left, model blocks@64 expects (\d+) ms "
                      r"to answer", err.value.details() or "")
    assert found and 9000 < int(found[1]) <= 10000
    assert metric(run.server, "detserve_rejected_total", model=MODEL, reason="deadline") == 1
    run.engines.first.gate.set()
    await first
    assert decodes(run.server) == 1


async def test_a_request_that_expires_waiting_for_decode_is_never_decoded(
        start: Callable[..., Any], tiny_package: Path) -> None:
    run: Running = await start(server_config(blocks_model(tiny_package), decode_threads=1))
    blocker = DecodeBlocker(run.server, 1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD), timeout=0.3)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    blocker.release()
    assert boxes_of(await run.stub.Detect(request_for(GOOD), timeout=WAIT_S)) == GOOD_BOXES
    assert decodes(run.server) == 1  # only the second request
    assert run.server.registry.default.admission.held == 0
    assert run.server.core.lane.pixels.in_use == 0


async def test_decode_pool_skips_work_whose_deadline_passed_while_queued() -> None:
    pool = DecodePool(1)
    calls: list[int] = []
    done = asyncio.Event()
    outcome = DecodeOutcome()
    try:
        with pytest.raises(DeadlineExpiredError, match="the image was not decoded"):
            await pool.run(lambda: calls.append(1), time.monotonic(), outcome, done.set)
        await asyncio.wait_for(done.wait(), WAIT_S)
        assert calls == [] and outcome.skipped_expired and not outcome.decoded
        fresh = DecodeOutcome()
        assert await pool.run(lambda: 7, time.monotonic() + WAIT_S, fresh, lambda: None) == 7
        assert fresh.decoded and not fresh.after_deadline
        # Time left, but less than a decode takes: skipped, not decoded for nobody.
        short = DecodeOutcome()
        with pytest.raises(DeadlineExpiredError, match=r"a decode takes 60000\.0 ms"):
            await pool.run(lambda: calls.append(2), time.monotonic() + WAIT_S, short,
                           lambda: None, expected_s=60.0)
        assert calls == [] and short.skipped_expired and not short.decoded
    finally:
        pool.close()


async def test_pixel_budget_holds_and_refuses_at_once(start: Callable[..., Any],
                                                      tiny_package: Path) -> None:
    side = 64 * 64
    config = server_config(blocks_model(tiny_package), decode_threads=1,
                           max_pixels=side, max_pixels_in_flight=2 * side)
    run: Running = await start(config)
    blocker = DecodeBlocker(run.server, 1)
    held = [asyncio.ensure_future(run.stub.Detect(request_for(GOOD, frame_id=i)))
            for i in (1, 2)]
    budget = run.server.core.lane.pixels
    await until(lambda: budget.in_use == 2 * side)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD, frame_id=3), timeout=WAIT_S / 2)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"would pass max_pixels_in_flight {2 * side}" in (err.value.details() or "")
    assert budget.in_use == 2 * side  # the refusal reserved nothing
    assert metric(run.server, "detserve_rejected_total", model=MODEL, reason="pixel_budget") == 1
    blocker.release()
    assert [(await t).frame_id for t in held] == [1, 2]
    assert budget.in_use == 0 and decodes(run.server) == 2


async def test_grpc_limits_concurrent_calls_with_resource_exhausted(
        start: Callable[..., Any], tiny_package: Path) -> None:
    run, first = await _busy_engine(start, blocks_model(tiny_package, max_batch_size=1),
                                    max_concurrent_rpcs=1)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(GOOD, frame_id=2), timeout=WAIT_S / 2)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    run.engines.first.gate.set()
    assert (await first).frame_id == 1


async def test_executed_batch_size_shows_padding(tiny_package: Path) -> None:
    pytest.importorskip("openvino")
    model = replace(blocks_model(tiny_package), engine="openvino",
                    engine_options={"num_threads": 1, "static_batch_sizes": [4]})
    server = await start_server(server_config(model))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        from detserve.protos import detection_pb2_grpc as pb_grpc

        stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
        reply = await stub.Detect(request_for(GOOD), timeout=WAIT_S)
        assert boxes_of(reply) == GOOD_BOXES
        assert (reply.batch_size, reply.executed_batch_size) == (1, 4)
        assert metric(server, "detserve_batch_size_sum", model=MODEL) == 1
        assert metric(server, "detserve_executed_batch_size_sum", model=MODEL) == 4
    finally:
        await channel.close()
        await server.stop(grace_s=1.0)


async def test_adaptive_window_does_not_make_a_lone_caller_wait(start: Callable[..., Any],
                                                                tiny_package: Path) -> None:
    # A fixed 30 s window would hold this request for 30 s; nobody else is decoding, so the
    # adaptive window runs it at once.
    run: Running = await start(server_config(
        blocks_model(tiny_package, max_batch_size=4, max_queue_delay_s=30.0)))
    reply = await run.stub.Detect(request_for(GOOD), timeout=WAIT_S / 2)
    assert (reply.batch_size, boxes_of(reply)) == (1, GOOD_BOXES)


async def test_adaptive_window_waits_for_requests_still_decoding(start: Callable[..., Any],
                                                                 tiny_package: Path) -> None:
    run: Running = await start(server_config(
        blocks_model(tiny_package, max_batch_size=2, max_queue_delay_s=30.0), decode_threads=1))
    blocker = DecodeBlocker(run.server, 1)
    calls = [asyncio.ensure_future(run.stub.Detect(request_for(GOOD, frame_id=i),
                                                   timeout=WAIT_S)) for i in (1, 2)]
    await until(lambda: run.server.registry.default.admission.decoding == 2)
    blocker.release()  # the first is queued while the second decodes: it waits for it
    replies = [await c for c in calls]
    assert [(r.frame_id, r.batch_size) for r in replies] == [(1, 2), (2, 2)]
    assert run.engines.first.batches == [2]


async def test_adaptive_window_does_not_wait_for_company_due_after_it_closes(
        start: Callable[..., Any], tiny_package: Path) -> None:
    # Decodes measured at 60 s: the request decoding behind the first cannot reach the queue
    # before a 10 s window closes, so waiting for it would only delay the first.
    run: Running = await start(server_config(
        blocks_model(tiny_package, max_batch_size=2, max_queue_delay_s=10.0), decode_threads=1))
    admission = run.server.registry.default.admission
    admission.times.observe_decode(60.0)
    blocker = DecodeBlocker(run.server, 1)
    first = asyncio.ensure_future(run.stub.Detect(request_for(GOOD, frame_id=1)))
    await until(lambda: admission.decoding == 1)
    # Between the two in the decode queue: holds the thread once the first is decoded.
    second_gate = threading.Event()
    run.server.core.decoder._executor.submit(second_gate.wait, WAIT_S)
    second = asyncio.ensure_future(run.stub.Detect(request_for(GOOD, frame_id=2)))
    await until(lambda: admission.decoding == 2)
    blocker.release()
    try:
        reply = await asyncio.wait_for(first, WAIT_S / 2)  # answered while the second is held
        assert (reply.frame_id, reply.batch_size, boxes_of(reply)) == (1, 1, GOOD_BOXES)
        assert admission.decoding == 1
    finally:
        second_gate.set()
    assert (await asyncio.wait_for(second, WAIT_S)).batch_size == 1
    assert run.engines.first.batches == [1, 1]
