"""Camera sequences: one background, objects that move, spin and bounce off the frame edges.

Objects may occlude each other and leave the frame partly; a frame labels an object only while
at least half of its pixels are visible, the same kind of rule the still scenes use.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, replace

import numpy as np

from detserve.models.scene_backgrounds import render_background, sensor_effects
from detserve.models.scene_canvas import Canvas, Scene, pick_colour, random_spec
from detserve.models.scene_shapes import ShapeSpec, clip_mask, shape_mask

_LABELLED_FRACTION = 0.5


@dataclass
class _Mover:
    spec: ShapeSpec
    vx: float
    vy: float
    spin: float
    colour: tuple[int, int, int]

    def step(self, width: int, height: int) -> None:
        s = self.spec
        cx, cy = s.cx + self.vx, s.cy + self.vy
        if not 0 <= cx < width:
            self.vx = -self.vx
            cx = min(max(cx, 0.0), width - 1.0)
        if not 0 <= cy < height:
            self.vy = -self.vy
            cy = min(max(cy, 0.0), height - 1.0)
        self.spec = replace(s, cx=cx, cy=cy, angle=s.angle + self.spin)


def _movers(rng: np.random.Generator, background: np.ndarray, n: int, distractor: str
            ) -> list[_Mover]:
    h, w = background.shape[:2]
    out = []
    for _ in range(n):
        spec = random_spec(rng, w, h, distractor)
        sm = clip_mask(shape_mask(spec), w, h)
        under = background[sm.y0 : sm.y0 + sm.mask.shape[0], sm.x0 : sm.x0 + sm.mask.shape[1]]
        colour = pick_colour(rng, under[sm.mask])
        speed, heading = rng.uniform(1.0, 6.0), rng.uniform(0, 2 * math.pi)
        out.append(_Mover(spec, speed * math.cos(heading), speed * math.sin(heading),
                          float(rng.uniform(-0.1, 0.1)), colour))
    return out


def _frame(background: np.ndarray, objects: list[_Mover], clutter: list[_Mover],
           rng: np.random.Generator) -> Scene:
    h, w = background.shape[:2]
    canvas = Canvas(background)
    drawn = []
    for c in clutter:
        canvas.draw(clip_mask(shape_mask(c.spec), w, h), 255, c.colour)
    for i, m in enumerate(objects, start=1):
        full = shape_mask(m.spec)
        sm = clip_mask(full, w, h)
        canvas.draw(sm, i, m.colour)
        drawn.append((i, m.spec.kind, sm, int(full.mask.sum())))
    boxes, ids = [], []
    for label, kind, sm, full_px in drawn:
        box = canvas.box_of(sm, label) if sm.mask.size else None
        if box is not None and canvas.visible[label] >= _LABELLED_FRACTION * full_px:
            boxes.append(box)
            ids.append(kind)
    return Scene(image=sensor_effects(rng, canvas.image),
                 boxes=np.array(boxes, np.float32).reshape(-1, 4),
                 class_ids=np.array(ids, np.int64))


def camera_frames(seed: int, n_frames: int, width: int, height: int) -> Iterator[Scene]:
    rng = np.random.default_rng(seed)
    background = render_background(rng, width, height)
    objects = _movers(rng, background, int(rng.integers(2, 8)), "")
    clutter = _movers(rng, background, int(rng.integers(0, 3)), "glyph")
    for k in range(n_frames):
        # Noise differs per frame, as a real sensor's does, yet stays reproducible.
        yield _frame(background, objects, clutter, np.random.default_rng((seed, k)))
        for m in objects:
            m.step(width, height)
