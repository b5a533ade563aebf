"""Benchmark inputs: synthetic scenes or a folder of images, encoded once, up front."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, cast

import cv2
import numpy as np
import numpy.typing as npt

from detserve.client.images import (
    EncodeFormat,
    encode_rgb,
    folder_images,
    image_from_array,
    image_from_bytes,
    synthetic_images,
)
from detserve.protos import detection_pb2 as pb

FORMATS = ("jpeg", "png", "raw")


@dataclass(frozen=True)
class InputSpec:
    source: str = "synthetic"  # "synthetic" or a folder of JPEG/PNG files
    count: int = 16
    width: int = 640
    height: int = 480
    format: str = "jpeg"  # how synthetic frames are sent: jpeg, png or raw RGB8

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"input format must be one of {list(FORMATS)}, got {self.format!r}")
        if self.count < 1:
            raise ValueError(f"input count must be >= 1, got {self.count!r}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Inputs:
    images: list[pb.Image]
    rgb: list[npt.NDArray[np.uint8]]  # decoded originals, for the raw-engine baseline
    mean_bytes: float


def load_inputs(spec: InputSpec) -> Inputs:
    if spec.source == "synthetic":
        frames = synthetic_images(spec.count, spec.width, spec.height)
        if spec.format == "raw":
            images = [image_from_array(f, "RGB8") for f in frames]
        else:
            fmt = cast(EncodeFormat, spec.format)
            images = [image_from_bytes(encode_rgb(f, fmt)) for f in frames]
    else:
        files = folder_images(spec.source)[: spec.count]
        images = [image_from_bytes(p.read_bytes()) for p in files]
        frames = [_decode(p.read_bytes(), str(p)) for p in files]
    sizes = [len(im.encoded) if im.HasField("encoded") else len(im.raw.data) for im in images]
    return Inputs(images, frames, sum(sizes) / len(sizes))


def _decode(data: bytes, name: str) -> npt.NDArray[np.uint8]:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"OpenCV cannot decode input image {name!r}")
    return np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def build_requests(images: list[pb.Image], model: str = "") -> list[pb.DetectRequest]:
    return [pb.DetectRequest(model=model, image=im, request_id=f"bench-{i}")
            for i, im in enumerate(images)]
