"""Scene backgrounds (flat+noise, gradients, procedural textures, photos) and sensor effects.

Photo backgrounds are crops of the sample images scikit-image ships (astronaut, coffee, rocket,
...); grey samples (brick, grass, gravel, ...) are tinted and used as textures. Without
scikit-image the procedural kinds stand in, so scenes then differ from those rendered with it.
Per-pixel noise comes from one fixed noise tile cropped at a random offset: drawing fresh
Gaussian noise for every scene would cost more than all the rest of the rendering.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.uint8]
KINDS: tuple[str, ...] = ("noise", "gradient", "texture", "photo")

_COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "retina", "colorwheel")
_GREY_TEXTURES = ("brick", "grass", "gravel", "camera", "coins", "moon", "text", "page")
_TILE = 1024


@functools.cache
def _photos() -> tuple[tuple[Image, ...], tuple[Image, ...]]:
    """(colour photos, grey textures) from scikit-image, or two empty tuples without it."""
    try:
        import skimage.data as data
    except ImportError:
        return (), ()
    colour = tuple(np.ascontiguousarray(getattr(data, n)()[..., :3]) for n in _COLOUR_PHOTOS)
    grey = tuple(np.ascontiguousarray(getattr(data, n)()) for n in _GREY_TEXTURES)
    return colour, grey


def has_photos() -> bool:
    return bool(_photos()[0])


@functools.cache
def _noise_tile() -> npt.NDArray[np.int16]:
    rng = np.random.default_rng(20240601)
    return np.clip(rng.normal(0.0, 8.0, (_TILE, _TILE, 3)), -32, 32).astype(np.int16)


def _random_colour(rng: np.random.Generator) -> npt.NDArray[np.float32]:
    return rng.uniform(0, 255, 3).astype(np.float32)


def _tint(t: Image, a: npt.NDArray[np.floating[Any]], b: npt.NDArray[np.floating[Any]]) -> Image:
    """Map a grey level image `t` (0..255) onto the colour ramp a -> b, via one 3-channel LUT."""
    ramp = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    lut = np.clip(a + (b - a) * ramp, 0, 255).astype(np.uint8).reshape(256, 1, 3)
    return np.asarray(cv2.LUT(cv2.merge([t, t, t]), lut), np.uint8)


def _to_grey(values: npt.NDArray[np.float32]) -> Image:
    """[-1, 1] -> 0..255."""
    return np.asarray(np.clip(values * 127.5 + 127.5, 0, 255), np.uint8)


def _noise_bg(rng: np.random.Generator, w: int, h: int) -> Image:
    base = _random_colour(rng)
    amp = rng.uniform(10, 50)
    cells = int(rng.integers(3, 12))
    small = np.clip(base + amp * rng.normal(0.0, 1.0, (cells, cells, 3)), 0, 255)
    return np.asarray(cv2.resize(small.astype(np.uint8), (w, h),
                                 interpolation=cv2.INTER_CUBIC), np.uint8)


def _gradient_bg(rng: np.random.Generator, w: int, h: int) -> Image:
    a, b = _random_colour(rng), _random_colour(rng)
    theta = rng.uniform(0, 2 * math.pi)
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32) * math.cos(theta)
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32) * math.sin(theta)
    return _tint(_to_grey(ys[:, None] + xs[None, :]), a, b)


def _stripes(rng: np.random.Generator, w: int, h: int) -> npt.NDArray[np.float32]:
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(6, 60)
    xs = np.arange(w, dtype=np.float32) * math.cos(theta)
    ys = np.arange(h, dtype=np.float32) * math.sin(theta)
    wave = np.sin((ys[:, None] + xs[None, :]) * (2 * math.pi / period))
    if rng.random() < 0.5:  # a checkerboard from two crossing waves
        xs2 = np.arange(w, dtype=np.float32) * -math.sin(theta)
        ys2 = np.arange(h, dtype=np.float32) * math.cos(theta)
        wave = wave * np.sin((ys2[:, None] + xs2[None, :]) * (2 * math.pi / period))
    out: npt.NDArray[np.float32] = np.sign(wave) if rng.random() < 0.5 else wave
    return out


def _texture_bg(rng: np.random.Generator, w: int, h: int) -> Image:
    grey = _photos()[1]
    if grey and rng.random() < 0.6:
        src = grey[int(rng.integers(len(grey)))]
        t = np.clip(_crop(rng, src, w, h).astype(np.int16) * 2 - 128, 0, 255).astype(np.uint8)
    else:
        t = _to_grey(_stripes(rng, w, h))
    a, b = _random_colour(rng), _random_colour(rng)
    mid, half = (a + b) / 2, (b - a) / 2 * rng.uniform(0.2, 0.8)
    return _tint(t, mid - half, mid + half)


def _crop(rng: np.random.Generator, src: Image, w: int, h: int) -> Image:
    sh, sw = src.shape[:2]
    zoom = rng.uniform(0.4, 1.0)
    aspect = w / h
    ch = min(sh, max(16, int(sh * zoom)))
    cw = min(sw, max(16, int(ch * aspect)))
    ch = min(ch, max(16, int(cw / aspect)))
    y = int(rng.integers(0, sh - ch + 1))
    x = int(rng.integers(0, sw - cw + 1))
    out = cv2.resize(src[y : y + ch, x : x + cw], (w, h), interpolation=cv2.INTER_LINEAR)
    return np.asarray(out, np.uint8)


def _photo_bg(rng: np.random.Generator, w: int, h: int) -> Image:
    colour = _photos()[0]
    if not colour:
        return _texture_bg(rng, w, h)
    img = _crop(rng, colour[int(rng.integers(len(colour)))], w, h)
    if rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
    return img


def render_background(rng: np.random.Generator, w: int, h: int) -> Image:
    """One background of a kind drawn from `rng` (photo 35 %, texture 30 %, others 35 %)."""
    kind = rng.choice(len(KINDS), p=[0.15, 0.2, 0.3, 0.35])
    maker = (_noise_bg, _gradient_bg, _texture_bg, _photo_bg)[int(kind)]
    return maker(rng, w, h)


def sensor_effects(rng: np.random.Generator, img: Image) -> Image:
    """Blur, exposure and per-pixel noise, applied to the whole finished scene."""
    if rng.random() < 0.25:
        img = np.asarray(cv2.GaussianBlur(img, (3, 3), 0), np.uint8)
    h, w = img.shape[:2]
    gain = rng.uniform(0.85, 1.15)
    bias = rng.uniform(-15, 15)
    amp = int(rng.integers(0, 5))  # noise sigma = amp * 4 (0..16 grey levels)
    tile = _noise_tile()
    reps_y, reps_x = -(-h // _TILE), -(-w // _TILE)
    if reps_y > 1 or reps_x > 1:
        tile = np.tile(tile, (reps_y, reps_x, 1))
    y = int(rng.integers(0, tile.shape[0] - h + 1))
    x = int(rng.integers(0, tile.shape[1] - w + 1))
    lut = np.clip(np.arange(256) * gain + bias, 0, 255).astype(np.uint8)
    exposed = np.asarray(cv2.LUT(img, lut), np.uint8)
    if amp == 0:
        return exposed
    noise = tile[y : y + h, x : x + w] * np.int16(amp) // 2
    return np.clip(exposed.astype(np.int16) + noise, 0, 255).astype(np.uint8)
