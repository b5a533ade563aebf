"""JPEGs left encoded for the engine to decode on its device (torch-cuda `decode: device`).

The front end still reads the header (size for admission and the pixel budget, EXIF
orientation, the letterbox) and refuses bad input as it does for host decode; what it hands to
the batch is the encoded bytes plus where the picture lands on the canvas. The engine decodes
the whole batch in one `torchvision.io.decode_jpeg(list, device=...)` call and letterboxes there
(engines/gpu_decode.py). Nothing here imports torch: the front end runs without it.

Only what nvJPEG decodes goes to the device: 8-bit 3-component baseline or extended-sequential
Huffman JPEGs (SOF0, SOF1). Progressive and other frame types, and PNGs, are decoded on the host
for that image (grayscale and CMYK are refused on the host path, with its message).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from detserve.engines.base import Letterbox
from detserve.engines.manifest import Manifest
from detserve.engines.preprocess import (
    ImageError,
    PreparedPixels,
    canvas_geometry,
    check_encoded,
    letterbox_for,
)

# SOF0 (baseline) and SOF1 (extended sequential, Huffman): what nvJPEG's decoders all take.
DEVICE_FRAMES = frozenset({0xC0, 0xC1})
DECODE_MODES = ("host", "device")
_NO_PIXELS: npt.NDArray[np.uint8] = np.zeros((0, 0, 3), np.uint8)


@dataclass(frozen=True)
class DeviceJpeg:
    """One JPEG for the device: its bytes and where its decoded picture goes on the canvas."""

    data: bytes | memoryview  # memoryview: a view of a worker's slot (server/workers/slots.py)
    stored_size: tuple[int, int]  # (width, height) as stored: what the decode must return
    orientation: int  # EXIF orientation (engines/jpeg.py), applied on the device
    resized: tuple[int, int]  # (new_w, new_h) of the upright picture on the canvas
    offset: tuple[int, int]  # (left, top) of it on the canvas
    letterbox: Letterbox


@dataclass(frozen=True)
class EncodedJpeg(PreparedPixels):
    """A request's image left encoded: `pixels` is empty, the engine decodes `jpeg`."""

    jpeg: DeviceJpeg


def plan_device_jpeg(data: bytes, max_pixels: int, manifest: Manifest) -> DeviceJpeg | None:
    """The device plan for JPEG bytes the server accepts, or None to decode them on the host
    (PNG, progressive and other frame types). Bad input raises ImageError, as on the host."""
    header = check_encoded(data, max_pixels)
    if header.format != "JPEG" or header.frame not in DEVICE_FRAMES:
        return None
    width, height = header.display_size
    new_w, new_h, left, top = canvas_geometry(width, height, manifest)
    return DeviceJpeg(data, (header.width, header.height), header.orientation, (new_w, new_h),
                      (left, top), letterbox_for(width, height, manifest))


def deferred(jpeg: DeviceJpeg) -> EncodedJpeg:
    return EncodedJpeg(_NO_PIXELS, jpeg.letterbox, jpeg)


def device_jpeg_of(prepared: PreparedPixels) -> DeviceJpeg | None:
    return prepared.jpeg if isinstance(prepared, EncodedJpeg) else None


def check_decode_mode(decode: str, engine: str) -> str:
    if decode not in DECODE_MODES:
        raise ValueError(f"{engine} engine option 'decode' must be one of {list(DECODE_MODES)}, "
                         f"got {decode!r}")
    return decode


def decode_failure(jpeg: DeviceJpeg, device: str, exc: BaseException) -> ImageError:
    """What the caller of a JPEG its header accepted but the device decoder refused is told."""
    width, height = jpeg.stored_size
    return ImageError(
        f"JPEG image ({width}x{height}, {len(jpeg.data)} bytes) is corrupt: its header is valid "
        f"but the JPEG decoder on {device} refused its data ({type(exc).__name__}: "
        f"{str(exc)[:200]}); re-encode the image or send it as PNG"
    )


@dataclass(frozen=True)
class DeviceRun:
    """Raw outputs of a batch run by `infer_images`, and the images that failed their decode
    (index -> error): their rows were computed on an empty canvas and must not be answered."""

    outputs: Sequence[npt.NDArray[np.generic]]
    failed: Mapping[int, ImageError]


@runtime_checkable
class JpegDeviceEngine(Protocol):
    """An engine that takes a batch of host canvases and encoded JPEGs, decoding the JPEGs on
    its own device."""

    @property
    def decodes_jpeg(self) -> bool:
        """Whether the engine was built to decode JPEGs on its device (`decode: device`)."""
        ...

    def infer_images(self, images: Sequence[npt.NDArray[np.uint8] | DeviceJpeg]) -> DeviceRun:
        """Run a batch of [H, W, 3] uint8 canvases (the manifest's colour order) and JPEGs."""
        ...
