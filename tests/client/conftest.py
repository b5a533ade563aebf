"""A real detserve server for client tests, running its own event loop in a background thread.

The sync DetectClient blocks its caller, so the server cannot share the test's event loop.
`SlowEngine` is the real blocks OrtEngine plus a fixed sleep per batch: a server with a known,
small capacity, for coordinated-omission tests. `default_server` serves the committed default
model (OpenVINO INT8 shapes@320) with the server's own engine factory, for tests on real scenes.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

import detserve.models
from detserve.engines.base import Engine
from detserve.engines.manifest import Manifest, ModelPackage
from detserve.engines.ort import OrtEngine
from detserve.server.app import Server, start_server
from detserve.server.batcher import BatchingConfig
from detserve.server.config import ModelConfig, ServerConfig, load_config
from detserve.server.registry import default_engine_factory

CELL = 32
DEFAULT_PACKAGE = Path(detserve.models.__file__).parent / "packages" / "shapes_320_int8"
needs_default_package = pytest.mark.skipif(
    not (DEFAULT_PACKAGE / "manifest.yaml").is_file(),
    reason=f"default model package not present at {DEFAULT_PACKAGE}")


def blocks_image(width: int, height: int,
                 blocks: Sequence[tuple[int, int, int]]) -> npt.NDArray[np.uint8]:
    """Black RGB image with saturated 32-px blocks at (x, y, channel) top-left corners."""
    image = np.zeros((height, width, 3), np.uint8)
    for x, y, channel in blocks:
        image[y : y + CELL, x : x + CELL, channel] = 255
    return image


def png_bytes(image_rgb: npt.NDArray[np.uint8]) -> bytes:
    ok, data = cv2.imencode(".png", np.ascontiguousarray(image_rgb[:, :, ::-1]))
    if not ok:
        raise RuntimeError("cv2.imencode failed")
    return bytes(data.tobytes())


@dataclass
class SlowEngine:
    """Real OrtEngine whose every batch also takes `delay_s` (a server of known capacity)."""

    inner: OrtEngine
    delay_s: float
    batches: list[int] = field(default_factory=list)

    @property
    def manifest(self) -> Manifest:
        return self.inner.manifest

    @property
    def kind(self) -> str:
        kind: str = self.inner.kind
        return kind

    def infer(self, batch: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.generic]]:
        time.sleep(self.delay_s)
        self.batches.append(int(batch.shape[0]))
        outputs: Sequence[npt.NDArray[np.generic]] = self.inner.infer(batch)
        return outputs

    def close(self) -> None:
        self.inner.close()


class ThreadedServer:
    """start_server(config) on a private event loop in a daemon thread."""

    def __init__(self, config: ServerConfig, delay_s: float | None = None) -> None:
        self.engines: list[SlowEngine] = []
        self._delay_s = delay_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self.server: Server = self._call(start_server(config, self._factory))
        self.target = f"127.0.0.1:{self.server.port}"

    def _factory(self, package: ModelPackage, kind: str, options: Mapping[str, Any]) -> Engine:
        inner = OrtEngine(package, intra_op_threads=1)
        if self._delay_s is None:
            return inner
        engine = SlowEngine(inner, self._delay_s)
        self.engines.append(engine)
        return engine

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)

    def stop(self) -> None:
        self._call(self.server.stop(grace_s=1.0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()


def config_for(package: Path, **batching: Any) -> ServerConfig:
    settings: dict[str, Any] = {"max_batch_size": 4, "max_queue_delay_s": 0.002,
                                "max_queue_wait_s": 5.0, **batching}
    model = ModelConfig(package=package, batching=BatchingConfig(**settings))
    return ServerConfig(host="127.0.0.1", port=0, metrics_port=None, log_requests=False,
                        models=(model,))


@pytest.fixture(scope="module")
def server(tiny_package: Path) -> Iterator[ThreadedServer]:
    srv = ThreadedServer(config_for(tiny_package))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def slow_server(tiny_package: Path) -> Iterator[ThreadedServer]:
    """max_batch_size 1, one instance, 40 ms per batch: capacity about 25 requests/s."""
    srv = ThreadedServer(config_for(tiny_package, max_batch_size=1, max_queue_delay_s=0.0),
                         delay_s=0.040)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def blocks_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 64x64 PNGs with known blocks: a folder input for the load generator."""
    root = tmp_path_factory.mktemp("blocks_images")
    layouts = [[(0, 0, 0)], [(32, 32, 2)], [(0, 32, 1), (32, 0, 0)], []]
    for i, blocks in enumerate(layouts):
        (root / f"img{i}.png").write_bytes(png_bytes(blocks_image(64, 64, blocks)))
    return root


class RealEngineServer(ThreadedServer):
    """ThreadedServer with the server's own engine factory (the config's engine and options)."""

    def _factory(self, package: ModelPackage, kind: str, options: Mapping[str, Any]) -> Engine:
        return default_engine_factory(package, kind, options)


@pytest.fixture(scope="session")
def default_server() -> Iterator[ThreadedServer]:
    """The packaged default.yaml's default model, with its engine, options and batching."""
    default = next(m for m in load_config(None, env={}).models if m.default)
    srv = RealEngineServer(replace(config_for(DEFAULT_PACKAGE), models=(default,)))
    yield srv
    srv.stop()
