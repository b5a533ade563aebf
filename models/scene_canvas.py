"""The drawing surface shared by still scenes and camera sequences.

`Canvas` keeps the image, a label map (0 background, i+1 object i, 255 clutter) and how many
pixels of each object are still visible, so occlusion rules can be checked before drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detserve.models.scene_shapes import CLASSES, ShapeMask, ShapeSpec

Image = npt.NDArray[np.uint8]
MIN_VISIBLE = 0.6
DISTRACTOR_LABEL = 255
_SMALL_P = 0.5


@dataclass
class Scene:
    """An RGB image with its labelled objects: `boxes [K, 4]` x1, y1, x2, y2 pixels."""

    image: Image
    boxes: npt.NDArray[np.float32]
    class_ids: npt.NDArray[np.int64]



def minobject_size(width: int, height: int) -> float:
    return max(8.0, 6.0 * max(width, height) / 320.0)




def object_size(rng: np.random.Generator, width: int, height: int) -> float:
    lo = minobject_size(width, height)
    hi = max(0.45 * min(width, height), lo + 2)
    if rng.random() < _SMALL_P:
        return float(rng.uniform(lo, max(lo + 1, 26.0)))
    lo_big = min(28.0, hi - 1)
    return float(math.exp(rng.uniform(math.log(lo_big), math.log(hi))))


def random_spec(rng: np.random.Generator, width: int, height: int, distractor: str) -> ShapeSpec:
    size = object_size(rng, width, height)
    if distractor:
        size = min(size * rng.uniform(0.8, 1.6), 0.5 * min(width, height))
    margin = size * 0.75 + 1 if not distractor else 0.0
    cx = rng.uniform(margin, width - margin) if width > 2 * margin else width / 2
    cy = rng.uniform(margin, height - margin) if height > 2 * margin else height / 2
    p = rng.random(4)
    return ShapeSpec(
        kind=int(rng.integers(len(CLASSES))), cx=float(cx), cy=float(cy), size=size,
        angle=float(rng.uniform(0, 2 * math.pi)), distractor=distractor,
        params=(float(p[0]), float(p[1]), float(p[2]), float(p[3])))


def pick_colour(rng: np.random.Generator, under: npt.NDArray[np.uint8]) -> tuple[int, int, int]:
    """A colour far from the mean of the pixels it will cover (best of a few random draws)."""
    mean = under.reshape(-1, 3).mean(axis=0) if under.size else np.full(3, 128.0)
    cands = rng.integers(0, 256, (6, 3))
    grey = rng.random(6) < 0.15  # some black / white / grey objects too
    cands[grey] = cands[grey][:, :1]
    dist = np.linalg.norm(cands - mean, axis=1)
    best = cands[int(np.argmax(dist))] if dist.max() < 90 else cands[int(np.argmax(dist > 90))]
    return int(best[0]), int(best[1]), int(best[2])


class Canvas:
    """The scene being composed: image, label map and per-object visible pixel counts."""

    def __init__(self, background: Image) -> None:
        self.image = background.copy()
        h, w = background.shape[:2]
        self.width, self.height = w, h
        self.labels = np.zeros((h, w), np.uint8)
        self.full = np.zeros(256, np.int64)
        self.visible = np.zeros(256, np.int64)

    def _view(self, sm: ShapeMask) -> tuple[slice, slice]:
        h, w = sm.mask.shape
        return slice(sm.y0, sm.y0 + h), slice(sm.x0, sm.x0 + w)

    def fits(self, sm: ShapeMask) -> bool:
        """Whether drawing `sm` on top leaves every object at least MIN_VISIBLE visible."""
        covered = np.bincount(self.labels[self._view(sm)][sm.mask], minlength=256)
        need = np.ceil(MIN_VISIBLE * self.full)
        need[0] = need[DISTRACTOR_LABEL] = -np.inf  # background and clutter may vanish
        return bool(np.all(self.visible - covered >= need))

    def draw(self, sm: ShapeMask, label: int, colour: tuple[int, int, int],
             shade: float = 0.0) -> None:
        view = self._view(sm)
        covered = np.bincount(self.labels[view][sm.mask], minlength=256)
        self.visible -= covered
        self.labels[view][sm.mask] = label
        n = int(sm.mask.sum())
        self.full[label] += n
        self.visible[label] += n
        fill = np.array(colour, np.float32)
        if shade > 0:  # darken linearly across the object, as if lit from one side
            h, w = sm.mask.shape
            t = np.linspace(0.0, shade, w, dtype=np.float32)[None, :, None]
            pixels = np.clip(fill * (1.0 - t), 0, 255).astype(np.uint8)
            self.image[view][sm.mask] = np.broadcast_to(pixels, (h, w, 3))[sm.mask]
        else:
            self.image[view][sm.mask] = fill.astype(np.uint8)

    def box_of(self, sm: ShapeMask, label: int) -> npt.NDArray[np.float32] | None:
        region = self.labels[self._view(sm)] == label
        rows, cols = np.flatnonzero(region.any(axis=1)), np.flatnonzero(region.any(axis=0))
        if rows.size == 0:
            return None
        return np.array([sm.x0 + cols[0], sm.y0 + rows[0], sm.x0 + cols[-1] + 1,
                         sm.y0 + rows[-1] + 1], np.float32)


