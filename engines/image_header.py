"""Client image bytes checked from their headers alone, before any pixel is decoded: JPEG and
PNG headers parsed (size, bit depth, colour model, EXIF orientation), truncated or malformed
files refused, and a decompression bomb refused by its claimed size. Raw frames are checked
against their stated size and pixel format. Bad input is an ImageError, whose message goes back
to the caller as INVALID_ARGUMENT."""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

from detserve.engines.jpeg import exif_orientation, is_app1, turns_sideways

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
    frame: int = 0  # a JPEG's SOFn marker (0xC0 baseline, 0xC2 progressive, ...); 0 for PNG

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
            header = ImageHeader("JPEG", width, height, depth, comps, color, frame=marker)
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
        # Searched from the end, where a whole file has it: a forward search stops at every
        # 0xFF of the scan data, tens of µs per call on the event loop.
        if data.rfind(JPEG_EOI, sos) < 0:
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


