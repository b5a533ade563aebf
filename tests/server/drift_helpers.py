"""Frames for the drift-alert tests: a synthetic camera (models/scenes.py) with its blank
background, and blocks frames (tests/conftest.py's blocks model) whose scores are chosen: a
block of value v on a cell scores exactly v / 255."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from detserve.models.scene_backgrounds import render_background, sensor_effects
from detserve.models.scenes import render_camera
from detserve.protos import detection_pb2 as pb

from .conftest import CELL, png

Image = npt.NDArray[np.uint8]
BLOCK_SIDE = 128  # the blocks package at 128x128: 16 cells


def camera_frames(seed: int, n: int, width: int = 320, height: int = 240) -> list[Image]:
    """n frames of a busy synthetic camera (moving shapes over one background)."""
    return [scene.image for scene in render_camera(seed, n, width, height)]


def blank_frames(seed: int, n: int, width: int = 320, height: int = 240) -> list[Image]:
    """The same camera with nothing in front of it: its background, with fresh sensor noise."""
    background = render_background(np.random.default_rng(seed), width, height)
    return [sensor_effects(np.random.default_rng((seed, 10_000 + k)), background)
            for k in range(n)]


def blocks_frame(rng: np.random.Generator, low: float, high: float
                 ) -> tuple[Image, list[tuple[int, int, int, int]]]:
    """1-6 blocks on distinct cells, each of a random class at a value in [low, high] * 255;
    returns the RGB image and each block's (x, y, class, value)."""
    image = np.zeros((BLOCK_SIDE, BLOCK_SIDE, 3), np.uint8)
    per_row = BLOCK_SIDE // CELL
    blocks = []
    for cell in rng.choice(per_row * per_row, int(rng.integers(1, 7)), replace=False):
        x, y = int(cell % per_row) * CELL, int(cell // per_row) * CELL
        channel, value = int(rng.integers(3)), round(float(rng.uniform(low, high)) * 255)
        image[y : y + CELL, x : x + CELL, channel] = value
        blocks.append((x, y, channel, value))
    return image, blocks


def write_blocks_val(root: Path, n: int, seed: int, low: float, high: float) -> Path:
    """A COCO val set of n blocks frames; returns its annotations.json."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i in range(1, n + 1):
        image, blocks = blocks_frame(rng, low, high)
        cv2.imwrite(str(root / f"images/{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        images.append({"id": i, "file_name": f"images/{i}.png", "width": BLOCK_SIDE,
                       "height": BLOCK_SIDE})
        for x, y, channel, _ in blocks:
            anns.append({"id": len(anns) + 1, "image_id": i, "bbox": [x, y, CELL, CELL],
                         "category_id": channel + 1, "area": CELL * CELL, "iscrowd": 0})
    doc = {"info": {"split": "val"}, "images": images, "annotations": anns,
           "categories": [{"id": k + 1, "name": c} for k, c in enumerate(("red", "green",
                                                                         "blue"))]}
    path = root / "annotations.json"
    path.write_text(json.dumps(doc))
    return path


def blocks_requests(n: int, seed: int, low: float, high: float) -> list[pb.DetectRequest]:
    rng = np.random.default_rng(seed)
    return [pb.DetectRequest(frame_id=k, image=pb.Image(encoded=png(blocks_frame(rng, low,
                                                                                 high)[0])))
            for k in range(n)]


class FrameFeed:
    """A DetectStream's requests, sent one at a time by the test."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[pb.DetectRequest | None] = asyncio.Queue()

    async def requests(self) -> AsyncIterator[pb.DetectRequest]:
        while (request := await self.queue.get()) is not None:
            yield request

    def send(self, image: Image, frame_id: int) -> None:
        self.queue.put_nowait(pb.DetectRequest(frame_id=frame_id,
                                               image=pb.Image(encoded=png(image))))

    def close(self) -> None:
        self.queue.put_nowait(None)
