"""Training data: a pre-rendered pool of synthetic scenes, cached on disk, plus augmentation.

Rendering a scene costs about as much CPU as a training step on it, and the machine has 2 cores,
so scenes are rendered once into a pool (cached under `data/`) and every epoch sees the pool
through fresh augmentation: scale jitter, random placement in the letterbox canvas, flips. All
classes are symmetric shapes, so flips never change a label.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import pickle
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt
import torch
from tqdm import tqdm

PAD_VALUE = 114
DEFAULT_SIZES: tuple[tuple[int, int], ...] = ((320, 320), (640, 480), (640, 640), (1280, 720))

Image = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Sample:
    """One scene: HxWx3 uint8 RGB, boxes `[K, 4]` x1y1x2y2 float32 pixels, classes `[K]` int64."""

    image: Image
    boxes: npt.NDArray[np.float32]
    classes: npt.NDArray[np.int64]


@dataclass(frozen=True)
class LetterboxFit:
    scale: float
    pad_x: int
    pad_y: int
    new_w: int
    new_h: int


def letterbox_fit(width: int, height: int, size: int) -> LetterboxFit:
    """Scale to fit `size`, centred; the same rounding as Ultralytics' letterbox."""
    r = min(size / width, size / height)
    new_w, new_h = round(width * r), round(height * r)
    pad_x, pad_y = round((size - new_w) / 2 - 0.1), round((size - new_h) / 2 - 0.1)
    return LetterboxFit(r, pad_x, pad_y, new_w, new_h)


def letterbox(image: Image, size: int) -> tuple[Image, LetterboxFit]:
    h, w = image.shape[:2]
    fit = letterbox_fit(w, h, size)
    canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
    resized = cv2.resize(image, (fit.new_w, fit.new_h), interpolation=cv2.INTER_LINEAR)
    canvas[fit.pad_y: fit.pad_y + fit.new_h, fit.pad_x: fit.pad_x + fit.new_w] = resized
    return canvas, fit


def _scenes_fingerprint() -> str:
    """Hash of the scene generator's source: a changed generator invalidates cached pools."""
    from detserve.models import scenes

    digest = hashlib.sha256()
    for name in sorted(n for n in dir(scenes) if not n.startswith("_")):
        module = inspect.getmodule(getattr(scenes, name))
        if module is not None and module.__name__.startswith("detserve.models"):
            digest.update(inspect.getsource(module).encode())
    return digest.hexdigest()[:12]


def _shrink(scene_image: Image, boxes: npt.NDArray[np.float32], max_side: int
            ) -> tuple[Image, npt.NDArray[np.float32]]:
    h, w = scene_image.shape[:2]
    r = max_side / max(h, w)
    if r >= 1:
        return scene_image, boxes
    new = (round(w * r), round(h * r))
    small = cv2.resize(scene_image, new, interpolation=cv2.INTER_AREA)
    return small.astype(np.uint8), (boxes * np.float32(r)).astype(np.float32)


def render_pool(split: str, n: int, sizes: Sequence[tuple[int, int]], max_side: int | None,
                cache_dir: Path | None, progress: bool = True, workers: int = 1) -> list[Sample]:
    """Render `n` scenes of `split` (sizes cycle through `sizes`), downscaled so the longer side
    is at most `max_side` (None keeps full size). Cached as a pickle keyed by every argument and
    the generator's source hash. `workers` > 1 renders in that many processes; every scene
    depends only on its seed, so the pool is the same either way."""
    from detserve.models import scenes

    if n < 1:
        raise ValueError(f"scene count must be >= 1, got {n}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    key = hashlib.sha256(
        repr((split, n, tuple(sizes), max_side, _scenes_fingerprint())).encode()
    ).hexdigest()[:16]
    path = cache_dir / f"pool_{split}_{n}_{key}.pkl" if cache_dir else None
    if path is not None and path.is_file():
        with path.open("rb") as fh:
            cached: list[Sample] = pickle.load(fh)
        return cached
    seeds = scenes.split_seeds(split, n)
    jobs = [(seed, sizes[i % len(sizes)], max_side) for i, seed in enumerate(seeds)]
    bar = functools.partial(tqdm, total=n, desc=f"render {split}", disable=not progress)
    if workers == 1:
        pool = [_render_sample(job) for job in bar(jobs)]
    else:
        with ProcessPoolExecutor(workers) as executor:
            pool = list(bar(executor.map(_render_sample, jobs, chunksize=16)))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with tmp.open("wb") as fh:
            pickle.dump(pool, fh, protocol=pickle.HIGHEST_PROTOCOL)
        tmp.replace(path)
    return pool


