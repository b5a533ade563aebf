"""Client images to model input: decode (JPEG/PNG or raw frames), letterbox, normalise.

Everything here runs once per request, so bad input must fail fast with a message a caller can
act on, and a decompression bomb must be refused from its header, before any pixel is decoded
(image_header.py's checks, re-exported here).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from detserve.engines.base import Letterbox, PreparedImage
from detserve.engines.image_header import (
    ACCEPTED,
    JPEG_SOI,
    MIN_IMAGE_SIDE,
    PIXEL_FORMATS,
    PNG_SIGNATURE,
    ImageError,
    ImageHeader,
    ImageTooLargeError,
    check_encoded,
    check_raw,
    read_header,
)
from detserve.engines.jpeg import JpegDecodeError, decode_bgr, orient, turns_sideways
from detserve.engines.manifest import ColorOrder, Manifest

__all__ = [
    "ACCEPTED", "JPEG_SOI", "MIN_IMAGE_SIDE", "PIXEL_FORMATS", "PNG_SIGNATURE", "DecodedImage",
    "ImageError", "ImageHeader", "ImageTooLargeError", "PreparedPixels", "canvas_geometry",
    "check_encoded", "check_raw", "decode_encoded", "decode_encoded_native", "decode_raw",
    "decode_raw_native", "jpeg_decode_size", "letterbox_for", "pixels_to_tensor", "prepare",
    "prepare_decoded", "prepare_pixels", "read_header",
]

@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels, HxWx3 uint8, and their channel order."""

    pixels: npt.NDArray[np.uint8]
    order: ColorOrder
    # (width, height) of the image as sent, where the pixels were decoded smaller (JPEG DCT
    # scaling); boxes map back to this size. None: the pixels are at that size.
    full_size: tuple[int, int] | None = None

    def to_rgb(self) -> npt.NDArray[np.uint8]:
        if self.order == "RGB":
            return self.pixels
        return np.asarray(cv2.cvtColor(self.pixels, cv2.COLOR_BGR2RGB), np.uint8)


@dataclass(frozen=True)
class PreparedPixels:
    """One image letterboxed to the model's input size: uint8 [H, W, 3] in the manifest's
    colour order, before normalisation."""

    pixels: npt.NDArray[np.uint8]
    letterbox: Letterbox


def jpeg_decode_size(header: ImageHeader, manifest: Manifest) -> tuple[int, int] | None:
    """The (width, height), as stored, to decode a JPEG at least twice the model input down to
    in the DCT (libjpeg-turbo picks the smallest M/8 scale at least that large): what the
    letterbox (or stretch) would resize it to, so the detail the model sees is kept and the
    decode does less work. None: decode in full (PNG, or a JPEG under twice the input)."""
    if header.format != "JPEG":
        return None
    w, h = header.display_size
    new_w, new_h, _, _ = canvas_geometry(w, h, manifest)
    if w < 2 * new_w or h < 2 * new_h:
        return None
    return (new_h, new_w) if turns_sideways(header.orientation) else (new_w, new_h)


def decode_encoded_native(data: bytes, max_pixels: int,
                          manifest: Manifest | None = None) -> DecodedImage:
    """JPEG/PNG bytes -> HxWx3 uint8 in OpenCV's BGR order, refusing what the server does not
    accept. No colour conversion at full size: prepare_pixels reorders after the resize. With
    `manifest`, a JPEG at least twice the model input is decoded reduced (jpeg_reduction); the
    image keeps its original size for the letterbox, which maps boxes to the caller's pixels."""
    header = check_encoded(data, max_pixels)
    if header.format == "JPEG":
        return _decode_jpeg(data, header, None if manifest is None
                            else jpeg_decode_size(header, manifest))
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ImageError(f"{header.format} image could not be decoded (corrupt data)")
    # The header checks above should have caught these; the decoded array is the final word.
    if image.dtype != np.uint8:
        raise ImageError(f"{header.format} image decodes to {image.dtype} samples; {ACCEPTED}")
    channels = 1 if image.ndim == 2 else image.shape[2]
    if channels != 3:
        kind = {1: "grayscale", 2: "grayscale+alpha", 4: "RGBA"}.get(channels, f"{channels}-ch")
        raise ImageError(f"{header.format} image decodes to {kind}; {ACCEPTED}")
    if image.shape[:2] != (header.height, header.width):
        raise ImageError(
            f"{header.format} image header says {header.width}x{header.height} but it decodes "
            f"to {image.shape[1]}x{image.shape[0]}"
        )
    return DecodedImage(np.asarray(image, np.uint8), "BGR")


