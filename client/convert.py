"""Encoded images the server does not take, converted here with OpenCV before they are sent.

The server accepts 8-bit 3-channel JPEG/PNG and raw RGB8/BGR8/GRAY8 frames (see ACCEPTED in
detserve.engines.preprocess). Users' files are often something else: grey JPEGs, RGBA or 16-bit
or palette PNGs, CMYK JPEGs, WebP, BMP, TIFF. Those are decoded here and sent as:
- a raw GRAY8 frame when the image is grey (grey+alpha too), 1 byte a pixel, as the server
  replicates it to 3 channels itself;
- a raw BGR8 frame otherwise, alpha dropped (as cv2.imread and Ultralytics' loaders drop it);
- a lossless 3-channel PNG instead of either raw frame when the raw bytes would pass
  RAW_MAX_BYTES, so a large photo stays well under the server's message limit (16 MiB default).
Accepted JPEG/PNG bytes go as they are, and so do bytes nothing can decode: the server's
INVALID_ARGUMENT then says what is wrong with them. Orientation is never applied (EXIF is
ignored, as on the server), so boxes are in the file's stored pixel grid either way.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from detserve.engines.preprocess import JPEG_SOI, PNG_SIGNATURE, ImageError, read_header
from detserve.protos import detection_pb2 as pb

# Well below the server's default max_message_bytes (16 MiB): a 1280x1024 colour frame fits.
RAW_MAX_BYTES = 4 * 1024 * 1024
PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # lossless either way; level 1 encodes fastest
PIXEL_FORMAT_CODES: dict[str, Any] = {
    "RGB8": pb.PIXEL_FORMAT_RGB8,
    "BGR8": pb.PIXEL_FORMAT_BGR8,
    "GRAY8": pb.PIXEL_FORMAT_GRAY8,
}


def server_takes(data: bytes) -> bool:
    """True when the server would decode these bytes as they are (or refuse them with its own
    clear message: malformed or truncated JPEG/PNG, which a local decode would only hide)."""
    if not data.startswith((PNG_SIGNATURE, JPEG_SOI)):
        return False
    try:
        header = read_header(data)
    except ImageError:
        return True
    return header.bit_depth <= 8 and header.channels == 3 and header.color != "palette"


def encoded_image(data: bytes, raw_max_bytes: int = RAW_MAX_BYTES) -> pb.Image:
    """The request image for encoded file bytes: as they are when the server takes them,
    otherwise decoded and converted here (see the module docstring)."""
    if server_takes(data):
        return pb.Image(encoded=data)
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8),
                          cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    if pixels is None:
        return pb.Image(encoded=data)  # not an image OpenCV knows: the server explains
    return pixels_image(to_8bit(np.asarray(pixels)), raw_max_bytes)


def to_8bit(pixels: npt.NDArray[np.generic]) -> npt.NDArray[np.uint8]:
    """Decoded samples as uint8: 16-bit ones keep their top byte (what cv2.IMREAD_COLOR does)."""
    if pixels.dtype == np.uint8:
        return np.asarray(pixels, np.uint8)
    if pixels.dtype == np.uint16:
        return np.asarray(np.asarray(pixels, np.uint16) >> 8, np.uint8)
    raise ValueError(f"image has {pixels.dtype} samples; only 8- and 16-bit images are converted")


def pixels_image(pixels: npt.NDArray[np.uint8], raw_max_bytes: int = RAW_MAX_BYTES,
                 color_order: str = "BGR") -> pb.Image:
    """Decoded pixels (HxW, HxWx1, HxWx2 grey+alpha, HxWx3, HxWx4 with alpha; colour in
    `color_order`) as a raw GRAY8/BGR8/RGB8 frame, or a PNG when that would pass raw_max_bytes."""
    channels = 1 if pixels.ndim == 2 else int(pixels.shape[2])
    if pixels.ndim not in (2, 3) or channels not in (1, 2, 3, 4):
        raise ValueError(f"cannot convert an image of shape {pixels.shape}")
    if channels <= 2:
        grey = pixels if pixels.ndim == 2 else pixels[:, :, 0]
        return _frame_or_png(np.ascontiguousarray(grey), "GRAY8", raw_max_bytes)
    colour = np.ascontiguousarray(pixels[:, :, :3])
    return _frame_or_png(colour, "RGB8" if color_order == "RGB" else "BGR8", raw_max_bytes)


def _frame_or_png(pixels: npt.NDArray[np.uint8], fmt: str, raw_max_bytes: int) -> pb.Image:
    height, width = int(pixels.shape[0]), int(pixels.shape[1])
    if pixels.nbytes <= raw_max_bytes:
        raw = pb.RawFrame(data=pixels.tobytes(), height=height, width=width,
                          pixel_format=PIXEL_FORMAT_CODES[fmt])
        return pb.Image(raw=raw)
    to_bgr = {"GRAY8": cv2.COLOR_GRAY2BGR, "RGB8": cv2.COLOR_RGB2BGR}
    bgr = cv2.cvtColor(pixels, to_bgr[fmt]) if fmt in to_bgr else pixels
    ok, buf = cv2.imencode(".png", bgr, PNG_FAST)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {width}x{height} image as PNG")
    return pb.Image(encoded=bytes(buf.tobytes()))
