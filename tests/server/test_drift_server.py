"""Drift alerts on a real server over loopback: a camera that goes blank, and a model whose
scores shift, seen in /metrics and in the log events."""

from __future__ import annotations

import asyncio
import io
import json
import re
import shutil
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import structlog

import detserve.models
from detserve.engines.manifest import load_package
from detserve.models.eval_reference import store_reference
from detserve.models.evaluate import evaluate_package
from detserve.server.alerts_config import AlertsConfig
from detserve.server.app import Server
from detserve.server.batcher import BatchingConfig
from detserve.server.cameras import CAMERA_KEY
from detserve.server.config import ModelConfig
from detserve.server.logs import configure_logging

from .conftest import blocks_model, request_for, server_config
from .drift_helpers import (
    FrameFeed,
    blank_frames,
    blocks_requests,
    camera_frames,
    write_blocks_val,
)

SHAPES = Path(detserve.models.__file__).parent / "packages" / "shapes_320"
SHAPES_KEY = "shapes@320"
N_DEAD = 8
Start = Callable[..., Any]


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    buf = io.StringIO()
    configure_logging("INFO", stream=buf)
    yield buf
    structlog.reset_defaults()


def events(buf: io.StringIO, name: str) -> list[dict[str, Any]]:
    lines = (json.loads(line) for line in buf.getvalue().splitlines())
    return [e for e in lines if e["event"] == name]


def scrape(server: Server) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics") as reply:
        return str(reply.read().decode())


def sample(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def shapes_model() -> ModelConfig:
    return ModelConfig(package=SHAPES, engine_options={"intra_op_threads": 1},
                       batching=BatchingConfig(max_batch_size=4, max_queue_delay_s=0.0))


DEAD_ALERTS = AlertsConfig(dead_camera_frames=N_DEAD, dead_camera_seconds=0.0,
                           dead_camera_min_frames=10, dead_camera_min_baseline=1.0)


async def test_a_busy_camera_gone_blank_raises_the_alert_on_the_nth_frame_and_clears(
        start: Start, log: io.StringIO) -> None:
    run = await start(server_config(shapes_model(), metrics_port=0, alerts=DEAD_ALERTS))
    server = run.server
    # The built-in package carries its val reference (500 scenes) for the shift alert.
    assert server.observer.metrics.registry.get_sample_value(
        "detserve_distribution_shift_reference_frames",
        {"model": SHAPES_KEY, "source": "package"}) == 500
    feed = FrameFeed()
    call = run.stub.DetectStream(feed.requests(), metadata=((CAMERA_KEY, "gate-1"),))
    busy, blank = camera_frames(0, 13), blank_frames(0, N_DEAD + 2)
    for k, image in enumerate(busy[:12]):
        feed.send(image, k)
        assert len((await call.read()).detections) >= 2
    dead = {"model": SHAPES_KEY, "camera": "gate-1"}
    assert sample(await asyncio.to_thread(scrape, server), "detserve_camera_dead", **dead) == 0.0
    for k, image in enumerate(blank[:N_DEAD], start=1):
        feed.send(image, 100 + k)
        assert len((await call.read()).detections) == 0  # the model sees nothing there
        text = await asyncio.to_thread(scrape, server)
        assert sample(text, "detserve_camera_dead", **dead) == (1.0 if k == N_DEAD else 0.0)
    [started] = events(log, "dead_camera_started")
    assert (started["camera"], started["model"], started["zero_frames"]) == \
        ("gate-1", SHAPES_KEY, N_DEAD)
    assert started["baseline_detections"] >= 2.0 and started["baseline_frames"] == 12
    assert sample(text, "detserve_dead_camera_alerts_total", model=SHAPES_KEY) == 1.0
    for k, image in enumerate(blank[N_DEAD:]):  # still dead: no second alert
        feed.send(image, 200 + k)
        await call.read()
    assert events(log, "dead_camera_started") == [started]
    feed.send(busy[12], 300)  # objects return
    assert len((await call.read()).detections) >= 2
    feed.close()
    assert await call.read() == grpc.aio.EOF
    text = await asyncio.to_thread(scrape, server)
    assert sample(text, "detserve_camera_dead", **dead) == 0.0
    [cleared] = events(log, "dead_camera_cleared")
    assert (cleared["camera"], cleared["reason"], cleared["zero_frames"]) == \
        ("gate-1", "detections", N_DEAD + 2)


async def test_streams_without_a_camera_id_are_cameras_of_their_own(start: Start) -> None:
    run = await start(server_config(shapes_model(), alerts=DEAD_ALERTS))
    registry = run.server.observer.metrics.registry
    for _ in range(2):
        feed = FrameFeed()
        call = run.stub.DetectStream(feed.requests())
        feed.send(camera_frames(1, 1)[0], 0)
        await call.read()
        feed.close()
        assert await call.read() == grpc.aio.EOF
    cameras = {s.labels["camera"] for m in registry.collect() if m.name == "detserve_camera_dead"
               for s in m.samples}  # fmt: skip
    named = sorted(c for c in cameras if c != "other")
    assert len(named) == 2 and all(re.fullmatch(r"stream-\d+", c) for c in named)
    assert registry.get_sample_value("detserve_cameras_tracked", {"model": SHAPES_KEY}) == 2


async def test_unary_calls_group_by_camera_id_and_a_bad_id_is_refused(
        start: Start, tiny_package: Path) -> None:
    from .conftest import blocks_image

    run = await start(server_config(blocks_model(tiny_package)))
    registry = run.server.observer.metrics.registry
    request = request_for(blocks_image(64, 64, [(0, 0, 0)]))
    for _ in range(3):
        await run.stub.Detect(request, metadata=((CAMERA_KEY, "dock/3"),))
    await run.stub.Detect(request)  # no camera: counted for shift only
    assert registry.get_sample_value("detserve_cameras_tracked", {"model": "blocks@64"}) == 1
    assert registry.get_sample_value("detserve_camera_dead",
                                     {"model": "blocks@64", "camera": "dock/3"}) == 0.0
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request, metadata=((CAMERA_KEY, "two words"),))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert CAMERA_KEY in str(err.value.details())
    for reserved in ("other", "stream-1"):  # the label beyond the limit; the server's own ids
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await run.stub.Detect(request, metadata=((CAMERA_KEY, reserved),))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# -- distribution shift, on the blocks model: a block of value v scores v / 255