def _decode_jpeg(data: bytes, header: ImageHeader,
                 size: tuple[int, int] | None) -> DecodedImage:
    """Strict decode, scaled down to at least `size` (stored orientation) when given, then
    turned upright; the letterbox then maps boxes to the turned image at its full size."""
    try:
        image = decode_bgr(data, *(size or (0, 0)))
    except JpegDecodeError as exc:
        raise ImageError(f"JPEG image is corrupt or truncated: {exc}") from exc
    full = (header.height, header.width)
    low = full if size is None else (size[1], size[0])
    if not (low[0] <= image.shape[0] <= full[0] and low[1] <= image.shape[1] <= full[1]):
        raise ImageError(
            f"JPEG image header says {header.width}x{header.height} but it decodes to "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    upright = orient(image, header.orientation)
    shown = header.display_size
    scaled = upright.shape[1::-1] != shown
    return DecodedImage(upright, "BGR", shown if scaled else None)


def decode_encoded(data: bytes, max_pixels: int) -> npt.NDArray[np.uint8]:
    """JPEG/PNG bytes -> HxWx3 uint8 RGB, refusing what the server does not accept."""
    return decode_encoded_native(data, max_pixels).to_rgb()


def decode_raw_native(
    data: bytes, height: int, width: int, pixel_format: str, max_pixels: int
) -> DecodedImage:
    """A raw frame -> HxWx3 uint8 in its own order (a read-only view); GRAY8 replicated."""
    channels = check_raw(data, height, width, pixel_format, max_pixels)
    pixels = np.frombuffer(data, np.uint8).reshape(height, width, channels)
    if pixel_format == "GRAY8":
        return DecodedImage(np.asarray(cv2.cvtColor(pixels, cv2.COLOR_GRAY2RGB), np.uint8), "RGB")
    return DecodedImage(pixels, "BGR" if pixel_format == "BGR8" else "RGB")


def decode_raw(
    data: bytes, height: int, width: int, pixel_format: str, max_pixels: int
) -> npt.NDArray[np.uint8]:
    """A raw frame -> HxWx3 uint8 RGB (GRAY8 replicated). RGB8 returns a read-only view."""
    return decode_raw_native(data, height, width, pixel_format, max_pixels).to_rgb()


def _letterbox_geometry(w: int, h: int, in_w: int, in_h: int) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top) as Ultralytics computes them: keep aspect, centre the image."""
    r = min(in_w / w, in_h / h)
    new_w = min(in_w, max(1, round(w * r)))
    new_h = min(in_h, max(1, round(h * r)))
    # Ultralytics splits odd padding with round(d -/+ 0.1): the extra pixel goes right/bottom.
    left = round((in_w - new_w) / 2 - 0.1)
    top = round((in_h - new_h) / 2 - 0.1)
    return new_w, new_h, left, top


def canvas_geometry(width: int, height: int, manifest: Manifest) -> tuple[int, int, int, int]:
    """(new_w, new_h, left, top): where an image of `width` x `height` lands on the model's
    canvas, letterboxed or stretched as the manifest says. The device letterbox
    (engines/gpu_decode.py) uses the same numbers, so boxes map back identically."""
    if manifest.preprocess.resize == "stretch":
        return manifest.input_width, manifest.input_height, 0, 0
    return _letterbox_geometry(width, height, manifest.input_width, manifest.input_height)


def letterbox_for(width: int, height: int, manifest: Manifest) -> Letterbox:
    """The Letterbox (input = original * scale + pad) of canvas_geometry."""
    new_w, new_h, left, top = canvas_geometry(width, height, manifest)
    return Letterbox(new_w / width, new_h / height, float(left), float(top), width, height)


def _resize_into_canvas(
    image: npt.NDArray[np.uint8], manifest: Manifest, reorder: bool,
    full_size: tuple[int, int] | None = None,
) -> tuple[npt.NDArray[np.uint8], Letterbox]:
    """The letterboxed (or stretched) model-size canvas; `reorder` swaps R and B, done here at
    model size rather than on the full-size image. `full_size`: (width, height) the geometry is
    computed for, when `image` was decoded smaller."""
    h, w = image.shape[:2] if full_size is None else full_size[::-1]
    in_w, in_h = manifest.input_width, manifest.input_height
    new_w, new_h, left, top = canvas_geometry(w, h, manifest)
    box = letterbox_for(w, h, manifest)
    resized = (
        image
        if (new_w, new_h) == image.shape[1::-1]
        else np.asarray(cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR), np.uint8)
    )
    if reorder:
        resized = np.asarray(cv2.cvtColor(resized, cv2.COLOR_BGR2RGB), np.uint8)
    if (new_w, new_h) == (in_w, in_h):
        return np.ascontiguousarray(resized), box
    pad = manifest.preprocess.pad_value
    if pad > 255:
        raise ValueError(f"manifest field 'preprocess.pad_value' must be <= 255, got {pad}")
    canvas = np.full((in_h, in_w, 3), pad, np.uint8)
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas, box


def prepare_pixels(
    image: npt.NDArray[np.uint8], manifest: Manifest, order: ColorOrder = "RGB",
    full_size: tuple[int, int] | None = None,
) -> PreparedPixels:
    """Letterbox (or stretch) an HxWx3 uint8 image in `order` into the model-size uint8 canvas,
    in the manifest's colour order: what engines that normalise in their graph take.
    `full_size`: the (width, height) sent, for an image decoded smaller (DecodedImage)."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"prepare needs an HxWx3 uint8 image, got {image.dtype} {image.shape}")
    if min(image.shape[:2]) < 1:
        raise ImageError(f"image is empty: shape {image.shape}")
    reorder = order != manifest.preprocess.color_order
    canvas, box = _resize_into_canvas(image, manifest, reorder, full_size)
    return PreparedPixels(canvas, box)


