"""Turning the caller's images (file paths, encoded bytes, numpy frames) into request images.

The synthetic generator lives in detserve.models and pulls in its own dependencies, so it is
imported lazily, only when synthetic inputs are asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast

import cv2
import numpy as np
import numpy.typing as npt

from detserve.protos import detection_pb2 as pb

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | npt.NDArray[np.uint8]"
PixelFormat = Literal["RGB8", "BGR8", "GRAY8"]
EncodeFormat = Literal["jpeg", "png"]

_PIXEL_FORMATS: dict[str, Any] = {
    "RGB8": pb.PIXEL_FORMAT_RGB8,
    "BGR8": pb.PIXEL_FORMAT_BGR8,
    "GRAY8": pb.PIXEL_FORMAT_GRAY8,
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def parse_pixel_format(value: str) -> PixelFormat:
    """Validate a pixel format name from the command line or a config file."""
    if value not in _PIXEL_FORMATS:
        raise ValueError(f"pixel_format must be one of {sorted(_PIXEL_FORMATS)}, got {value!r}")
    return cast(PixelFormat, value)


def image_from_bytes(data: bytes) -> pb.Image:
    """An encoded JPEG/PNG image, sent as is (the server decodes and validates it)."""
    return pb.Image(encoded=bytes(data))


def image_from_path(path: str | os.PathLike[str]) -> pb.Image:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {str(p)!r}")
    return image_from_bytes(p.read_bytes())


def image_from_array(frame: npt.NDArray[np.uint8], pixel_format: PixelFormat = "RGB8") -> pb.Image:
    """A raw frame: HxWx3 uint8 for RGB8/BGR8, HxW (or HxWx1) uint8 for GRAY8."""
    if pixel_format not in _PIXEL_FORMATS:
        raise ValueError(
            f"pixel_format must be one of {sorted(_PIXEL_FORMATS)}, got {pixel_format!r}"
        )
    if frame.dtype != np.uint8:
        raise ValueError(f"frame dtype must be uint8, got {frame.dtype}")
    channels = 1 if pixel_format == "GRAY8" else 3
    shape_ok = (frame.ndim == 3 and frame.shape[2] == channels) or (
        channels == 1 and frame.ndim == 2
    )
    if not shape_ok:
        want = "HxW" if channels == 1 else "HxWx3"
        raise ValueError(f"a {pixel_format} frame must be {want}, got shape {frame.shape}")
    height, width = int(frame.shape[0]), int(frame.shape[1])
    raw = pb.RawFrame(
        data=np.ascontiguousarray(frame).tobytes(),
        height=height,
        width=width,
        pixel_format=_PIXEL_FORMATS[pixel_format],
    )
    return pb.Image(raw=raw)


def to_image(image: ImageInput | pb.Image, pixel_format: PixelFormat = "RGB8") -> pb.Image:
    """Accept any supported input: pb.Image, numpy frame, encoded bytes or a file path."""
    if isinstance(image, pb.Image):
        return image
    if isinstance(image, np.ndarray):
        return image_from_array(image, pixel_format)
    if isinstance(image, bytes | bytearray | memoryview):
        return image_from_bytes(bytes(image))
    if isinstance(image, str | os.PathLike):
        return image_from_path(image)
    raise TypeError(
        f"image must be a path, encoded bytes, a numpy frame or pb.Image, got {type(image)!r}"
    )


def encode_rgb(
    frame: npt.NDArray[np.uint8], fmt: EncodeFormat = "jpeg", quality: int = 90
) -> bytes:
    """Encode an HxWx3 RGB frame as JPEG or PNG bytes."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 uint8 RGB frame, got {frame.dtype} {frame.shape}")
    if fmt not in ("jpeg", "png"):
        raise ValueError(f"fmt must be 'jpeg' or 'png', got {fmt!r}")
    bgr = cv2.cvtColor(frame, cv2.COLOR_RGB2BGR)
    if fmt == "jpeg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {frame.shape} frame as {fmt}")
    return bytes(buf.tobytes())


def folder_images(folder: str | os.PathLike[str]) -> list[Path]:
    """The JPEG/PNG files directly inside `folder`, sorted by name."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder not found: {str(root)!r}")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no {'/'.join(IMAGE_SUFFIXES)} files in {str(root)!r}")
    return files


def synthetic_images(n: int, width: int, height: int, first_seed: int = 0) -> list[np.ndarray]:
    """`n` RGB scenes from the synthetic generator (test split seeds), deterministic."""
    from detserve.models.scenes import render_scene, split_seeds

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    seeds = split_seeds("test", n + first_seed)[first_seed:]
    return [render_scene(seed, width, height).image for seed in seeds]


def synthetic_camera(
    n_frames: int, width: int, height: int, seed: int = 0
) -> Iterator[npt.NDArray[np.uint8]]:
    """RGB frames of a synthetic camera (moving objects), from detserve.models.scenes."""
    from detserve.models.scenes import render_camera

    for scene in render_camera(seed, n_frames, width, height):
        yield scene.image


def video_frames(path: str | os.PathLike[str], max_frames: int | None = None) -> Iterator[
    npt.NDArray[np.uint8]
]:
    """BGR frames of a video file (as OpenCV reads them; send them as BGR8)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"video file not found: {str(path)!r}")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"OpenCV cannot open video {str(path)!r}")
    try:
        count = 0
        while max_frames is None or count < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            count += 1
            yield np.asarray(frame, dtype=np.uint8)
    finally:
        cap.release()
