"""Images and comparisons shared by the device-decode tests (test_gpu_decode*.py)."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from detserve.engines.detections import Detections
from detserve.engines.manifest import Manifest, Preprocess
from detserve.models.scenes import render_scene

LIMIT = 4096 * 4096
REPO = Path(__file__).resolve().parents[2]
DEFAULT_PACKAGE = REPO / "models" / "packages" / "shapes_320"
VENV_TV = REPO / ".venv-tv" / "bin" / "python"
NO_VENV_TV = ("no .venv-tv with torchvision and pytest here (bash models/torchvision_env.sh "
              "makes it): the real decode_jpeg is not run")


def venv_tv_ready() -> bool:
    """Whether .venv-tv exists and has what the *_tv.py test files need."""
    if not VENV_TV.exists():
        return False
    probe = subprocess.run([str(VENV_TV), "-c", "import pytest, pytest_asyncio, torchvision"],
                           capture_output=True, timeout=120, check=False)
    return probe.returncode == 0


def pytest_in_venv_tv(test: str, timeout_s: float) -> str:
    """Run the test file `test` (a path from the repo root) in .venv-tv; asserts every test in
    it passed and none skipped, and returns the end of its output."""
    proc = subprocess.run([str(VENV_TV), "-m", "pytest", "-q", "-p", "no:cacheprovider", test],
                          capture_output=True, text=True, timeout=timeout_s, cwd=str(REPO),
                          check=False)
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in tail and "skipped" not in tail, tail
    return tail


def manifest(width: int = 64, height: int = 64, **pre: Any) -> Manifest:
    return Manifest(name="m", version="1", classes=("a",), input_width=width,
                    input_height=height, preprocess=dataclasses.replace(Preprocess(), **pre))


def photo(width: int, height: int) -> npt.NDArray[np.uint8]:
    """RGB: a gradient with two shapes, asymmetric so that every EXIF turn looks different."""
    ys, xs = np.mgrid[0:height, 0:width]
    img = np.dstack([xs * 255 // width, ys * 255 // height, (xs + ys) * 127 // (width + height)])
    img = np.ascontiguousarray(img.astype(np.uint8))
    cv2.circle(img, (width // 3, height // 2), height // 4, (250, 30, 30), -1)
    cv2.rectangle(img, (width // 2, height // 4), (width - 10, height - 10), (20, 200, 40), -1)
    return img


def scene(seed: int, width: int, height: int) -> npt.NDArray[np.uint8]:
    """A synthetic val scene (RGB), what the default model was trained on."""
    return render_scene(10_000_000 + seed, width, height).image


def jpeg(image_rgb: npt.NDArray[np.uint8], quality: int = 95, progressive: bool = False,
         orientation: int = 1) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality, cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(image_rgb[..., ::-1]), params)
    assert ok
    data = bytes(buf.tobytes())
    if orientation == 1:
        return data
    # An EXIF APP1 segment (big-endian TIFF, one IFD0 entry) right after SOI.
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1)
    tiff += struct.pack(">HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack(">I", 0)
    body = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]


def png(image_rgb: npt.NDArray[np.uint8]) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(image_rgb[..., ::-1]))
    assert ok
    return bytes(buf.tobytes())


def corrupt(data: bytes) -> bytes:
    """`data` with its scan header naming a component the frame does not have: every header
    check passes (SOF, EOI), any JPEG decoder refuses it."""
    out = bytearray(data)
    sos = out.find(b"\xff\xda")
    assert sos > 0
    out[sos + 5] = 99  # FF DA, length (2), component count (1), then the first component id
    return bytes(out)


def matched(a: Detections, b: Detections, floor: float, score_tol: float = 0.05,
            iou_min: float = 0.85) -> list[str]:
    """Why `a` and `b` differ: every detection of either scoring above `floor` must have one in
    the other of the same class, IoU >= iou_min and a score within score_tol. [] if they match."""
    problems = []
    for name, x, y in (("first", a, b), ("second", b, a)):
        for box, score, cid in zip(x.boxes, x.scores, x.class_ids, strict=True):
            if score < floor:
                continue
            same = y.class_ids == cid
            ious = _iou(box, y.boxes[same])
            near = np.abs(y.scores[same] - score) <= score_tol
            if not (near & (ious >= iou_min)).any():
                problems.append(f"{name} has class {cid} score {score:.3f} box {box.round(1)} "
                                f"with no match")
    return problems


def _iou(box: npt.NDArray[np.float32], boxes: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    if boxes.size == 0:
        return np.zeros(0)
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / (area + areas - inter + 1e-9), np.float64)
