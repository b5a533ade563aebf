"""Decoding and letterboxing, including every bad-image case of issue 2."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from detserve.engines.manifest import Manifest, Preprocess
from detserve.engines.preprocess import (
    MIN_IMAGE_SIDE,
    ImageError,
    ImageTooLargeError,
    decode_encoded,
    decode_encoded_native,
    decode_raw,
    decode_raw_native,
    pixels_to_tensor,
    prepare,
    prepare_pixels,
    read_header,
)

LIMIT = 4096 * 4096


def photo(width: int = 320, height: int = 240) -> npt.NDArray[np.uint8]:
    """A smooth gradient with a few shapes: compresses like a real photo, not like noise."""
    ys, xs = np.mgrid[0:height, 0:width]
    img = np.dstack([xs * 255 // width, ys * 255 // height, (xs + ys) * 127 // (width + height)])
    img = img.astype(np.uint8)
    cv2.circle(img, (width // 3, height // 2), height // 4, (250, 30, 30), -1)
    cv2.rectangle(img, (width // 2, height // 4), (width - 10, height - 10), (20, 200, 40), -1)
    return img


def encode(ext: str, image: npt.NDArray[np.integer] | cv2.typing.MatLike) -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return bytes(buf.tobytes())


def png_chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def manifest(**pre: Any) -> Manifest:
    return Manifest(
        name="m",
        version="1",
        classes=("a",),
        input_width=64,
        input_height=64,
        preprocess=dataclasses.replace(Preprocess(), **pre),
    )


def test_jpeg_and_png_decode_to_rgb() -> None:
    rgb = photo()
    png = decode_encoded(encode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)), LIMIT)
    np.testing.assert_array_equal(png, rgb)
    jpg = decode_encoded(encode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)), LIMIT)
    assert jpg.shape == (240, 320, 3)
    # The red disc's centre stays red after JPEG, so channels came back in RGB order.
    r, g, b = (int(v) for v in jpg[120, 106])
    assert r > 200 and g < 80 and b < 80


def test_header_read_without_decoding() -> None:
    header = read_header(encode(".jpg", photo(321, 123)))
    assert (header.format, header.width, header.height, header.channels) == ("JPEG", 321, 123, 3)
    header = read_header(encode(".png", photo(50, 40)))
    assert (header.format, header.width, header.height, header.bit_depth) == ("PNG", 50, 40, 8)


def test_zero_bytes() -> None:
    with pytest.raises(ImageError, match=r"empty \(0 bytes\)"):
        decode_encoded(b"", LIMIT)


def test_not_an_image() -> None:
    with pytest.raises(ImageError, match=r"not a JPEG or PNG image.*starts with 68656c6c6f"):
        decode_encoded(b"hello, this is text", LIMIT)


def test_truncated_jpeg_cut_in_half() -> None:
    data = encode(".jpg", photo(640, 480))
    with pytest.raises(ImageError, match="JPEG image is truncated"):
        decode_encoded(data[: len(data) // 2], LIMIT)


def test_truncated_png() -> None:
    data = encode(".png", photo())
    with pytest.raises(ImageError, match="PNG image is truncated"):
        decode_encoded(data[: len(data) // 2], LIMIT)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_one_by_one_image_names_minimum(ext: str) -> None:
    with pytest.raises(ImageError, match=f"1x1; both sides must be at least {MIN_IMAGE_SIDE}"):
        decode_encoded(encode(ext, np.zeros((1, 1, 3), np.uint8)), LIMIT)


def test_sixteen_bit_png() -> None:
    data = encode(".png", photo(32, 32).astype(np.uint16) * 257)
    with pytest.raises(ImageError, match="PNG image has 16-bit samples; accepted: 8-bit"):
        decode_encoded(data, LIMIT)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_grayscale_refused(ext: str) -> None:
    data = encode(ext, photo(32, 32)[:, :, 0])
    with pytest.raises(ImageError, match=r"image is grayscale; accepted: .*GRAY8 frame"):
        decode_encoded(data, LIMIT)


def test_rgba_png_refused() -> None:
    data = encode(".png", np.dstack([photo(32, 32), np.full((32, 32), 200, np.uint8)]))
    with pytest.raises(ImageError, match="PNG image is RGBA"):
        decode_encoded(data, LIMIT)


def test_decompression_bomb_refused_before_decoding() -> None:
    # Only a header claiming 100000x100000 RGB, a tiny IDAT and IEND: decoding it would need
    # 30 GB. The refusal must come from the header alone.
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + png_chunk(b"IEND", b"")
    )
    with pytest.raises(ImageTooLargeError, match=r"100000x100000 = 10000000000 pixels.*16777216"):
        decode_encoded(data, LIMIT)


def test_jpeg_over_pixel_limit() -> None:
    with pytest.raises(ImageTooLargeError, match="320x240 = 76800 pixels, above the limit of 1000"):
        decode_encoded(encode(".jpg", photo()), 1000)


def test_raw_formats() -> None:
    rgb = photo(40, 30)
    np.testing.assert_array_equal(decode_raw(rgb.tobytes(), 30, 40, "RGB8", LIMIT), rgb)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    np.testing.assert_array_equal(decode_raw(bgr.tobytes(), 30, 40, "BGR8", LIMIT), rgb)
    grey = rgb[:, :, 1].copy()
    out = decode_raw(grey.tobytes(), 30, 40, "GRAY8", LIMIT)
    np.testing.assert_array_equal(out, np.dstack([grey, grey, grey]))


def test_raw_byte_count_mismatch_names_both_numbers() -> None:
    with pytest.raises(ImageError, match=r"has 3599 bytes but .*30 x 40 x 3 = 3600 for RGB8"):
        decode_raw(b"\x00" * 3599, 30, 40, "RGB8", LIMIT)


def test_raw_bad_format_and_limits() -> None:
    with pytest.raises(ImageError, match="'YUYV' is not supported"):
        decode_raw(b"", 30, 40, "YUYV", LIMIT)
    with pytest.raises(ImageTooLargeError, match="2000x2000 = 4000000 pixels"):
        decode_raw(b"", 2000, 2000, "GRAY8", 1_000_000)
    with pytest.raises(ImageError, match="1x1; both sides must be at least"):
        decode_raw(b"\x00" * 3, 1, 1, "RGB8", LIMIT)


def test_letterbox_centres_and_pads() -> None:
    img = np.full((50, 100, 3), 255, np.uint8)  # 2:1 into 64x64 -> 64x32, 16 px pad top/bottom
    prep = prepare(img, manifest(pad_value=114))
    box = prep.letterbox
    assert (box.scale_x, box.scale_y, box.pad_x, box.pad_y) == (0.64, 0.64, 0.0, 16.0)
    assert (box.orig_width, box.orig_height) == (100, 50)
    t = prep.tensor
    assert t.shape == (3, 64, 64) and t.dtype == np.float32 and t.flags.c_contiguous
    np.testing.assert_allclose(t[:, :16], 114 / 255, rtol=1e-6)
    np.testing.assert_allclose(t[:, 48:], 114 / 255, rtol=1e-6)
    np.testing.assert_allclose(t[:, 16:48], 1.0, rtol=1e-6)


def test_letterbox_odd_padding_like_ultralytics() -> None:
    img = np.zeros((64, 33, 3), np.uint8)  # 31 px of horizontal pad: 15 left, 16 right
    box = prepare(img, manifest()).letterbox
    assert (box.pad_x, box.pad_y, box.scale_x, box.scale_y) == (15.0, 0.0, 1.0, 1.0)


def test_stretch_mode() -> None:
    box = prepare(np.zeros((32, 128, 3), np.uint8), manifest(resize="stretch")).letterbox
    assert (box.scale_x, box.scale_y, box.pad_x, box.pad_y) == (0.5, 2.0, 0.0, 0.0)


def test_colour_order_scale_mean_std() -> None:
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 20, 30
    t = prepare(
        img, manifest(color_order="BGR", scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    ).tensor
    # BGR: channel 0 is blue (30). (30 * 0.5 - 1) / 2 = 7; (20*0.5-2)/4 = 2; (10*0.5-3)/8 = 0.25.
    assert (float(t[0, 5, 5]), float(t[1, 5, 5]), float(t[2, 5, 5])) == (7.0, 2.0, 0.25)


def test_prepare_rejects_non_rgb() -> None:
    with pytest.raises(ImageError, match=r"HxWx3 uint8 RGB image, got uint8 \(10, 10\)"):
        prepare(np.zeros((10, 10), np.uint8), manifest())


@pytest.mark.parametrize("model_order", ["RGB", "BGR"])
def test_native_decode_and_pixels_equal_the_rgb_path(model_order: str) -> None:
    # The server's path (BGR decode, reorder at model size, normalise per batch) gives the same
    # floats as the RGB path (RGB decode, prepare) for JPEG and for every raw format.
    m = manifest(color_order=model_order, scale=0.5, mean=(1.0, 2.0, 3.0), std=(2.0, 4.0, 8.0))
    rgb = photo(100, 50)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    jpeg = encode(".jpg", bgr)
    cases = [
        (decode_encoded_native(jpeg, LIMIT), decode_encoded(jpeg, LIMIT)),
        (decode_raw_native(rgb.tobytes(), 50, 100, "RGB8", LIMIT), rgb),
        (decode_raw_native(bgr.tobytes(), 50, 100, "BGR8", LIMIT), rgb),
    ]
    for native, want_rgb in cases:
        np.testing.assert_array_equal(native.to_rgb(), want_rgb)
        prepared = prepare_pixels(native.pixels, m, native.order)
        want = prepare(want_rgb, m)
        assert prepared.pixels.dtype == np.uint8 and prepared.pixels.shape == (64, 64, 3)
        assert prepared.letterbox == want.letterbox
        got = pixels_to_tensor(prepared.pixels[None], m)[0]
        np.testing.assert_array_equal(got, want.tensor)


def test_pixels_to_tensor_keeps_images_of_a_batch_apart() -> None:
    m = manifest()
    images = [np.full((64, 64, 3), v, np.uint8) for v in (0, 51, 255)]
    batch = np.stack([prepare_pixels(i, m).pixels for i in images])
    tensor = pixels_to_tensor(batch, m)
    assert tensor.shape == (3, 3, 64, 64)
    means = [float(tensor[k].mean()) for k in range(3)]
    np.testing.assert_allclose(means, [0.0, 0.2, 1.0], rtol=1e-6)


def test_jpeg_decode_size_is_the_letterboxed_size_from_twice_the_input() -> None:
    from detserve.engines.preprocess import jpeg_decode_size

    m = manifest()  # 64x64 input
    jpeg = lambda w, h: read_header(encode(".jpg", photo(w, h)))  # noqa: E731
    assert jpeg_decode_size(jpeg(100, 50), m) is None  # letterboxed to 64x32: not 2x
    assert jpeg_decode_size(jpeg(128, 96), m) == (64, 48)
    assert jpeg_decode_size(jpeg(600, 300), m) == (64, 32)
    assert jpeg_decode_size(read_header(encode(".png", photo(600, 300))), m) is None  # JPEG only
    assert jpeg_decode_size(jpeg(128, 96), manifest(resize="stretch")) is None  # 64 high needed


def test_reduced_decode_keeps_the_callers_geometry() -> None:
    from detserve.engines.preprocess import prepare_decoded

    m = manifest(pad_value=114)
    data = encode(".jpg", photo(256, 128))
    full = prepare_decoded(decode_encoded_native(data, LIMIT), m)
    reduced = decode_encoded_native(data, LIMIT, m)
    assert reduced.pixels.shape == (32, 64, 3) and reduced.full_size == (256, 128)  # 2/8
    small = prepare_decoded(reduced, m)
    assert small.letterbox == full.letterbox  # boxes map back to the 256x128 sent
    assert small.letterbox.orig_width == 256 and small.letterbox.scale_x == 0.25
    # The same picture at the same place: the rows are close, the padding identical.
    diff = np.abs(small.pixels.astype(int) - full.pixels.astype(int))
    assert float(diff[16:48].mean()) < 6.0 and int(diff[:16].max()) == 0


def with_orientation(jpeg: bytes, orientation: int) -> bytes:
    """`jpeg` with an EXIF APP1 segment (big-endian TIFF, one IFD0 entry) after SOI."""
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    body = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + jpeg[2:]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_like_a_viewer(orientation: int) -> None:
    from PIL import Image, ImageOps

    stored = photo(96, 64)
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(stored[..., ::-1]),
                           [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    data = with_orientation(bytes(buf.tobytes()), orientation)
    header = read_header(data)
    assert header.orientation == orientation
    upright = decode_encoded(data, LIMIT)
    # Pillow's exif_transpose, which viewers and Ultralytics follow, is the reference.
    import io

    want = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    assert upright.shape == want.shape
    assert header.display_size == (want.shape[1], want.shape[0])
    assert float(np.abs(upright.astype(int) - want.astype(int)).mean()) < 1.0


def test_a_jpeg_cut_short_with_an_end_marker_appended_is_refused() -> None:
    data = encode(".jpg", photo(320, 240))
    cut = data[: len(data) // 2] + b"\xff\xd9"
    with pytest.raises(ImageError, match="JPEG image is corrupt or truncated: Corrupt JPEG data"):
        decode_encoded(cut, LIMIT)


def test_garbage_exif_is_ignored_not_trusted() -> None:
    data = encode(".jpg", photo(64, 64))
    body = b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xf0"  # IFD offset far past the end
    bad = data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]
    assert read_header(bad).orientation == 1
    assert decode_encoded(bad, LIMIT).shape == (64, 64, 3)
