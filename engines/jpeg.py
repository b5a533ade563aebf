"""JPEG specifics: the EXIF orientation tag, read from the header without decoding, and a strict
decode (libjpeg-turbo through simplejpeg) that can scale down in the DCT.

Orientation: the image is turned the way its EXIF tag says before anything else, as viewers,
Pillow's `exif_transpose`, OpenCV's `imread` and Ultralytics do, so boxes come back in the pixels
a person sees, and `image_width`/`image_height` in replies are those of the turned image.

Strict: OpenCV decodes a JPEG whose scan data was cut short (with or without an end marker
appended) and fills the rest with grey; libjpeg only warns. Here every libjpeg warning is an
error, so such a file is refused instead of answered on half a picture.
"""

from __future__ import annotations

import struct

import cv2
import numpy as np
import numpy.typing as npt

_APP1 = 0xE1
_EXIF = b"Exif\x00\x00"
_ORIENTATION_TAG = 0x0112
_SHORT = 3


def exif_orientation(data: bytes, segment: int, length: int) -> int:
    """The orientation (1-8) in the APP1 segment at `segment` (its marker's offset) of `length`
    bytes, 1 when it is not EXIF or carries no valid tag. Every offset is bounds-checked: the
    segment is client data."""
    start = segment + 4
    end = min(segment + 2 + length, len(data))
    if data[start : start + 6] != _EXIF:
        return 1
    tiff = start + 6
    order = data[tiff : tiff + 2]
    if order not in (b"II", b"MM"):
        return 1
    fmt = "<" if order == b"II" else ">"
    try:
        (ifd,) = struct.unpack(fmt + "I", data[tiff + 4 : tiff + 8])
        pos = tiff + ifd
        (count,) = struct.unpack(fmt + "H", data[pos : pos + 2])
        for i in range(min(count, 512)):
            entry = pos + 2 + 12 * i
            if entry + 12 > end:
                return 1
            tag, kind, _ = struct.unpack(fmt + "HHI", data[entry : entry + 8])
            if tag == _ORIENTATION_TAG and kind == _SHORT:
                (value,) = struct.unpack(fmt + "H", data[entry + 8 : entry + 10])
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def is_app1(marker: int) -> bool:
    return marker == _APP1


def turns_sideways(orientation: int) -> bool:
    """Orientations 5-8 swap width and height."""
    return orientation >= 5


def orient(image: npt.NDArray[np.uint8], orientation: int) -> npt.NDArray[np.uint8]:
    """`image` turned as EXIF `orientation` says (1: as stored)."""
    if orientation == 1:
        return image
    steps = {
        2: lambda im: cv2.flip(im, 1),
        3: lambda im: cv2.rotate(im, cv2.ROTATE_180),
        4: lambda im: cv2.flip(im, 0),
        5: lambda im: cv2.flip(cv2.rotate(im, cv2.ROTATE_90_CLOCKWISE), 1),
        6: lambda im: cv2.rotate(im, cv2.ROTATE_90_CLOCKWISE),
        7: lambda im: cv2.flip(cv2.rotate(im, cv2.ROTATE_90_COUNTERCLOCKWISE), 1),
        8: lambda im: cv2.rotate(im, cv2.ROTATE_90_COUNTERCLOCKWISE),
    }
    return np.ascontiguousarray(steps[orientation](image), np.uint8)


class JpegDecodeError(ValueError):
    """libjpeg refused the data, or warned about it (corrupt or truncated scan data)."""


def decode_bgr(data: bytes, min_width: int = 0, min_height: int = 0) -> npt.NDArray[np.uint8]:
    """Decode to HxWx3 BGR as stored (no orientation applied), scaled down in the DCT to the
    smallest size of at least `min_width` x `min_height` (0: full size)."""
    import simplejpeg

    try:
        image = simplejpeg.decode_jpeg(data, colorspace="BGR", min_width=min_width,
                                       min_height=min_height, strict=True)
    except ValueError as exc:
        raise JpegDecodeError(str(exc)) from exc
    return np.asarray(image, np.uint8)
