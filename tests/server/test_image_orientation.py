"""EXIF orientation and strict JPEG decoding on a real server: boxes come back in the upright
image a person sees, and a JPEG cut short is refused, not answered on half a picture."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import cv2
import grpc
import numpy as np
import pytest

from detserve.protos import detection_pb2 as pb

from .conftest import blocks_image, boxes_of

RED, BLUE = 0, 2


def jpeg(image_rgb: np.ndarray, orientation: int | None = None) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image_rgb[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    data = bytes(buf.tobytes())
    if orientation is None:
        return data
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    body = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]


async def test_exif_rotated_jpeg_answers_in_upright_pixels(start: Callable[..., Any]) -> None:
    run = await start()
    upright = blocks_image(64, 32, [(0, 0, RED)])  # 64 wide, 32 high: a red block at the left
    # Stored turned 90 degrees anticlockwise, tagged 6 ("rotate 90 clockwise to view").
    stored = np.ascontiguousarray(np.rot90(upright, 1))
    tagged = await run.stub.Detect(pb.DetectRequest(image=pb.Image(encoded=jpeg(stored, 6))))
    plain = await run.stub.Detect(pb.DetectRequest(image=pb.Image(encoded=jpeg(upright))))
    assert (tagged.image_width, tagged.image_height) == (64, 32)
    assert [(label, [round(v) for v in box]) for label, _, box in boxes_of(tagged)] == [
        (label, [round(v) for v in box]) for label, _, box in boxes_of(plain)]
    label, score, box = boxes_of(tagged)[0]  # the most confident: the block, at the left
    assert label == "red" and score > 0.5 and box[2] <= 32


async def test_truncated_jpeg_with_an_end_marker_is_invalid_argument(
        start: Callable[..., Any]) -> None:
    run = await start()
    image = blocks_image(256, 256, [(0, 0, RED), (128, 128, BLUE)], side=128)
    image[image == 0] = np.random.default_rng(0).integers(0, 40, int((image == 0).sum()),
                                                          dtype=np.uint8)  # scan data to cut
    data = jpeg(image)
    cut = data[: len(data) // 2] + b"\xff\xd9"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(pb.DetectRequest(image=pb.Image(encoded=cut)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "JPEG image is corrupt or truncated" in (err.value.details() or "")
    # The server goes on answering.
    reply = await run.stub.Detect(pb.DetectRequest(image=pb.Image(encoded=data)))
    assert {label for label, _, _ in boxes_of(reply)} >= {"red", "blue"}
