"""Turning the caller's images (file paths, encoded bytes, numpy frames) into request images.

Numpy frames are BGR by default, OpenCV's order (image_from_array says how to send RGB).
Encoded files the server does not decode itself are converted first (detserve.client.convert).
The synthetic generator lives in detserve.models and pulls in its own dependencies, so it is
imported lazily, only when synthetic inputs are asked for.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal, TypeAlias, cast

import cv2
import numpy as np
import numpy.typing as npt

from detserve.client.convert import PIXEL_FORMAT_CODES, encoded_image, pixels_image
from detserve.protos import detection_pb2 as pb

ImageInput: TypeAlias = "str | os.PathLike[str] | bytes | npt.NDArray[np.uint8]"
PixelFormat = Literal["RGB8", "BGR8", "GRAY8"]
EncodeFormat = Literal["jpeg", "png"]

DEFAULT_PIXEL_FORMAT: PixelFormat = "BGR8"  # OpenCV's order: cv2.imread, cv2.VideoCapture
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")  # what the server decodes itself
# What the client converts too (detserve.client.convert), for folders given to detserve-client.
CONVERTED_SUFFIXES = (".bmp", ".webp", ".tif", ".tiff", ".gif")


def parse_pixel_format(value: str) -> PixelFormat:
    """Validate a pixel format name from the command line or a config file."""
    if value not in PIXEL_FORMAT_CODES:
        raise ValueError(f"pixel_format must be one of {sorted(PIXEL_FORMAT_CODES)}, got {value!r}")
    return cast(PixelFormat, value)


def image_from_bytes(data: bytes) -> pb.Image:
    """Encoded bytes sent exactly as they are (the server decodes and validates them); to_image
    converts what the server does not take first (detserve.client.convert)."""
    return pb.Image(encoded=bytes(data))


def image_from_path(path: str | os.PathLike[str]) -> pb.Image:
    """An image file: JPEG/PNG as it is, other formats converted here (see to_image)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image file not found: {str(p)!r}")
    return encoded_image(p.read_bytes())


def image_from_array(frame: npt.NDArray[np.uint8],
                     pixel_format: PixelFormat = DEFAULT_PIXEL_FORMAT) -> pb.Image:
    """A numpy frame as a raw request frame. COLOUR FRAMES ARE BGR BY DEFAULT.

    BGR is OpenCV's order, what cv2.imread and cv2.VideoCapture return, so their arrays go as
    they are. Pass pixel_format="RGB8" for RGB arrays (PIL, imageio, matplotlib, torchvision):
    an RGB array sent as BGR swaps red and blue, and a colour-trained model sees other objects.
    Shapes: HxWx3; HxWx4 (BGRA, or RGBA with "RGB8"; alpha is dropped); HxW or HxWx1 grey,
    sent as GRAY8 whatever the colour order. pixel_format="GRAY8" insists on one channel.
    """
    fmt = parse_pixel_format(pixel_format)
    if frame.dtype != np.uint8:
        raise ValueError(f"frame dtype must be uint8, got {frame.dtype}")
    channels = 1 if frame.ndim == 2 else (int(frame.shape[2]) if frame.ndim == 3 else 0)
    if channels not in (1, 3, 4) or (fmt == "GRAY8" and channels != 1):
        want = "HxW or HxWx1" if fmt == "GRAY8" else "HxWx3, HxWx4, HxW or HxWx1"
        raise ValueError(f"a {fmt} frame must be {want}, got shape {frame.shape}")
    # Always raw: a caller's own frames keep the wire format it chose (the bench's "raw").
    return pixels_image(frame, raw_max_bytes=sys.maxsize,
                        color_order="RGB" if fmt == "RGB8" else "BGR")


def to_image(image: ImageInput | pb.Image,
             pixel_format: PixelFormat = DEFAULT_PIXEL_FORMAT) -> pb.Image:
    """Accept any supported input: pb.Image, numpy frame (BGR by default, see
    image_from_array), encoded bytes or a file path. Encoded images the server does not take
    (grey, RGBA, 16-bit, palette, WebP, BMP, TIFF...) are converted here first."""
    if isinstance(image, pb.Image):
        return image
    if isinstance(image, np.ndarray):
        return image_from_array(image, pixel_format)
    if isinstance(image, bytes | bytearray | memoryview):
        return encoded_image(bytes(image))
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


def folder_images(folder: str | os.PathLike[str],
                  suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """The image files (by `suffixes`, JPEG/PNG by default) directly inside `folder`, sorted."""
    root = Path(folder)
    if not root.is_dir():
        raise NotADirectoryError(f"image folder not found: {str(root)!r}")
    files = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise ValueError(f"no {'/'.join(suffixes)} files in {str(root)!r}")
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
    """BGR frames of a video file (as OpenCV reads them; send them as BGR8).

    The file is opened and its first frame decoded here, before the iterator is returned, so a
    missing file (FileNotFoundError) or one OpenCV cannot read as a video (ValueError) fails at
    the call, not inside a stream that is already sending."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"video file not found: {str(p)!r}")
    cap = cv2.VideoCapture(str(p))
    ok, first = cap.read() if cap.isOpened() else (False, None)
    if not ok or first is None:
        cap.release()
        raise ValueError(f"OpenCV cannot read {str(p)!r} as a video (not a video file, or a "
                         f"codec this OpenCV build lacks)")
    return _video_frames(cap, np.asarray(first, np.uint8), max_frames)


def _video_frames(cap: cv2.VideoCapture, first: npt.NDArray[np.uint8],
                  max_frames: int | None) -> Iterator[npt.NDArray[np.uint8]]:
    try:
        frame, count = first, 0
        while max_frames is None or count < max_frames:
            count += 1
            yield frame
            ok, nxt = cap.read()
            if not ok:
                break
            frame = np.asarray(nxt, np.uint8)
    finally:
        cap.release()
