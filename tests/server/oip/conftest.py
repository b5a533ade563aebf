"""Fixtures for the Open Inference Protocol tests: a real server on 127.0.0.1:0 serving the
blocks model on gRPC and on an ephemeral REST port, driven by Triton's own clients."""

from __future__ import annotations

import warnings
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from detserve.protos import detection_pb2 as pb

from ..conftest import Running, blocks_image, blocks_model, png, server_config

with warnings.catch_warnings():  # tritonclient's gencode is one protobuf major older: a warning
    warnings.simplefilter("ignore")
    import tritonclient.grpc.aio as grpcclient
    import tritonclient.http.aio as httpclient
    from tritonclient.utils import InferenceServerException

__all__ = ["InferenceServerException", "grpcclient", "httpclient"]

# Blocks on the 32x32 cells of the model's 64x64 input: red, green and blue.
SCENE = ((0, 0, 0), (32, 32, 1), (32, 0, 2))


def scene_png(blocks: Sequence[tuple[int, int, int]] = SCENE, width: int = 64,
              height: int = 64) -> bytes:
    return png(blocks_image(width, height, blocks))


def image_array(*images: bytes) -> npt.NDArray[np.object_]:
    """A BYTES tensor [B, 1] of encoded images, as tritonclient takes it."""
    return np.array([[image] for image in images], dtype=np.object_)


def v1_rows(response: pb.DetectResponse) -> list[tuple[int, float, tuple[float, ...]]]:
    return [(d.class_id, d.score, (d.box.x1, d.box.y1, d.box.x2, d.box.y2))
            for d in response.detections]


def oip_rows(num: Any, boxes: Any, scores: Any, classes: Any, i: int
             ) -> list[tuple[int, float, tuple[float, ...]]]:
    n = int(num[i, 0])
    return [(int(classes[i, j]), float(scores[i, j]), tuple(float(v) for v in boxes[i, j]))
            for j in range(n)]


@dataclass
class Oip:
    run: Running
    grpc: Any  # tritonclient.grpc.aio.InferenceServerClient
    http: Any  # tritonclient.http.aio.InferenceServerClient

    @property
    def rest_url(self) -> str:
        assert self.run.server.oip is not None
        return f"http://127.0.0.1:{self.run.server.oip.rest_port}"


@pytest.fixture
async def oip(start: Callable[..., Any], tiny_package: Path) -> AsyncIterator[Oip]:
    model = blocks_model(tiny_package, max_batch_size=4, max_queue_delay_s=0.001,
                         preferred_batch_sizes=(2, 4), max_queue_wait_s=0.5)
    config = server_config(model, rest_port=0, log_requests=False)
    run = await start(config)
    assert run.server.oip is not None and run.server.oip.rest_port
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{run.server.port}")
    h = httpclient.InferenceServerClient(f"127.0.0.1:{run.server.oip.rest_port}")
    try:
        yield Oip(run, g, h)
    finally:
        await g.close()
        await h.close()