WINDOW = 200
NORMAL, SHIFTED = (0.7, 1.0), (0.61, 0.72)
SHIFT_ALERTS = AlertsConfig(shift_window_frames=WINDOW, shift_min_frames=WINDOW,
                            shift_warmup_frames=WINDOW)


async def _stream_all(run: Any, requests: list[Any]) -> None:
    async def frames() -> Any:
        for r in requests:
            yield r

    replies = [r async for r in run.stub.DetectStream(frames())]
    assert len(replies) == len(requests) and all(r.status.code == 0 for r in replies)


def _shift(run: Any, key: str) -> dict[str, float | None]:
    registry = run.server.observer.metrics.registry
    return {s: registry.get_sample_value("detserve_distribution_shift", {"model": key,
                                                                         "signal": s})
            for s in ("detections", "max_score")}  # fmt: skip


async def _normal_then_shifted(run: Any, log: io.StringIO, key: str) -> None:
    await _stream_all(run, blocks_requests(WINDOW, 11, *NORMAL))
    calm = _shift(run, key)
    assert calm["detections"] is not None and calm["detections"] < 0.2
    assert calm["max_score"] is not None and calm["max_score"] < 0.2
    assert events(log, "distribution_shift_started") == []
    await _stream_all(run, blocks_requests(WINDOW, 12, *SHIFTED))
    shifted = _shift(run, key)
    assert shifted["max_score"] is not None and shifted["max_score"] > 0.2
    # The counts did not change (1-6 blocks, all above the threshold): no alert for them.
    assert shifted["detections"] is not None and shifted["detections"] < 0.2
    [started] = events(log, "distribution_shift_started")
    assert (started["model"], started["signal"]) == (key, "max_score")
    assert started["psi"] > 0.2 and started["window_frames"] == WINDOW


async def test_shift_against_the_reference_eval_stored_in_the_package(
        start: Start, tiny_package_128: Path, tmp_path: Path, log: io.StringIO) -> None:
    pkg = tmp_path / "blocks"
    shutil.copytree(tiny_package_128, pkg)
    val = write_blocks_val(tmp_path / "val", 300, seed=10, low=NORMAL[0], high=NORMAL[1])
    report = await asyncio.to_thread(evaluate_package, pkg, val, None, None, None, False, 16)
    store_reference(pkg, report.reference, report.split)
    assert load_package(pkg).manifest.metadata["drift_reference"]["images"] == 300
    run = await start(server_config(blocks_model(pkg), alerts=SHIFT_ALERTS))
    registry = run.server.observer.metrics.registry
    key = "blocks@128"
    assert registry.get_sample_value("detserve_distribution_shift_reference_frames",
                                     {"model": key, "source": "package"}) == 300
    await _normal_then_shifted(run, log, key)


async def test_shift_against_a_warmup_reference(
        start: Start, tiny_package_128: Path, log: io.StringIO) -> None:
    run = await start(server_config(blocks_model(tiny_package_128), alerts=SHIFT_ALERTS))
    key = "blocks@128"
    await _stream_all(run, blocks_requests(WINDOW, 10, *NORMAL))
    assert _shift(run, key) == {"detections": None, "max_score": None}  # the warm-up only
    [ready] = events(log, "drift_reference_ready")
    assert (ready["source"], ready["frames"]) == ("warmup", WINDOW)
    await _normal_then_shifted(run, log, key)
