"""detserve.client.convert on real encoded files: what goes as it is, what becomes which frame."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from detserve.client.convert import encoded_image, server_takes
from detserve.client.images import image_from_array, to_image
from detserve.protos import detection_pb2 as pb


def encode(ext: str, pixels: npt.NDArray[np.generic], *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, pixels, list(params))
    assert ok
    return bytes(buf.tobytes())


def scene_bgr() -> npt.NDArray[np.uint8]:
    rng = np.random.default_rng(3)
    return rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)


def raw_pixels(image: pb.Image) -> npt.NDArray[np.uint8]:
    raw = image.raw
    channels = 1 if raw.pixel_format == pb.PIXEL_FORMAT_GRAY8 else 3
    return np.frombuffer(raw.data, np.uint8).reshape(raw.height, raw.width, channels)


def test_colour_jpeg_and_png_go_as_they_are() -> None:
    for data in (encode(".jpg", scene_bgr()), encode(".png", scene_bgr())):
        assert server_takes(data)
        assert encoded_image(data).encoded == data


def test_grey_jpeg_becomes_a_gray8_frame_of_the_same_pixels() -> None:
    grey = cv2.cvtColor(scene_bgr(), cv2.COLOR_BGR2GRAY)
    data = encode(".jpg", grey)
    image = encoded_image(data)
    assert not server_takes(data)
    assert image.raw.pixel_format == pb.PIXEL_FORMAT_GRAY8
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(raw_pixels(image)[:, :, 0], decoded)


def test_rgba_png_drops_alpha_and_keeps_the_colour() -> None:
    bgr = scene_bgr()
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 40, np.uint8)])
    image = encoded_image(encode(".png", bgra))
    assert image.raw.pixel_format == pb.PIXEL_FORMAT_BGR8
    assert np.array_equal(raw_pixels(image), bgr)


def test_16_bit_png_keeps_the_top_byte() -> None:
    bgr = scene_bgr()
    image = encoded_image(encode(".png", bgr.astype(np.uint16) * 257))
    assert np.array_equal(raw_pixels(image), bgr)


@pytest.mark.parametrize(("ext", "params"), [(".bmp", ()), (".webp", (cv2.IMWRITE_WEBP_QUALITY,
                                                                     101))])
def test_bmp_and_lossless_webp_become_bgr8_frames(ext: str, params: tuple[int, ...]) -> None:
    bgr = scene_bgr()
    image = encoded_image(encode(ext, bgr, *params))
    assert image.raw.pixel_format == pb.PIXEL_FORMAT_BGR8
    assert np.array_equal(raw_pixels(image), bgr)


def test_a_large_conversion_goes_as_a_lossless_png() -> None:
    bgr = scene_bgr()
    image = encoded_image(encode(".bmp", bgr), raw_max_bytes=bgr.nbytes - 1)
    assert server_takes(image.encoded)
    decoded = cv2.imdecode(np.frombuffer(image.encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(decoded, bgr)
    grey = encoded_image(encode(".png", bgr[:, :, 0]), raw_max_bytes=10)
    decoded = cv2.imdecode(np.frombuffer(grey.encoded, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == (*bgr.shape[:2], 3) and np.array_equal(decoded[:, :, 1], bgr[:, :, 0])


def test_what_nothing_decodes_is_left_for_the_server_to_explain() -> None:
    truncated = encode(".jpg", scene_bgr())[:-40]
    assert encoded_image(truncated).encoded == truncated
    assert encoded_image(b"not an image at all").encoded == b"not an image at all"


def test_numpy_frames_are_bgr_unless_told_rgb() -> None:
    bgr = scene_bgr()
    assert image_from_array(bgr).raw.pixel_format == pb.PIXEL_FORMAT_BGR8
    assert to_image(bgr, "RGB8").raw.pixel_format == pb.PIXEL_FORMAT_RGB8
    bgra = np.dstack([bgr, np.zeros(bgr.shape[:2], np.uint8)])
    assert np.array_equal(raw_pixels(image_from_array(bgra)), bgr)
    grey = image_from_array(bgr[:, :, :1])
    assert grey.raw.pixel_format == pb.PIXEL_FORMAT_GRAY8
    assert grey.raw.data == np.ascontiguousarray(bgr[:, :, 0]).tobytes()
