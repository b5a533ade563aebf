"""Client images to model input: decode (JPEG/PNG or raw frames), letterbox, normalise.

Everything here runs once per request, so bad input must fail fast with a message a caller can
act on, and a decompression bomb must be refused from its header, before any pixel is decoded.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from detserve.engines.base import Letterbox, PreparedImage
from detserve.engines.jpeg import (
    JpegDecodeError,
    decode_bgr,
    exif_orientation,
    is_app1,
    orient,
    turns_sideways,
)
from detserve.engines.manifest import ColorOrder, Manifest

# Below this side an image carries no detectable object; 1x1 "images" are a classic probe.
MIN_IMAGE_SIDE = 8
PIXEL_FORMATS = {"RGB8": 3, "BGR8": 3, "GRAY8": 1}
ACCEPTED = "accepted: 8-bit 3-channel colour JPEG or PNG, or a raw RGB8/BGR8/GRAY8 frame"

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
# SOF0..SOF15 carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range: not SOFs.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers that stand alone, without a length field.
_JPEG_NO_LENGTH = frozenset(range(0xD0, 0xD8)) | {0x01, 0xD8}
_JPEG_SOS = 0xDA
# PNG colour types: 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA.
_PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}


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


class ImageError(ValueError):
    """Bad client input; its message is sent back as INVALID_ARGUMENT."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than the configured limit."""


@dataclass(frozen=True)
class ImageHeader:
    """What the file header says, read without decoding."""

    format: str  # "JPEG" or "PNG"
    width: int
    height: int
    bit_depth: int
    channels: int
    color: str  # human-readable colour model, for messages
    orientation: int = 1  # EXIF orientation of a JPEG (engines/jpeg.py); 1: as stored

    @property
    def display_size(self) -> tuple[int, int]:
        """(width, height) once turned upright, as a viewer shows it (and boxes are given)."""
        if turns_sideways(self.orientation):
            return self.height, self.width
        return self.width, self.height


def _check_size(width: int, height: int, max_pixels: int, what: str) -> None:
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be >= 1, got {max_pixels}")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {width * height} pixels, above the limit of "
            f"{max_pixels} pixels"
        )
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageError(
            f"{what} is {width}x{height}; both sides must be at least {MIN_IMAGE_SIDE} pixels"
        )


def _png_header(data: bytes) -> ImageHeader:
    # Signature, then the IHDR chunk must come first: length, b"IHDR", width, height, depth, type.
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise ImageError(f"PNG image is truncated or malformed: no IHDR chunk in {len(data)} bytes")
    width, height, depth, color_type = struct.unpack(">IIBB", data[16:26])
    if color_type not in _PNG_COLOR_TYPES:
        raise ImageError(f"PNG image has an invalid colour type {color_type}")
    channels = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}[color_type]
    return ImageHeader("PNG", width, height, depth, channels, _PNG_COLOR_TYPES[color_type])


def _check_png_chunks(data: bytes) -> None:
    """Every chunk within the file, up to IEND. OpenCV's decoder allocates what a chunk's length
    field claims before reading it: a 3 KB file whose IDAT claims 4 GB cost 4 GB and 12 s
    (found by fuzzing, tests/fuzz)."""
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if pos + 12 + length > len(data):
            raise ImageError(
                f"PNG image is truncated or malformed: its {kind.decode('ascii', 'replace')!r} "
                f"chunk at byte {pos} claims {length} bytes, {len(data) - pos - 12} remain"
            )
        if kind == b"IEND":
            return
        pos += 12 + length
    raise ImageError(f"PNG image is truncated: no IEND chunk at the end of {len(data)} bytes")