def prepare_decoded(decoded: DecodedImage, manifest: Manifest) -> PreparedPixels:
    return prepare_pixels(decoded.pixels, manifest, decoded.order, decoded.full_size)


def pixels_to_tensor(batch: npt.NDArray[np.uint8], manifest: Manifest) -> npt.NDArray[np.float32]:
    """[B, H, W, 3] uint8 canvases (manifest colour order) -> the model's float32 [B, 3, H, W]."""
    n, h, w, _ = batch.shape
    pre = manifest.preprocess
    # One (B*H, W, 3) image for cv2.split: contiguous planes, about twice as fast as a strided
    # transpose.
    planes = cv2.split(np.ascontiguousarray(batch).reshape(n * h, w, 3))
    tensor = np.empty((n, 3, h, w), np.float32)
    # (x * scale - mean) / std == x * (scale / std) - mean / std: a multiply and maybe a subtract.
    for c in range(3):
        out = tensor[:, c]
        out[...] = planes[c].reshape(n, h, w)
        out *= np.float32(pre.scale / pre.std[c])
        if pre.mean[c]:
            out -= np.float32(pre.mean[c] / pre.std[c])
    return tensor


def prepare(image_rgb: npt.NDArray[np.uint8], manifest: Manifest) -> PreparedImage:
    """Letterbox (or stretch) an HxWx3 uint8 RGB image into the manifest's float32 [3,H,W]."""
    if image_rgb.dtype != np.uint8 or image_rgb.ndim != 3 or image_rgb.shape[2] != 3:
        raise ImageError(
            f"prepare needs an HxWx3 uint8 RGB image, got {image_rgb.dtype} {image_rgb.shape}"
        )
    pixels = prepare_pixels(image_rgb, manifest, "RGB")
    return PreparedImage(pixels_to_tensor(pixels.pixels[None], manifest)[0], pixels.letterbox)
