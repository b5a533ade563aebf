"""A `torchvision`-format package (outputs boxes, labels, scores; NMS in the graph) served by a
real server on loopback, with the same request and response contract as the other formats.

The graph (tests/engines/torchvision_graph.py) finds saturated blocks on a 16-px grid of its
64-px input and labels them by colour, label 0 being torchvision's background; images here are
drawn so that blocks fall on that grid after the letterbox, so the expected boxes are exact.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest

from detserve.protos import detection_pb2 as pb
from detserve.server.registry import ServedModel

from ..engines.torchvision_graph import write_package
from .conftest import WAIT_S, Running, blocks_model, request_for, server_config, until


@pytest.fixture(scope="module")
def tv_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_package(tmp_path_factory.mktemp("tv") / "blocks_tv")


def _scene(width: int, height: int, blocks: list[tuple[int, int, int, int, int]]
           ) -> npt.NDArray[np.uint8]:  # fmt: skip
    """Black RGB image with (x, y, side, channel, value) blocks."""
    image = np.zeros((height, width, 3), np.uint8)
    for x, y, side, channel, value in blocks:
        image[y : y + side, x : x + side, channel] = value
    return image


# 128 x 128 -> letterboxed at scale 0.5: each 32-px block is one 16-px cell of the input.
SQUARE = _scene(128, 128, [(0, 0, 32, 0, 255), (64, 32, 32, 1, 160), (96, 96, 32, 2, 255)])


def _answer(reply: pb.DetectResponse) -> list[tuple[int, str, float, list[float]]]:
    return [(d.class_id, d.label, round(d.score, 2), [d.box.x1, d.box.y1, d.box.x2, d.box.y2])
            for d in reply.detections]  # fmt: skip


async def _serve(start: Callable[..., Any], package: Path, open_gate: bool = True) -> Running:
    run: Running = await start(server_config(blocks_model(package)), open_gate=open_gate)
    return run


async def test_detections_come_back_in_original_pixels_sorted_by_score(
    start: Callable[..., Any], tv_package: Path
) -> None:
    run = await _serve(start, tv_package)
    reply = await run.stub.Detect(request_for(SQUARE))
    assert _answer(reply) == [
        (0, "red", 1.0, [0, 0, 32, 32]),
        (2, "blue", 1.0, [96, 96, 128, 128]),
        (1, "green", 0.63, [64, 32, 96, 64]),  # 160 / 255
    ]
    # Wide image: scale 0.25 and 16 px of padding above and below in the input, taken back out.
    wide = _scene(256, 128, [(64, 0, 64, 2, 255)])
    assert _answer(await run.stub.Detect(request_for(wide))) == [
        (2, "blue", 1.0, [64, 0, 128, 64])
    ]
    assert _answer(await run.stub.Detect(request_for(_scene(128, 128, [])))) == []


async def test_request_threshold_classes_and_cap_apply_on_the_host(
    start: Callable[..., Any], tv_package: Path
) -> None:
    run = await _serve(start, tv_package)
    labels = [d.label for d in (await run.stub.Detect(
        request_for(SQUARE, score_threshold=0.7))).detections]  # fmt: skip
    assert labels == ["red", "blue"]
    labels = [d.label for d in (await run.stub.Detect(
        request_for(SQUARE, class_ids=[1, 2]))).detections]  # fmt: skip
    assert labels == ["blue", "green"]
    reply = await run.stub.Detect(request_for(SQUARE, max_detections=1))
    assert [d.label for d in reply.detections] == ["red"]


async def test_another_iou_is_refused_because_nms_ran_in_the_graph(
    start: Callable[..., Any], tv_package: Path
) -> None:
    run = await _serve(start, tv_package)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(SQUARE, iou_threshold=0.7))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "in-graph" in (err.value.details() or "")


async def test_model_listing_names_the_format(start: Callable[..., Any], tv_package: Path) -> None:
    run = await _serve(start, tv_package)
    listed = await run.stub.ListModels(pb.ListModelsRequest())
    assert [(m.name, m.output_format, m.nms) for m in listed.models] == [
        ("blocks_tv@64", "torchvision", "in-graph")
    ]


async def test_a_formed_batch_runs_image_by_image_and_each_reply_is_its_own(
    start: Callable[..., Any], tv_package: Path
) -> None:
    run = await _serve(start, tv_package, open_gate=False)
    first = asyncio.ensure_future(run.stub.Detect(request_for(SQUARE)))
    assert await asyncio.wait_for(run.engines.first.entered.get(), WAIT_S) == 1
    # Three more queue behind the held batch, then run together as one batch of 3.
    scenes = [_scene(128, 128, [(32 * k, 64, 32, k % 3, 255)]) for k in range(3)]
    rest = [asyncio.ensure_future(run.stub.Detect(request_for(s))) for s in scenes]
    served = run.server.registry.default
    assert isinstance(served, ServedModel)
    batcher = served.batcher
    await until(lambda: batcher.queue_depth() == 3)
    run.engines.first.gate.set()
    replies = await asyncio.gather(first, *rest)
    assert run.engines.first.batches == [1, 3]
    assert len(replies[0].detections) == 3
    for k, reply in enumerate(replies[1:]):
        assert _answer(reply) == [
            (k % 3, ("red", "green", "blue")[k % 3], 1.0, [32 * k, 64, 32 * k + 32, 96])
        ]
