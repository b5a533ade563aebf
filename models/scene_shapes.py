"""Masks of the object classes and of the distractor shapes, drawn with OpenCV.

Every shape is rendered as a boolean mask over its own small region of interest (ROI), without
anti-aliasing, so "the drawn pixels" of an object are exactly its mask and its box can be read
from the mask. Coordinates go through OpenCV's fixed-point `shift` so sub-pixel placement is kept.
"""

from __future__ import annotations

import functools
import math
import string
from dataclasses import dataclass

import cv2
import numpy as np
import numpy.typing as npt

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "ring")
DISTRACTORS: tuple[str, ...] = ("line", "ellipse", "arc", "glyph", "scribble")

# Letters unlike any class shape (no O/D/Q/C ~ circle/ring, X/T ~ cross, V/A ~ triangle).
_GLYPHS = "BEFGHJKLMNPRSUWYZ" + string.digits.replace("0", "").replace("8", "")
_SHIFT = 4
_ONE = 1 << _SHIFT

BoolMask = npt.NDArray[np.bool_]


@dataclass(frozen=True)
class ShapeSpec:
    """One drawable item: a class (`kind` < len(CLASSES)) or a distractor (`distractor` set)."""

    kind: int
    cx: float
    cy: float
    size: float
    angle: float
    distractor: str = ""
    # Free shape parameters in [0, 1), fixed per item so re-rendering is exact.
    params: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class ShapeMask:
    """`mask` covers pixels `[y0:y0+h, x0:x0+w]` of the scene (may extend past its borders)."""

    x0: int
    y0: int
    mask: BoolMask


def _rotated(points: npt.NDArray[np.float64], angle: float) -> npt.NDArray[np.float64]:
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    out: npt.NDArray[np.float64] = points @ rot.T
    return out


def _polar(radii: npt.NDArray[np.float64], start: float) -> npt.NDArray[np.float64]:
    theta = start + np.arange(radii.shape[0]) * (2 * math.pi / radii.shape[0])
    return np.stack([radii * np.cos(theta), radii * np.sin(theta)], axis=1)


def _class_polygon(spec: ShapeSpec) -> npt.NDArray[np.float64] | None:
    """Vertices relative to the centre, or None for the round classes."""
    half = spec.size / 2.0
    name = CLASSES[spec.kind]
    if name == "square":
        pts = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
        return _rotated(pts, spec.angle)
    if name == "triangle":
        return _polar(np.full(3, half * 1.1), spec.angle)
    if name == "star":
        # Fat points (inner ratio 0.45-0.5) keep a star a star at ~10 px.
        inner = half * (0.45 + 0.05 * spec.params[0])
        return _polar(np.array([half, inner] * 5, dtype=np.float64), spec.angle)
    if name == "cross":
        arm = half * (0.34 + 0.08 * spec.params[0])
        pts = np.array([
            [-arm, -half], [arm, -half], [arm, -arm], [half, -arm], [half, arm], [arm, arm],
            [arm, half], [-arm, half], [-arm, arm], [-half, arm], [-half, -arm], [-arm, -arm],
        ])
        return _rotated(pts, spec.angle)
    return None


def _roi(spec: ShapeSpec, radius: float) -> tuple[int, int, int, int]:
    r = math.ceil(radius) + 2
    x0, y0 = math.floor(spec.cx) - r, math.floor(spec.cy) - r
    return x0, y0, 2 * r + 2, 2 * r + 2


def _fixed(points: npt.NDArray[np.float64], x0: int, y0: int) -> npt.NDArray[np.int32]:
    shifted = (points - np.array([x0, y0])) * _ONE
    return np.asarray(np.round(shifted), np.int32)


def _class_mask(spec: ShapeSpec) -> ShapeMask:
    half = spec.size / 2.0
    x0, y0, w, h = _roi(spec, half * 1.45)
    canvas = np.zeros((h, w), np.uint8)
    poly = _class_polygon(spec)
    centre = (spec.cx, spec.cy)
    if poly is not None:
        pts = _fixed(poly + np.array(centre), x0, y0)
        cv2.fillPoly(canvas, [pts], 1, cv2.LINE_8, _SHIFT)
    else:
        c = (round((spec.cx - x0) * _ONE), round((spec.cy - y0) * _ONE))
        cv2.circle(canvas, c, round(half * _ONE), 1, -1, cv2.LINE_8, _SHIFT)
        if CLASSES[spec.kind] == "ring":
            inner = half * (0.5 + 0.08 * spec.params[0])
            cv2.circle(canvas, c, round(inner * _ONE), 0, -1, cv2.LINE_8, _SHIFT)
    return ShapeMask(x0, y0, canvas.astype(bool))


