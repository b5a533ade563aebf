"""Unary Detect, ListModels and GetModelInfo against a real server on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from detserve.protos import detection_pb2 as pb
from detserve.server.config import ModelConfig

from .conftest import blocks_image, blocks_model, boxes_of, request_for, server_config

RED, GREEN, BLUE = 0, 1, 2


async def test_detect_returns_exact_boxes_labels_and_metadata(start: Callable[..., Any]) -> None:
    run = await start()
    image = blocks_image(64, 64, [(0, 0, RED), (32, 32, BLUE)])
    reply = await run.stub.Detect(request_for(image, request_id="r-1", frame_id=7))
    assert boxes_of(reply) == [
        ("red", 1.0, [0.0, 0.0, 32.0, 32.0]),
        ("blue", 1.0, [32.0, 32.0, 64.0, 64.0]),
    ]
    assert [d.class_id for d in reply.detections] == [0, 2]
    assert (reply.request_id, reply.frame_id) == ("r-1", 7)
    assert (reply.model, reply.model_version, reply.nms) == ("blocks@64", "1", "host")
    assert (reply.image_width, reply.image_height, reply.batch_size) == (64, 64, 1)
    t = reply.timing
    assert t.total_ms >= t.queue_ms + t.preprocess_ms > 0
    assert t.inference_ms > 0 and t.postprocess_ms > 0


async def test_boxes_come_back_in_the_callers_pixels(start: Callable[..., Any]) -> None:
    run = await start()
    # 128x128 into a 64x64 model: scale 0.5; a 64-px green block covers one model cell.
    image = blocks_image(128, 128, [(64, 0, GREEN)], side=64)
    reply = await run.stub.Detect(request_for(image))
    assert boxes_of(reply) == [("green", 1.0, [64.0, 0.0, 128.0, 64.0])]
    assert (reply.image_width, reply.image_height) == (128, 128)


@pytest.mark.parametrize("fmt", ["RGB8", "BGR8", "GRAY8"])
async def test_raw_frames(start: Callable[..., Any], fmt: str) -> None:
    run = await start()
    rgb = blocks_image(64, 64, [(32, 0, RED)])
    if fmt == "BGR8":
        data = rgb[:, :, ::-1].tobytes()
    elif fmt == "GRAY8":
        data = np.ascontiguousarray(rgb[:, :, 0]).tobytes()
    else:
        data = rgb.tobytes()
    raw = pb.RawFrame(data=data, height=64, width=64, pixel_format=f"PIXEL_FORMAT_{fmt}")
    reply = await run.stub.Detect(pb.DetectRequest(image=pb.Image(raw=raw)))
    # Grey replicates into all three channels; the tie of the three classes goes to the first.
    assert boxes_of(reply) == [("red", 1.0, [32.0, 0.0, 64.0, 32.0])]


async def test_request_overrides_filter_and_limit(start: Callable[..., Any]) -> None:
    run = await start()
    # A half-covered cell scores 0.5: below the manifest's 0.6, above an explicit 0.4.
    image = blocks_image(64, 64, [(0, 0, RED), (32, 32, BLUE)])
    image[0:32, 48:64, 1] = 255
    default = await run.stub.Detect(request_for(image))
    assert [d.label for d in default.detections] == ["red", "blue"]
    low = await run.stub.Detect(request_for(image, score_threshold=0.4))
    assert sorted((d.label, round(d.score, 3)) for d in low.detections) == [
        ("blue", 1.0), ("green", 0.5), ("red", 1.0)]
    only_blue = await run.stub.Detect(request_for(image, class_ids=[2]))
    assert [d.label for d in only_blue.detections] == ["blue"]
    one = await run.stub.Detect(request_for(image, max_detections=1))
    assert len(one.detections) == 1


async def test_concurrent_requests_share_batches(
    start: Callable[..., Any], tiny_package: Path
) -> None:
    # A fixed window: the adaptive one (test_admission.py) would not wait for a request still
    # on the network, so on a busy machine the four could split into smaller batches.
    config = server_config(blocks_model(tiny_package, max_batch_size=4,
                                        preferred_batch_sizes=(4,), max_queue_delay_s=5.0,
                                        adaptive_window=False))
    run = await start(config)
    images = [blocks_image(64, 64, [(32 * (i % 2), 32 * (i // 2), i % 3)]) for i in range(4)]
    replies = await asyncio.gather(*(run.stub.Detect(request_for(im, frame_id=i))
                                     for i, im in enumerate(images)))
    assert [r.batch_size for r in replies] == [4, 4, 4, 4]
    assert run.engines.first.batches == [4]
    for i, reply in enumerate(replies):
        x, y = 32 * (i % 2), 32 * (i // 2)
        assert reply.frame_id == i
        assert boxes_of(reply) == [(("red", "green", "blue")[i % 3], 1.0,
                                    [float(x), float(y), x + 32.0, y + 32.0])]


def _two_variants(small: Path, large: Path) -> tuple[ModelConfig, ModelConfig]:
    a = blocks_model(small)
    b = blocks_model(large)
    return (
        ModelConfig(package=a.package, name="blocks", variant="64", batching=a.batching),
        ModelConfig(package=b.package, name="blocks", variant="128", batching=b.batching,
                    default=True),
    )


async def test_variants_side_by_side_and_model_selection(
    start: Callable[..., Any], tiny_package: Path, tiny_package_128: Path
) -> None:
    run = await start(server_config(*_two_variants(tiny_package, tiny_package_128)))
    image = blocks_image(128, 128, [(96, 96, BLUE)])
    large = await run.stub.Detect(request_for(image, model="blocks@128"))
    assert boxes_of(large) == [("blue", 1.0, [96.0, 96.0, 128.0, 128.0])]
    # At 64 px the 32-px block is a quarter cell (score 0.25): below the threshold.
    small = await run.stub.Detect(request_for(image, model="blocks@64"))
    assert (small.model, len(small.detections)) == ("blocks@64", 0)
    assert (await run.stub.Detect(request_for(image))).model == "blocks@128"
    assert (await run.stub.Detect(request_for(image, model="blocks"))).model == "blocks@128"


async def test_unknown_model_is_not_found_listing_served(
    start: Callable[..., Any], tiny_package: Path, tiny_package_128: Path
) -> None:
    run = await start(server_config(*_two_variants(tiny_package, tiny_package_128)))
    image = blocks_image(64, 64, [])
    for model in ("nope", "blocks@320"):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await run.stub.Detect(request_for(image, model=model))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert repr(model) in (err.value.details() or "")
        assert "['blocks@128', 'blocks@64']" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as info_err:
            await run.stub.GetModelInfo(pb.GetModelInfoRequest(model=model))
        assert info_err.value.code() == grpc.StatusCode.NOT_FOUND
    assert len((await run.stub.Detect(request_for(image))).detections) == 0


async def test_list_models_and_model_info(
    start: Callable[..., Any], tiny_package: Path, tiny_package_128: Path
) -> None:
    run = await start(server_config(*_two_variants(tiny_package, tiny_package_128)))
    listing = await run.stub.ListModels(pb.ListModelsRequest())
    assert listing.default_model == "blocks@128"
    assert [(m.name, m.is_default, m.input_width) for m in listing.models] == [
        ("blocks@64", False, 64), ("blocks@128", True, 128)]
    info = await run.stub.GetModelInfo(pb.GetModelInfoRequest(model="blocks@64"))
    assert list(info.classes) == ["red", "green", "blue"]
    assert (info.input_width, info.input_height, info.output_format) == (64, 64, "yolov8")
    assert (info.precision, info.engine, info.nms) == ("fp32", "onnxruntime", "host")
    assert info.multi_label is False  # the manifest's default: each anchor's best class
    assert (round(info.score_threshold, 3), round(info.iou_threshold, 3)) == (0.6, 0.5)
    assert info.max_detections == 100
    pre = info.preprocessing
    assert (pre.color_order, pre.resize, pre.pad_value) == ("RGB", "letterbox", 114)
    assert round(pre.scale * 255, 4) == 1.0
    assert (list(pre.mean), list(pre.std)) == ([0.0] * 3, [1.0] * 3)
    b = info.batching
    assert (b.max_batch_size, b.max_queue_delay_ms, b.max_queue_size, b.instances) == (
        4, 0.0, 256, 1)
    default = await run.stub.GetModelInfo(pb.GetModelInfoRequest())
    assert default.name == "blocks@128" and default.is_default
