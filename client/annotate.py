"""Detections drawn on the image they came from (`detserve-client detect --save DIR`).

Boxes and labels are drawn with OpenCV on a BGR copy of the image, decoded here the way the
server decodes it (EXIF orientation ignored), so each box lands on the pixels it was found in.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from detserve.client.results import Detection

BgrImage = npt.NDArray[np.uint8]
# Formats cv2.imwrite writes that keep the input's own suffix; anything else is saved as PNG.
SAVED_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def class_color(class_id: int) -> tuple[int, int, int]:
    """A saturated BGR colour per class id, far apart for neighbouring ids (golden-ratio hues)."""
    hue = (class_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.9, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def read_bgr(data: bytes, name: str) -> BgrImage:
    """Encoded bytes as an 8-bit BGR image, in the stored pixel grid (no EXIF rotation)."""
    image = cv2.imdecode(np.frombuffer(data, np.uint8),
                         cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise ValueError(f"OpenCV cannot decode {name!r} to draw on it")
    return np.asarray(image, np.uint8)


def draw_detections(image: BgrImage, detections: Sequence[Detection]) -> BgrImage:
    """A copy of the BGR `image` with each detection's box and "label score" drawn on it."""
    out = np.ascontiguousarray(image.copy())
    thick = max(1, round(min(out.shape[:2]) / 320))
    scale = 0.4 * thick
    for det in detections:
        color = class_color(det.class_id)
        x1, y1, x2, y2 = (round(v) for v in det.bbox)
        cv2.rectangle(out, (x1, y1), (x2, y2), color, thick)
        text = f"{det.label} {det.score:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
        # The label sits on a filled tab above the box (inside it at the image's top edge),
        # moved left as far as needed to stay in the image.
        top = y1 - th - base if y1 - th - base >= 0 else y1
        left = max(0, min(x1, out.shape[1] - tw))
        cv2.rectangle(out, (left, top), (left + tw, top + th + base), color, cv2.FILLED)
        cv2.putText(out, text, (left, top + th), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0),
                    thick, cv2.LINE_AA)
    return out


class AnnotatedSaver:
    """Writes annotated images into one folder, one file per input; a name seen twice in a run
    (a.jpg in two folders) gets a numbered suffix instead of overwriting the first."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self._used: set[str] = set()

    def path_for(self, source: str) -> Path:
        stem, suffix = Path(source).stem or "image", Path(source).suffix.lower()
        suffix = suffix if suffix in SAVED_SUFFIXES else ".png"
        name, n = f"{stem}{suffix}", 1
        while name in self._used:
            name, n = f"{stem}_{n}{suffix}", n + 1
        self._used.add(name)
        return self.folder / name

    def save(self, path: Path, image: BgrImage, detections: Sequence[Detection]) -> Path:
        if not cv2.imwrite(str(path), draw_detections(image, detections)):
            raise ValueError(f"OpenCV could not write {str(path)!r}")
        return path
