"""End to end through the real blocks model: encoded or raw image -> letterbox -> ORT -> decode,
with boxes mapped back to the caller's own pixels exactly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import pytest

from detserve.engines.base import DecodeParams
from detserve.engines.manifest import ModelPackage, load_package
from detserve.engines.ort import OrtEngine
from detserve.engines.pipeline import detect_images
from detserve.engines.preprocess import decode_encoded, decode_raw

LIMIT = 10_000_000
COLOURS = {0: (255, 0, 0), 1: (0, 255, 0), 2: (0, 0, 255)}


def scene(
    width: int, height: int, blocks: list[tuple[int, int, int, int, int]]
) -> npt.NDArray[np.uint8]:
    """Black image with saturated blocks (class, x1, y1, x2, y2)."""
    img = np.zeros((height, width, 3), np.uint8)
    for cls, x1, y1, x2, y2 in blocks:
        img[y1:y2, x1:x2] = COLOURS[cls]
    return img


# The 128x128 blocks model has 32-px cells. Each image below is letterboxed so that its blocks
# land exactly on cells: 256x128 -> scale 0.5, pad_y 32; 128x256 -> scale 0.5, pad_x 32;
# 64x32 -> scale 2, pad_y 32; 512x512 -> scale 0.25, no pad.
CASES = [
    (256, 128, [(0, 64, 64, 128, 128), (2, 192, 0, 256, 64)]),
    (128, 256, [(1, 0, 0, 64, 64), (0, 64, 192, 128, 256)]),
    (64, 32, [(2, 16, 0, 32, 16), (1, 48, 16, 64, 32)]),
    (512, 512, [(0, 0, 0, 128, 128), (0, 384, 384, 512, 512), (2, 128, 0, 256, 128)]),
]


@pytest.mark.parametrize(("width", "height", "blocks"), CASES)
def test_boxes_map_back_to_original_pixels(
    tiny_package_128: Path, width: int, height: int, blocks: list[tuple[int, int, int, int, int]]
) -> None:
    engine = OrtEngine(load_package(tiny_package_128))
    (det,) = detect_images(engine, [scene(width, height, blocks)])
    order = np.lexsort((det.boxes[:, 1], det.boxes[:, 0]))
    expected = sorted(blocks, key=lambda b: (b[1], b[2]))
    np.testing.assert_array_equal(det.class_ids[order], [b[0] for b in expected])
    np.testing.assert_allclose(det.boxes[order], [b[1:] for b in expected], atol=1e-4)
    # Upscaling blurs block edges by a pixel, so scores dip just below 1 there.
    assert det.scores.min() > 0.9


def test_png_and_raw_paths_agree_and_batch_mixes_sizes(tiny_package_128: Path) -> None:
    engine = OrtEngine(load_package(tiny_package_128))
    images = [scene(w, h, b) for w, h, b in CASES]
    bgr = cv2.cvtColor(images[0], cv2.COLOR_RGB2BGR)
    ok, png = cv2.imencode(".png", bgr)
    assert ok
    decoded = [
        decode_encoded(png.tobytes(), LIMIT),
        decode_raw(bgr.tobytes(), 128, 256, "BGR8", LIMIT),
    ]
    dets = detect_images(engine, decoded + images)
    assert len(dets) == 6
    for d in (dets[0], dets[1]):
        np.testing.assert_array_equal(d.boxes, dets[2].boxes)
        np.testing.assert_array_equal(d.class_ids, dets[2].class_ids)
    assert [len(d) for d in dets[2:]] == [2, 2, 2, 3]


def test_per_image_params(tiny_package_128: Path) -> None:
    engine = OrtEngine(load_package(tiny_package_128))
    img = scene(512, 512, CASES[3][2])
    only_blue = DecodeParams(0.5, 0.5, 100, frozenset({2}))
    one = DecodeParams(0.5, 0.5, 1)
    dets = detect_images(engine, [img, img, img], [only_blue, one, DecodeParams(0.5, 0.5, 100)])
    np.testing.assert_array_equal(dets[0].class_ids, [2])
    np.testing.assert_allclose(dets[0].boxes, [[128, 0, 256, 128]])
    assert len(dets[1]) == 1 and len(dets[2]) == 3
    with pytest.raises(ValueError, match="got 2 DecodeParams for 3 images"):
        detect_images(engine, [img, img, img], [one, one])


def test_nothing_detected_on_grey(tiny_package: Path) -> None:
    # Uniform 114 grey scores 0.447 per class, below the manifest's 0.6 threshold.
    engine = OrtEngine(load_package(tiny_package))
    (det,) = detect_images(engine, [np.full((40, 90, 3), 114, np.uint8)])
    assert len(det) == 0


def test_chunks_by_max_batch_size(tiny_package_128: Path) -> None:
    package = load_package(tiny_package_128)
    small = ModelPackage(package.root, dataclasses.replace(package.manifest, max_batch_size=2))
    images = [scene(w, h, b) for w, h, b in CASES] + [scene(64, 32, [])]
    dets = detect_images(OrtEngine(small), images)
    assert [len(d) for d in dets] == [2, 2, 2, 3, 0]
    np.testing.assert_allclose(np.sort(dets[3].boxes[:, 0]), [0, 128, 384])
