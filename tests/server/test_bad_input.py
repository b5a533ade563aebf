"""Every bad input of issue 2: the right status and a message saying what was wrong, while the
requests batched alongside it are answered normally and the server keeps serving."""

from __future__ import annotations

import asyncio
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import pytest

from detserve.protos import detection_pb2 as pb

from .conftest import Running, blocks_image, blocks_model, boxes_of, png, request_for, server_config

GOOD = blocks_image(64, 64, [(0, 0, 0)])
GOOD_BOXES = [("red", 1.0, [0.0, 0.0, 32.0, 32.0])]
INVALID = grpc.StatusCode.INVALID_ARGUMENT


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with a tiny (invalid) body: decoding it would
    allocate the full frame, so it must be refused from the header alone."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0"))
            + _chunk(b"IEND", b""))


def encoded(data: bytes, **fields: Any) -> pb.DetectRequest:
    return pb.DetectRequest(image=pb.Image(encoded=data), **fields)


def _jpeg(image: np.ndarray) -> bytes:
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data.tobytes())


def raw(data: bytes, height: int, width: int, fmt: str) -> pb.DetectRequest:
    frame = pb.RawFrame(data=data, height=height, width=width, pixel_format=fmt)
    return pb.DetectRequest(image=pb.Image(raw=frame))


# (case id, request, code, words the message must contain)
BAD_INPUTS: list[tuple[str, pb.DetectRequest, grpc.StatusCode, tuple[str, ...]]] = [
    ("not-an-image", encoded(b"GIF89a this is not a jpeg or png"), INVALID,
     ("not a JPEG or PNG", "accepted")),
    ("truncated-jpeg", encoded(_jpeg(GOOD[:, :, ::-1].copy())[:300]), INVALID,
     ("JPEG", "truncated")),
    ("zero-bytes", encoded(b""), INVALID, ("empty", "0 bytes")),
    ("one-by-one", encoded(png(np.zeros((1, 1, 3), np.uint8))), INVALID, ("1x1", "at least")),
    ("png-16-bit", encoded(bytes(cv2.imencode(".png", np.zeros((64, 64, 3), np.uint16))[1])),
     INVALID, ("16-bit", "8-bit")),
    ("grayscale", encoded(bytes(cv2.imencode(".png", np.zeros((64, 64), np.uint8))[1])),
     INVALID, ("grayscale", "GRAY8")),
    ("rgba", encoded(bytes(cv2.imencode(".png", np.zeros((64, 64, 4), np.uint8))[1])),
     INVALID, ("RGBA", "3-channel")),
    ("bomb", encoded(png_bomb(60_000, 60_000)), INVALID,
     ("60000x60000", "3600000000", "limit")),
    ("raw-byte-count", raw(b"\0" * 100, 64, 64, "PIXEL_FORMAT_RGB8"), INVALID,
     ("100 bytes", "12288")),
    ("raw-no-format", raw(b"\0" * 64 * 64 * 3, 64, 64, "PIXEL_FORMAT_UNSPECIFIED"), INVALID,
     ("PIXEL_FORMAT_UNSPECIFIED",)),
    ("no-image", pb.DetectRequest(), INVALID, ("image is required",)),
    ("score-above-1", request_for(GOOD, score_threshold=1.5), INVALID,
     ("score_threshold", "1.5", "[0, 1]")),
    ("score-negative", request_for(GOOD, score_threshold=-0.25), INVALID,
     ("score_threshold", "-0.25")),
    ("score-nan", request_for(GOOD, score_threshold=float("nan")), INVALID,
     ("score_threshold", "nan")),
    ("iou-zero", request_for(GOOD, iou_threshold=0.0), INVALID, ("iou_threshold", "(0, 1]")),
    ("iou-above-1", request_for(GOOD, iou_threshold=2.0), INVALID, ("iou_threshold", "2.0")),
    ("max-detections-zero", request_for(GOOD, max_detections=0), INVALID,
     ("max_detections", ">= 1", "0")),
    ("class-id-out-of-range", request_for(GOOD, class_ids=[1, 7]), INVALID,
     ("class_ids [7]", "3 classes")),
    ("unknown-model", request_for(GOOD, model="yolo@1280"), grpc.StatusCode.NOT_FOUND,
     ("'yolo@1280'", "blocks@64")),
]


