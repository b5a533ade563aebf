"""Synthetic detection scenes, deterministic by seed: the data the demo detector learns from.

What a scene holds, and why:
- Six classes (`CLASSES`): circle, square, triangle, star, cross, ring, in random colours,
  rotations and sizes, drawn without anti-aliasing so each object's pixels are an exact mask.
  A box is the extent of the object's *visible* pixels (x2/y2 exclusive: a box [x1, x2) covers
  pixel columns x1..x2-1). Objects stay fully inside the frame.
- Occlusion: items are placed in z-order; a placement is refused (and retried elsewhere) if it
  would leave any earlier object with under 60 % of its pixels visible, so every labelled
  object is at least 60 % visible and no unlabelled half-hidden object remains.
- Clutter: distractor shapes that are no class (lines, thin ellipses, open arcs, letters and
  digits, scribbles) take part in the same z-order and occlude like objects.
- Backgrounds (see scene_backgrounds): flat+low-frequency noise, gradients, procedural and
  photo textures, photo crops from scikit-image's sample images; then blur, exposure jitter and
  sensor noise over the whole frame. Object colours are chosen to contrast with the pixels
  under them, so every object is visible to a person.
- Sizes: an object's nominal size is drawn from [min_size, 26] px with probability 0.5
  ("small": COCO area under 32^2) and log-uniform from 28 px to 45 % of the shorter side
  otherwise. min_size = max(8, 6 * max(W, H) / 320): the default model sees scenes letterboxed
  to 320, so every object keeps at least ~6 px at that input.
- Scene sizes: `VAL_SIZES` (used for val and test) run from 320x320 to 640x480, so the
  letterbox to 320 shrinks by at most 2x; `TRAIN_SIZES` adds larger frames up to 1280x720.
- Splits: `split_seeds` hands out fixed, disjoint seed ranges: train [0, 10M), val [10M, 20M),
  test [20M, 30M), calib [30M, 40M) (INT8 calibration images: never trained, validated or
  tested on). A box area in COCO files is the box area (w*h), which counts as small no
  object that COCO's mask area would call medium.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

from detserve.models.scene_backgrounds import render_background, sensor_effects
from detserve.models.scene_canvas import (
    DISTRACTOR_LABEL,
    MIN_VISIBLE,
    Canvas,
    Scene,
    pick_colour,
    random_spec,
)
from detserve.models.scene_shapes import (
    CLASSES,
    DISTRACTORS,
    ShapeMask,
    ShapeSpec,
    clip_mask,
    shape_mask,
)

__all__ = ["CLASSES", "MIN_VISIBLE", "TRAIN_SIZES", "VAL_SIZES", "Scene", "render_camera",
           "render_scene", "split_seeds", "write_coco"]

Split = Literal["train", "val", "test", "calib"]
Image = npt.NDArray[np.uint8]
_SPLIT_START = {"train": 0, "val": 10_000_000, "test": 20_000_000, "calib": 30_000_000}
_SPLIT_SPAN = 10_000_000
VAL_SIZES: tuple[tuple[int, int], ...] = (
    (320, 320), (416, 416), (480, 360), (512, 384), (640, 480), (640, 360))
TRAIN_SIZES: tuple[tuple[int, int], ...] = (*VAL_SIZES, (640, 640), (800, 600), (1280, 720))
_MAX_OBJECTS = 24
_TRIES = 8
_MIN_SIDE, _MAX_SIDE = 64, 4096


@dataclass(frozen=True)
class PlacedObject:
    spec: ShapeSpec
    colour: tuple[int, int, int]
    label: int  # value in the label map


@dataclass
class SceneLayout:
    """A scene plus what made it: for tests and debugging."""

    scene: Scene
    background: Image
    labels: Image  # 0 background, i+1 object i, 255 distractor
    objects: list[PlacedObject] = field(default_factory=list)


def _check_size(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if not _MIN_SIDE <= v <= _MAX_SIDE:
            raise ValueError(f"scene {name} must be in [{_MIN_SIDE}, {_MAX_SIDE}], got {v}")


def split_seeds(split: str, n: int) -> list[int]:
    """The first `n` seeds of `split` ("train", "val", "test" or "calib"); ranges never
    overlap."""
    if split not in _SPLIT_START:
        raise ValueError(f"unknown split {split!r}; expected one of {tuple(_SPLIT_START)}")
    if not 0 <= n <= _SPLIT_SPAN:
        raise ValueError(f"n must be in [0, {_SPLIT_SPAN}], got {n}")
    start = _SPLIT_START[split]
    return list(range(start, start + n))


def _place(rng: np.random.Generator, canvas: Canvas, distractor: str,
           label: int) -> tuple[ShapeSpec, ShapeMask] | None:
    for _ in range(_TRIES):
        spec = random_spec(rng, canvas.width, canvas.height, distractor)
        sm = clip_mask(shape_mask(spec), canvas.width, canvas.height)
        if sm.mask.sum() < 4 or not canvas.fits(sm):
            continue
        view = canvas._view(sm)
        colour = pick_colour(rng, canvas.image[view][sm.mask])
        shade = float(rng.uniform(0.15, 0.4)) if rng.random() < 0.25 else 0.0
        canvas.draw(sm, label, colour, shade)
        return spec, sm
    return None


def _item_plan(rng: np.random.Generator, width: int, height: int) -> list[str]:
    """Z-ordered items: "" for a class object, else a distractor name."""
    n_max = int(np.clip(width * height / 10_000, 4, 20))
    items = [""] * int(rng.integers(1, n_max + 1))
    items += [str(d) for d in rng.choice(DISTRACTORS, int(rng.integers(0, 2 + n_max // 3)))]
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def render_layout(seed: int, width: int, height: int, effects: bool = True) -> SceneLayout:
    """Render scene `seed`, keeping the background, label map and placed objects."""
    _check_size(width, height)
    rng = np.random.default_rng(seed)
    background = render_background(rng, width, height)
    canvas = Canvas(background)
    placed: list[tuple[PlacedObject, ShapeMask]] = []
    for item in _item_plan(rng, width, height):
        label = DISTRACTOR_LABEL if item else len(placed) + 1
        if label > _MAX_OBJECTS and not item:
            continue
        done = _place(rng, canvas, item, label)
        if done is not None and not item:
            spec, sm = done
            colour = tuple(int(v) for v in canvas.image[canvas._view(sm)][sm.mask][0])
            placed.append((PlacedObject(spec, (colour[0], colour[1], colour[2]), label), sm))
    boxes, class_ids, objects = [], [], []
    for obj, sm in placed:
        box = canvas.box_of(sm, obj.label)
        if box is not None:
            boxes.append(box)
            class_ids.append(obj.spec.kind)
            objects.append(obj)
    image = sensor_effects(rng, canvas.image) if effects else canvas.image
    scene = Scene(image=image, boxes=np.array(boxes, np.float32).reshape(-1, 4),
                  class_ids=np.array(class_ids, np.int64))
    return SceneLayout(scene=scene, background=background, labels=canvas.labels, objects=objects)


def render_scene(seed: int, width: int, height: int) -> Scene:
    """Scene number `seed` at `width` x `height`: the same seed and size give the same pixels."""
    return render_layout(seed, width, height).scene


def write_coco(directory: str | Path, split: str, n: int,
               sizes: Sequence[tuple[int, int]] | None = None, image_format: str = "png") -> Path:
    """Write `n` scenes of `split` as images + COCO json; returns the json path.

    Scene i has seed split_seeds(split, n)[i] and size sizes[i % len(sizes)] (default
    VAL_SIZES). Layout: `<directory>/<split>/images/<seed>.<fmt>` and
    `<directory>/<split>/annotations.json`.
    """
    from detserve.models.coco import write_scene_set

    chosen = tuple(sizes) if sizes else VAL_SIZES
    return write_scene_set(Path(directory) / split, split_seeds(split, n), chosen,
                           render_scene, CLASSES, image_format, split)


def render_camera(seed: int, n_frames: int, width: int, height: int) -> Iterator[Scene]:
    """A "camera" sequence: the same background, objects moving (and bouncing) across frames."""
    from detserve.models.scene_camera import camera_frames

    _check_size(width, height)
    if n_frames < 0:
        raise ValueError(f"n_frames must be >= 0, got {n_frames}")
    return camera_frames(seed, n_frames, width, height)
