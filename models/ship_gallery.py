"""The failure gallery's pictures: each failure cropped from its image with context, enlarged,
and drawn with every box around it: ground truth in green, the model's correct detections in
blue, the failure itself thick (a false positive in red, a missed object in orange), each with
its label and score. JPEG bytes, ready for a data URI."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

from detserve.engines.detections import Detections
from detserve.models.ship_failures import Failure, ImageTruth

# BGR, as OpenCV draws.
GT_COLOR = (44, 160, 44)  # green
DET_COLOR = (180, 119, 31)  # blue
FP_COLOR = (40, 39, 214)  # red
FN_COLOR = (14, 127, 255)  # orange
LEGEND = (("ground truth", GT_COLOR), ("detection (correct)", DET_COLOR),
          ("false positive", FP_COLOR), ("missed object", FN_COLOR))
TILE = 240  # the crop's longer side after enlarging, in pixels
MIN_CROP = 96  # source pixels: a tiny object keeps enough context to be read
JPEG_QUALITY = 85


def hex_color(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


@dataclass(frozen=True)
class Crop:
    x0: int
    y0: int
    x1: int
    y1: int
    scale: float

    def map(self, box: Sequence[float]) -> tuple[int, int, int, int]:
        """An image-pixel box in the enlarged crop's pixels."""
        return (round((box[0] - self.x0) * self.scale), round((box[1] - self.y0) * self.scale),
                round((box[2] - self.x0) * self.scale), round((box[3] - self.y0) * self.scale))


def crop_for(box: Sequence[float], width: int, height: int) -> Crop:
    """The box with as much context again around it (at least MIN_CROP), inside the image."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    side = max(MIN_CROP, 2.2 * max(box[2] - box[0], box[3] - box[1]))
    side = min(side, max(width, height))
    x0 = int(max(0, min(cx - side / 2, width - side)))
    y0 = int(max(0, min(cy - side / 2, height - side)))
    x1, y1 = int(min(width, x0 + side)), int(min(height, y0 + side))
    return Crop(x0, y0, x1, y1, TILE / max(x1 - x0, y1 - y0))


def _label(img: npt.NDArray[np.uint8], text: str, box: tuple[int, int, int, int],
           color: tuple[int, int, int], below: bool = False) -> None:
    """Text on a filled tab in `color` above the box (ground truth: below it, so the truth
    under a wrong detection stays readable), kept inside the tile."""
    font, scale, thick = cv2.FONT_HERSHEY_SIMPLEX, 0.38, 1
    (tw, th), base = cv2.getTextSize(text, font, scale, thick)
    h, w = img.shape[:2]
    tab = th + base + 3
    x = max(0, min(box[0], w - tw - 4))
    if below:
        y = box[3] + 1 if box[3] + 1 + tab <= h else max(0, box[3] - tab)
    else:
        y = box[1] - tab if box[1] - tab >= 0 else min(h - tab, box[1] + 2)
    cv2.rectangle(img, (x, y), (x + tw + 4, y + th + base + 3), color, -1)
    cv2.putText(img, text, (x + 2, y + th + 1), font, scale, (255, 255, 255), thick, cv2.LINE_AA)


def _inside(crop: Crop, box: Sequence[float]) -> bool:
    return box[2] > crop.x0 and box[0] < crop.x1 and box[3] > crop.y0 and box[1] < crop.y1


def draw_failure(rgb: npt.NDArray[np.uint8], failure: Failure, truth: ImageTruth,
                 detections: Detections, classes: Sequence[str]) -> bytes:
    """The failure's tile as JPEG bytes. `detections` are those at the served threshold."""
    h, w = rgb.shape[:2]
    crop = crop_for(failure.box, w, h)
    part = np.ascontiguousarray(rgb[crop.y0 : crop.y1, crop.x0 : crop.x1, ::-1])
    size = (round((crop.x1 - crop.x0) * crop.scale), round((crop.y1 - crop.y0) * crop.scale))
    tile = np.ascontiguousarray(cv2.resize(
        part, size, interpolation=cv2.INTER_LINEAR if crop.scale > 1 else cv2.INTER_AREA),
        np.uint8)
    boxes: list[tuple[Sequence[float], str, tuple[int, int, int], int]] = []
    for b, c in zip(truth.boxes.tolist(), truth.classes.tolist(), strict=True):
        if _inside(crop, b) and not (failure.kind == "FN" and _same(b, failure.box)):
            boxes.append((b, classes[c], GT_COLOR, 1))
    for b, c, s in zip(detections.boxes.tolist(), detections.class_ids.tolist(),
                       detections.scores.tolist(), strict=True):
        if _inside(crop, b) and not (failure.kind == "FP" and _same(b, failure.box)):
            boxes.append((b, f"{classes[c]} {s:.2f}", DET_COLOR, 1))
    if failure.kind == "FP":
        boxes.append((failure.box, f"FP {failure.class_name} {failure.score:.2f}", FP_COLOR, 2))
    else:
        boxes.append((failure.box, f"missed {failure.class_name}", FN_COLOR, 2))
    for box, _text, color, thick in boxes:  # the failure last: on top
        x1, y1, x2, y2 = crop.map(box)
        cv2.rectangle(tile, (x1, y1), (x2, y2), color, thick, cv2.LINE_AA)
    # Labels only for the failure and what touches it: a crowded crop stays readable.
    for box, text, color, thick in boxes:
        if thick > 1 or _touches(box, failure.box):
            _label(tile, text, crop.map(box), color, below=color == GT_COLOR)
    ok, data = cv2.imencode(".jpg", tile, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("cv2.imencode failed on a gallery tile")
    return bytes(data.tobytes())


def _touches(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(abs(float(x) - float(y)) < 1e-3 for x, y in zip(a, b, strict=True))


@dataclass(frozen=True)
class Tile:
    failure: Failure
    jpeg: bytes
    file_name: str


def draw_tiles(failures: Sequence[Failure], read_rgb: Callable[[int], npt.NDArray[np.uint8]],
               file_of: Callable[[int], str], truths: dict[int, ImageTruth],
               shown: dict[int, Detections], classes: Sequence[str]) -> list[Tile]:
    """A tile per failure; each image is read once however many failures it holds."""
    cache: dict[int, npt.NDArray[np.uint8]] = {}
    out = []
    for f in failures:
        if f.image_id not in cache:
            cache[f.image_id] = read_rgb(f.image_id)
        out.append(Tile(f, draw_failure(cache[f.image_id], f, truths[f.image_id],
                                        shown[f.image_id], classes), file_of(f.image_id)))
    return out