def _jpeg_header(data: bytes) -> tuple[ImageHeader, int]:
    """The frame header and the offset of the first SOS (start of scan) marker."""
    pos, header, orientation = 2, None, 1
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError(f"JPEG image is malformed: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _JPEG_NO_LENGTH:
            pos += 2
            continue
        if marker == _JPEG_SOS:
            if header is None:
                raise ImageError("JPEG image is malformed: scan data before the frame header")
            return dataclasses.replace(header, orientation=orientation), pos
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if is_app1(marker) and orientation == 1:
            orientation = exif_orientation(data, pos, length)
        if marker in _JPEG_SOF and header is None:
            if pos + 10 > len(data):
                break
            depth, height, width, comps = struct.unpack(">BHHB", data[pos + 4 : pos + 10])
            color = {1: "grayscale", 3: "YCbCr colour", 4: "CMYK"}.get(comps, f"{comps}-component")
            header = ImageHeader("JPEG", width, height, depth, comps, color)
        pos += 2 + length
    raise ImageError(f"JPEG image is truncated: its headers end early ({len(data)} bytes)")


def read_header(data: bytes) -> ImageHeader:
    """Parse a JPEG/PNG header without decoding; refuse anything else, and truncated files."""
    if not data:
        raise ImageError(f"image is empty (0 bytes); {ACCEPTED}")
    if data.startswith(PNG_SIGNATURE):
        header = _png_header(data)
        _check_png_chunks(data)
        return header
    if data.startswith(JPEG_SOI):
        header, sos = _jpeg_header(data)
        # Entropy-coded data escapes 0xFF as FF00, so an EOI after the first scan is the real end
        # (an EXIF thumbnail's own EOI sits before it). OpenCV would return a half-grey image.
        if data.find(JPEG_EOI, sos) < 0:
            raise ImageError(
                f"JPEG image is truncated: no end-of-image marker after the scan data "
                f"({len(data)} bytes)"
            )
        return header
    raise ImageError(f"data is not a JPEG or PNG image (starts with {data[:8].hex()}); {ACCEPTED}")


def _check_color(header: ImageHeader) -> None:
    if header.bit_depth > 8:
        raise ImageError(f"{header.format} image has {header.bit_depth}-bit samples; {ACCEPTED}")
    if header.channels != 3:
        raise ImageError(f"{header.format} image is {header.color}; {ACCEPTED}")


def check_encoded(data: bytes, max_pixels: int) -> ImageHeader:
    """The header of JPEG/PNG bytes the server accepts, or ImageError; nothing is decoded."""
    header = read_header(data)
    _check_size(header.width, header.height, max_pixels, f"{header.format} image")
    _check_color(header)
    return header


def check_raw(data: bytes, height: int, width: int, pixel_format: str, max_pixels: int) -> int:
    """The channel count of a raw frame the server accepts, or ImageError."""
    channels = PIXEL_FORMATS.get(pixel_format)
    if channels is None:
        raise ImageError(
            f"raw frame pixel format {pixel_format!r} is not supported; use one of "
            f"{sorted(PIXEL_FORMATS)}"
        )
    if height < 1 or width < 1:
        raise ImageError(f"raw frame size must be positive, got height={height}, width={width}")
    _check_size(width, height, max_pixels, "raw frame")
    expected = height * width * channels
    if len(data) != expected:
        raise ImageError(
            f"raw frame has {len(data)} bytes but height x width x channels = "
            f"{height} x {width} x {channels} = {expected} for {pixel_format}"
        )
    return channels


def jpeg_decode_size(header: ImageHeader, manifest: Manifest) -> tuple[int, int] | None:
    """The (width, height), as stored, to decode a JPEG at least twice the model input down to
    in the DCT (libjpeg-turbo picks the smallest M/8 scale at least that large): what the
    letterbox (or stretch) would resize it to, so the detail the model sees is kept and the
    decode does less work. None: decode in full (PNG, or a JPEG under twice the input)."""
    if header.format != "JPEG":
        return None
    w, h = header.display_size
    in_w, in_h = manifest.input_width, manifest.input_height
    if manifest.preprocess.resize == "stretch":
        new_w, new_h = in_w, in_h
    else:
        new_w, new_h, _, _ = _letterbox_geometry(w, h, in_w, in_h)
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


def _resize_into_canvas(
    image: npt.NDArray[np.uint8], manifest: Manifest, reorder: bool,
    full_size: tuple[int, int] | None = None,
) -> tuple[npt.NDArray[np.uint8], Letterbox]:
    """The letterboxed (or stretched) model-size canvas; `reorder` swaps R and B, done here at
    model size rather than on the full-size image. `full_size`: (width, height) the geometry is
    computed for, when `image` was decoded smaller."""
    h, w = image.shape[:2] if full_size is None else full_size[::-1]
    in_w, in_h = manifest.input_width, manifest.input_height
    if manifest.preprocess.resize == "stretch":
        left = top = 0
        new_w, new_h = in_w, in_h
    else:
        new_w, new_h, left, top = _letterbox_geometry(w, h, in_w, in_h)
    box = Letterbox(new_w / w, new_h / h, float(left), float(top), w, h)
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