@pytest.fixture
async def batching_server(start: Callable[..., Any], tiny_package: Path) -> Running:
    """Two good requests form a batch at once (preferred size 2); a lone one would wait 30 s
    (a fixed window: the adaptive one would not wait for a request still on the network)."""
    model = blocks_model(tiny_package, max_batch_size=2, preferred_batch_sizes=(2,),
                         max_queue_delay_s=30.0, adaptive_window=False)
    running: Running = await start(server_config(model, max_message_bytes=64 * 1024))
    return running


async def _call(run: Running, request: pb.DetectRequest) -> pb.DetectResponse | grpc.RpcError:
    try:
        reply: pb.DetectResponse = await run.stub.Detect(request, timeout=20)
        return reply
    except grpc.aio.AioRpcError as exc:
        return exc


@pytest.mark.parametrize(("request_", "code", "words"),
                         [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
async def test_bad_input_fails_alone(
    batching_server: Running, request_: pb.DetectRequest, code: grpc.StatusCode,
    words: tuple[str, ...],
) -> None:
    run = batching_server
    results = await asyncio.gather(
        _call(run, request_for(GOOD, frame_id=1)), _call(run, request_), _call(run, request_for(
            GOOD, frame_id=2)),
    )
    bad = results[1]
    assert isinstance(bad, grpc.aio.AioRpcError), f"expected {code}, got a reply {bad}"
    assert bad.code() == code
    for word in words:
        assert word in (bad.details() or ""), f"{word!r} not in {bad.details()!r}"
    for good, frame in ((results[0], 1), (results[2], 2)):
        assert isinstance(good, pb.DetectResponse), good
        assert (good.frame_id, good.batch_size, boxes_of(good)) == (frame, 2, GOOD_BOXES)
    assert run.engines.first.batches == [2]  # the bad request never reached the engine


async def test_message_over_size_limit_is_resource_exhausted(batching_server: Running) -> None:
    run = batching_server
    huge = encoded(b"\x89PNG" + bytes(100 * 1024))
    results = await asyncio.gather(
        _call(run, request_for(GOOD)), _call(run, huge), _call(run, request_for(GOOD)))
    assert isinstance(results[1], grpc.aio.AioRpcError)
    assert results[1].code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert [boxes_of(r) for r in (results[0], results[2])] == [GOOD_BOXES, GOOD_BOXES]


async def test_image_above_configured_pixel_limit(start: Callable[..., Any],
                                                  tiny_package: Path) -> None:
    run = await start(server_config(blocks_model(tiny_package), max_pixels=100 * 100))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request_for(blocks_image(128, 128, [])))
    assert err.value.code() == INVALID
    assert "128x128 = 16384 pixels, above the limit of 10000" in (err.value.details() or "")
    assert boxes_of(await run.stub.Detect(request_for(GOOD))) == GOOD_BOXES


async def test_engine_failure_fails_its_batch_only(batching_server: Running) -> None:
    run = batching_server
    run.engines.first.fail_next = True
    results = await asyncio.gather(_call(run, request_for(GOOD)), _call(run, request_for(GOOD)))
    for failed in results:
        assert isinstance(failed, grpc.aio.AioRpcError)
        assert failed.code() == grpc.StatusCode.INTERNAL
        # The caller learns the request id only; the detail is in the log (test_safe_defaults).
        assert re.fullmatch(r"internal error, request id srv-[0-9a-f]{16}", failed.details() or "")
    results = await asyncio.gather(_call(run, request_for(GOOD)), _call(run, request_for(GOOD)))
    assert [boxes_of(r) for r in results if isinstance(r, pb.DetectResponse)] == [
        GOOD_BOXES, GOOD_BOXES]
