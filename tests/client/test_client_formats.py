"""What a user's images look like to the server: OpenCV's BGR arrays, grey JPEGs, RGBA PNGs,
WebP and BMP files, each sent through DetectClient to a real server on loopback.

The blocks model (exact, colour by channel) shows the colour survives each conversion; the
default model on scenes from the synthetic generator shows a real detector's answers match the
ones for the plain colour file.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import numpy.typing as npt
import pytest
import yaml

from detserve.client import DetectClient, DetectError, DetectOptions, DetectResult

from .conftest import ThreadedServer, blocks_image, config_for, needs_default_package

RED, GREEN, BLUE = 0, 1, 2


def encode(ext: str, pixels: npt.NDArray[np.generic], *params: int) -> bytes:
    ok, buf = cv2.imencode(ext, pixels, list(params))
    assert ok
    return bytes(buf.tobytes())


def answers(result: DetectResult) -> list[tuple[str, float, tuple[float, ...]]]:
    return [(d.label, round(d.score, 4), tuple(round(v, 2) for v in d.bbox))
            for d in result.detections]


def test_colour_survives_each_converted_format(server: ThreadedServer) -> None:
    bgr = np.ascontiguousarray(blocks_image(64, 64, [(0, 0, RED), (32, 32, BLUE)])[:, :, ::-1])
    bgra = np.dstack([bgr, np.full((64, 64), 128, np.uint8)])
    files = {
        "rgba.png": encode(".png", bgra),
        "16bit.png": encode(".png", bgr.astype(np.uint16) * 257),
        "lossless.webp": encode(".webp", bgr, cv2.IMWRITE_WEBP_QUALITY, 101),
        "plain.bmp": encode(".bmp", bgr),
    }
    want = [("red", 1.0, (0.0, 0.0, 32.0, 32.0)), ("blue", 1.0, (32.0, 32.0, 64.0, 64.0))]
    with DetectClient(server.target) as client:
        for name, data in files.items():
            assert answers(client.detect(data)) == want, name


@pytest.fixture(scope="module")
def multi_label_server(tiny_package: Path,
                       tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """The blocks model with every (cell, class) pair a candidate: a grey cell finds all three."""
    package = tmp_path_factory.mktemp("blocks_multi") / "blocks"
    shutil.copytree(tiny_package, package)
    manifest = yaml.safe_load((package / "manifest.yaml").read_text())
    manifest["postprocess"]["multi_label"] = True
    (package / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    srv = ThreadedServer(config_for(package))
    yield srv
    srv.stop()


def test_grey_jpeg_is_grey_on_the_server(multi_label_server: ThreadedServer,
                                         tmp_path: Path) -> None:
    grey = np.zeros((64, 64), np.uint8)
    grey[32:, 32:] = 255
    path = tmp_path / "grey.jpg"
    path.write_bytes(encode(".jpg", grey, cv2.IMWRITE_JPEG_QUALITY, 100))
    with DetectClient(multi_label_server.target) as client:
        result = client.detect(path)
    # One white block: each of its channels is saturated, so each class finds the same cell.
    assert sorted(d.label for d in result.detections) == ["blue", "green", "red"]
    assert {tuple(round(v) for v in d.bbox) for d in result.detections} == {(32, 32, 64, 64)}
    assert min(d.score for d in result.detections) > 0.95


def test_what_cannot_be_converted_is_refused_by_the_server(server: ThreadedServer) -> None:
    with DetectClient(server.target) as client, pytest.raises(DetectError) as err:
        client.detect(b"RIFF\x10\x00\x00\x00WEBPVP8 garbage")
    assert err.value.code is grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture(scope="module")
def scene_jpeg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 640x480 test scene of the synthetic generator, written as a colour JPEG."""
    from detserve.models.scenes import render_scene, split_seeds

    scene = render_scene(split_seeds("test", 1)[0], 640, 480)
    assert len(scene.boxes) >= 5
    path = tmp_path_factory.mktemp("scene") / "scene.jpg"
    bgr = cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)
    path.write_bytes(encode(".jpg", bgr, cv2.IMWRITE_JPEG_QUALITY, 95))
    return path


@needs_default_package
def test_cv2_imread_array_answers_like_the_jpeg_file(default_server: ThreadedServer,
                                                     scene_jpeg: Path) -> None:
    # The file's pixels as a lossless PNG: the server decodes a JPEG this size at half size
    # (DCT scaling), which moves boxes by a fraction of a pixel; a PNG it decodes in full,
    # exactly as the client's array arrives.
    same_pixels = encode(".png", cv2.imread(str(scene_jpeg)))
    with DetectClient(default_server.target) as client:
        from_file = client.detect(same_pixels)
        from_imread = client.detect(cv2.imread(str(scene_jpeg)))  # BGR, with no option
        swapped = client.detect(cv2.imread(str(scene_jpeg)), DetectOptions(pixel_format="RGB8"))
    assert len(from_file.detections) >= 5
    assert answers(from_imread) == answers(from_file)
    # The same array declared RGB reaches the model with red and blue swapped.
    assert answers(swapped) != answers(from_file)


@needs_default_package
def test_grey_and_rgba_files_answer_like_their_colour_equivalents(
        default_server: ThreadedServer, scene_jpeg: Path) -> None:
    bgr = cv2.imread(str(scene_jpeg))
    grey_jpeg = encode(".jpg", cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY), cv2.IMWRITE_JPEG_QUALITY, 95)
    grey_pixels = cv2.imdecode(np.frombuffer(grey_jpeg, np.uint8), cv2.IMREAD_UNCHANGED)
    bgra = np.dstack([bgr, np.full(bgr.shape[:2], 200, np.uint8)])
    with DetectClient(default_server.target) as client:
        grey = client.detect(grey_jpeg)
        grey_as_colour = client.detect(encode(".png", cv2.cvtColor(grey_pixels,
                                                                   cv2.COLOR_GRAY2BGR)))
        rgba = client.detect(encode(".png", bgra))
        webp = client.detect(encode(".webp", bgra, cv2.IMWRITE_WEBP_QUALITY, 101))
        colour = client.detect(encode(".png", bgr))
    assert len(grey.detections) >= 3  # shapes stay findable without colour
    assert answers(grey) == answers(grey_as_colour)
    assert len(colour.detections) >= 5
    assert answers(rgba) == answers(colour)
    assert answers(webp) == answers(colour)
