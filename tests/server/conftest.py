"""Fixtures for server integration tests: a real server on 127.0.0.1:0 serving the blocks model.

`GatedEngine` is a real OrtEngine behind a gate: its `infer` tells the test it was entered (an
asyncio.Queue fed from the engine thread) and waits for `gate` before running, so a test decides
when a batch finishes without sleeping. It records every batch it ran; the server's warm-up runs
(before it serves) pass the gate and are recorded apart, in `warmed`.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import numpy.typing as npt
import pytest

from detserve.engines.base import Engine
from detserve.engines.manifest import Manifest, ModelPackage
from detserve.engines.ort import OrtEngine
from detserve.engines.warmup import warm_up
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import Server, start_server
from detserve.server.batcher import BatchingConfig
from detserve.server.config import ModelConfig, ServerConfig

WAIT_S = 10.0  # upper bound for what should happen promptly; never reached when green
CELL = 32


def blocks_image(
    width: int, height: int, blocks: Sequence[tuple[int, int, int]], side: int = CELL
) -> npt.NDArray[np.uint8]:
    """Black RGB image with saturated blocks: (x, y, channel) top-left corners, `side` pixels."""
    image = np.zeros((height, width, 3), np.uint8)
    for x, y, channel in blocks:
        image[y : y + side, x : x + side, channel] = 255
    return image


def png(image_rgb: npt.NDArray[np.uint8]) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image_rgb[:, :, ::-1]))
    assert ok
    return bytes(data.tobytes())


def request_for(image_rgb: npt.NDArray[np.uint8], **fields: Any) -> pb.DetectRequest:
    return pb.DetectRequest(image=pb.Image(encoded=png(image_rgb)), **fields)


def boxes_of(response: pb.DetectResponse) -> list[tuple[str, float, list[float]]]:
    return [
        (d.label, round(d.score, 4), [d.box.x1, d.box.y1, d.box.x2, d.box.y2])
        for d in response.detections
    ]


@dataclass
class GatedEngine:
    """An OrtEngine whose runs wait for `gate` (set = run freely)."""

    inner: OrtEngine
    loop: asyncio.AbstractEventLoop
    gate: threading.Event = field(default_factory=threading.Event)
    entered: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    batches: list[int] = field(default_factory=list)  # batch sizes run, in order
    fail_next: bool = False
    fail_with: Exception | None = None  # raised by the next batch instead of running it
    warmed: list[int] = field(default_factory=list)  # batch sizes of the warm-up runs

    def warm_up(self, batch_sizes: Sequence[int]) -> tuple[int, ...]:
        ran = warm_up(self.inner, batch_sizes)
        self.warmed += ran
        return ran

    @property
    def manifest(self) -> Manifest:
        return self.inner.manifest

    @property
    def kind(self) -> str:
        return self.inner.kind

    def infer(self, batch: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.generic]]:
        self.loop.call_soon_threadsafe(self.entered.put_nowait, int(batch.shape[0]))
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("test gate never opened")
        self.batches.append(int(batch.shape[0]))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("engine failure injected by the test")
        if self.fail_with is not None:
            exc, self.fail_with = self.fail_with, None
            raise exc
        return self.inner.infer(batch)

    def close(self) -> None:
        self.inner.close()

    @property
    def images_run(self) -> int:
        return sum(self.batches)


@dataclass
class EngineRecorder:
    """Engine factory for start_server that builds GatedEngines and keeps them."""

    loop: asyncio.AbstractEventLoop
    open_gate: bool = True
    engines: list[GatedEngine] = field(default_factory=list)

    def __call__(self, package: ModelPackage, kind: str, options: Mapping[str, Any]) -> Engine:
        engine = GatedEngine(OrtEngine(package, intra_op_threads=1), self.loop)
        if self.open_gate:
            engine.gate.set()
        self.engines.append(engine)
        return engine

    @property
    def first(self) -> GatedEngine:
        return self.engines[0]


async def until(predicate: Callable[[], bool]) -> None:
    """Wait for server-side state the test has no event for (polls; never a timing sleep)."""
    deadline = time.monotonic() + WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition never became true")
        await asyncio.sleep(0.005)


def server_config(*models: ModelConfig, **fields: Any) -> ServerConfig:
    base = ServerConfig(host="127.0.0.1", port=0, metrics_port=None, models=tuple(models))
    return replace(base, **fields)


def blocks_model(package: Path, **batching: Any) -> ModelConfig:
    settings = {"max_batch_size": 4, "max_queue_delay_s": 0.0, **batching}
    return ModelConfig(package=package, engine_options={"intra_op_threads": 1},
                       batching=BatchingConfig(**settings))


@dataclass
class Running:
    server: Server
    channel: grpc.aio.Channel
    stub: pb_grpc.DetectorStub
    engines: EngineRecorder


@pytest.fixture
async def start(tiny_package: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await start(config=None, open_gate=True, on_stream_drop=None)` -> Running; stopped at
    teardown."""
    running: list[Running] = []

    async def _start(
        config: ServerConfig | None = None,
        open_gate: bool = True,
        on_stream_drop: Callable[[str], None] | None = None,
    ) -> Running:
        config = config or server_config(blocks_model(tiny_package))
        engines = EngineRecorder(asyncio.get_running_loop(), open_gate)
        server = await start_server(config, engines, on_stream_drop)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
        stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
        run = Running(server, channel, stub, engines)
        running.append(run)
        return run

    yield _start
    for run in running:
        for engine in run.engines.engines:
            engine.gate.set()
        await run.channel.close()
        await run.server.stop(grace_s=1.0)