def _render_sample(job: tuple[int, tuple[int, int], int | None]) -> Sample:
    from detserve.models import scenes

    seed, (w, h), max_side = job
    scene = scenes.render_scene(seed, w, h)
    boxes = np.asarray(scene.boxes, np.float32).reshape(-1, 4)
    image = np.ascontiguousarray(scene.image)
    if max_side is not None:
        image, boxes = _shrink(image, boxes, max_side)
    return Sample(image, boxes, np.asarray(scene.class_ids, np.int64).reshape(-1))


@dataclass(frozen=True)
class AugmentConfig:
    size: int = 320
    scale_range: tuple[float, float] = (0.7, 1.4)
    jitter_prob: float = 0.7  # otherwise the exact centred letterbox the server uses
    flip_prob: float = 0.5
    min_visible: float = 0.45  # fraction of a box's area that must stay inside the canvas
    min_side: float = 3.0


def _place(new: int, size: int, rng: np.random.Generator) -> tuple[int, int]:
    """(offset into canvas, offset into source) along one axis."""
    if new <= size:
        return int(rng.integers(0, size - new + 1)), 0
    return 0, int(rng.integers(0, new - size + 1))


def augment(sample: Sample, cfg: AugmentConfig, rng: np.random.Generator
            ) -> tuple[Image, npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """A `size` x `size` training image with its boxes (input pixels) and classes."""
    h, w = sample.image.shape[:2]
    size = cfg.size
    if rng.random() >= cfg.jitter_prob:
        canvas, fit = letterbox(sample.image, size)
        boxes = sample.boxes * np.float32(fit.scale) + np.array(
            [fit.pad_x, fit.pad_y, fit.pad_x, fit.pad_y], np.float32)
    else:
        r = min(size / w, size / h) * float(rng.uniform(*cfg.scale_range))
        new_w, new_h = max(1, round(w * r)), max(1, round(h * r))
        resized = cv2.resize(sample.image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        (dx, sx), (dy, sy) = _place(new_w, size, rng), _place(new_h, size, rng)
        canvas = np.full((size, size, 3), PAD_VALUE, np.uint8)
        crop = resized[sy: sy + size, sx: sx + size]
        canvas[dy: dy + crop.shape[0], dx: dx + crop.shape[1]] = crop
        shift = np.array([dx - sx, dy - sy, dx - sx, dy - sy], np.float32)
        boxes = sample.boxes * np.float32(r) + shift
    boxes, classes = _clip_boxes(boxes, sample.classes, size, cfg)
    if rng.random() < cfg.flip_prob:
        canvas = canvas[:, ::-1]
        boxes = np.stack([size - boxes[:, 2], boxes[:, 1], size - boxes[:, 0], boxes[:, 3]], 1)
    if rng.random() < cfg.flip_prob:
        canvas = canvas[::-1]
        boxes = np.stack([boxes[:, 0], size - boxes[:, 3], boxes[:, 2], size - boxes[:, 1]], 1)
    return np.ascontiguousarray(canvas), boxes.astype(np.float32), classes


def _clip_boxes(boxes: npt.NDArray[np.float32], classes: npt.NDArray[np.int64], size: int,
                cfg: AugmentConfig) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    clipped = boxes.clip(0, size)
    wh = clipped[:, 2:] - clipped[:, :2]
    keep = (wh.prod(1) >= cfg.min_visible * area) & (wh.min(1) >= cfg.min_side)
    return clipped[keep].reshape(-1, 4), classes[keep]


@dataclass(frozen=True)
class Batch:
    images: torch.Tensor  # [B, 3, S, S] float in [0, 1], channels-last
    boxes: list[torch.Tensor]
    classes: list[torch.Tensor]


def make_batch(samples: Sequence[Sample], cfg: AugmentConfig, rng: np.random.Generator) -> Batch:
    images, boxes, classes = [], [], []
    for sample in samples:
        img, bx, cl = augment(sample, cfg, rng)
        images.append(img)
        boxes.append(torch.from_numpy(bx))
        classes.append(torch.from_numpy(cl))
    stacked = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return Batch(stacked.contiguous(memory_format=torch.channels_last), boxes, classes)