def _distractor_mask(spec: ShapeSpec) -> ShapeMask:
    half = spec.size / 2.0
    p = spec.params
    x0, y0, w, h = _roi(spec, half * 1.5)
    canvas = np.zeros((h, w), np.uint8)
    c = np.array([spec.cx - x0, spec.cy - y0])
    thick = max(1, round(1 + 3 * p[1]))
    if spec.distractor == "line":
        d = _rotated(np.array([[half, 0.0]]), spec.angle)[0]
        a, b = _fixed(np.array([c - d, c + d]), 0, 0)
        cv2.line(canvas, tuple(a), tuple(b), 1, thick, cv2.LINE_8, _SHIFT)
    elif spec.distractor in ("ellipse", "arc"):
        long_ax = round(half * _ONE)
        short_ax = round(half * (0.18 + 0.17 * p[0]) * _ONE)
        axes = (long_ax, short_ax) if spec.distractor == "ellipse" else (long_ax, long_ax)
        span = 360.0 if spec.distractor == "ellipse" else 70.0 + 110.0 * p[2]
        fill = -1 if spec.distractor == "ellipse" else thick + 1
        centre = tuple(int(v) for v in np.round(c * _ONE))
        cv2.ellipse(canvas, centre, axes, math.degrees(spec.angle), 0.0, span, 1, fill,
                    cv2.LINE_8, _SHIFT)
    elif spec.distractor == "glyph":
        _draw_glyph(canvas, spec, c)
    else:
        pts = _rotated((np.array([p]).reshape(2, 2) - 0.5) * spec.size, spec.angle)
        poly = np.concatenate([[-pts[0]], pts, [np.array([half * 0.5, -half * 0.5])]]) + c
        cv2.polylines(canvas, [_fixed(poly, 0, 0)], False, 1, thick, cv2.LINE_8, _SHIFT)
    return ShapeMask(x0, y0, canvas.astype(bool))


@functools.cache
def _text_size(text: str, scale: float, thick: int) -> tuple[int, int]:
    # getTextSize costs about as much as drawing the glyph; sizes repeat, so cache them.
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    return int(tw), int(th)


def _draw_glyph(canvas: npt.NDArray[np.uint8], spec: ShapeSpec, centre: npt.NDArray[np.float64]
                ) -> None:
    text = _GLYPHS[int(spec.params[0] * len(_GLYPHS)) % len(_GLYPHS)]
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = round(max(spec.size / 22.0, 0.3), 2)
    thick = max(1, round(scale * (1.5 + 1.5 * spec.params[1])))
    tw, th = _text_size(text, scale, thick)
    org = (round(centre[0] - tw / 2), round(centre[1] + th / 2))
    cv2.putText(canvas, text, org, font, scale, 1, thick, cv2.LINE_8)


def shape_mask(spec: ShapeSpec) -> ShapeMask:
    """The exact pixels `spec` covers (before occlusion and clipping to the scene)."""
    if spec.distractor:
        if spec.distractor not in DISTRACTORS:
            raise ValueError(f"unknown distractor {spec.distractor!r}; known: {DISTRACTORS}")
        return _distractor_mask(spec)
    if not 0 <= spec.kind < len(CLASSES):
        raise ValueError(f"class id {spec.kind} out of range 0..{len(CLASSES) - 1}")
    return _class_mask(spec)


def clip_mask(sm: ShapeMask, width: int, height: int) -> ShapeMask:
    """`sm` cut to the scene `width` x `height` (its ROI may start at negative coordinates)."""
    h, w = sm.mask.shape
    cx0, cy0 = max(sm.x0, 0), max(sm.y0, 0)
    cx1, cy1 = min(sm.x0 + w, width), min(sm.y0 + h, height)
    if cx1 <= cx0 or cy1 <= cy0:
        return ShapeMask(cx0, cy0, np.zeros((0, 0), bool))
    sub = sm.mask[cy0 - sm.y0 : cy1 - sm.y0, cx0 - sm.x0 : cx1 - sm.x0]
    return ShapeMask(cx0, cy0, sub)
