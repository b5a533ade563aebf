"""COCO-format detection sets: typed loading and writing.

Category ids are 1-based (COCO's convention) and matched to a model's classes by *name*, so a
COCO set can be evaluated against any model that shares its class names. An annotation's `area`
is its box area (w * h) in sets written here.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import numpy.typing as npt

ANNOTATIONS_FILE = "annotations.json"
IMAGE_FORMATS = ("png", "jpg")


class SceneLike(Protocol):
    image: npt.NDArray[np.uint8]
    boxes: npt.NDArray[np.float32]
    class_ids: npt.NDArray[np.int64]


class CocoError(ValueError):
    """A COCO file is missing a field or has a bad value."""


@dataclass(frozen=True)
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int


@dataclass(frozen=True)
class CocoSet:
    """A loaded set: `path` is the json file; image files are relative to its folder."""

    path: Path
    images: tuple[CocoImage, ...]
    categories: dict[int, str]
    raw: dict[str, Any]

    def image_path(self, image: CocoImage) -> Path:
        return self.path.parent / image.file_name

    def read_rgb(self, image: CocoImage) -> npt.NDArray[np.uint8]:
        path = self.image_path(image)
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise CocoError(f"cannot read image {path} (image id {image.id})")
        return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8)


def _field(raw: dict[str, Any], key: str, where: str) -> Any:
    if key not in raw:
        raise CocoError(f"{where} has no '{key}' field")
    return raw[key]


def load_coco(path: str | Path) -> CocoSet:
    """Read a COCO detection json (images, annotations, categories)."""
    p = Path(path)
    if p.is_dir():
        p = p / ANNOTATIONS_FILE
    if not p.is_file():
        raise CocoError(f"COCO annotations file not found: {p}")
    try:
        raw = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CocoError(f"{p} is not valid JSON: {e}") from e
    images = tuple(
        CocoImage(int(_field(i, "id", "image")), str(_field(i, "file_name", "image")),
                  int(_field(i, "width", "image")), int(_field(i, "height", "image")))
        for i in _field(raw, "images", str(p)))
    cats = {int(_field(c, "id", "category")): str(_field(c, "name", "category"))
            for c in _field(raw, "categories", str(p))}
    raw.setdefault("annotations", [])
    for a in raw["annotations"]:
        if int(_field(a, "category_id", "annotation")) not in cats:
            raise CocoError(f"annotation {a.get('id')} has unknown category_id {a['category_id']}")
    return CocoSet(path=p, images=images, categories=cats, raw=raw)


def scene_annotations(scene: SceneLike, image_id: int, first_ann_id: int) -> list[dict[str, Any]]:
    """COCO annotations (1-based category ids, xywh boxes) of one scene."""
    anns = []
    for k, (box, cls) in enumerate(zip(scene.boxes, scene.class_ids, strict=True)):
        x1, y1, x2, y2 = (float(v) for v in box)
        w, h = x2 - x1, y2 - y1
        anns.append({"id": first_ann_id + k, "image_id": image_id, "category_id": int(cls) + 1,
                     "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0})
    return anns


def write_scene_set(folder: Path, seeds: Sequence[int], sizes: Sequence[tuple[int, int]],
                    render: Callable[[int, int, int], SceneLike], classes: Sequence[str],
                    image_format: str = "png", split: str | None = None) -> Path:
    """Render `seeds` (scene i at sizes[i % len(sizes)]) into `folder`; returns the json path."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    if not sizes:
        raise ValueError("sizes must name at least one (width, height)")
    (folder / "images").mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, seed in enumerate(seeds):
        w, h = sizes[i % len(sizes)]
        scene = render(seed, w, h)
        name = f"images/{seed:08d}.{image_format}"
        params = [cv2.IMWRITE_JPEG_QUALITY, 92] if image_format == "jpg" else []
        bgr = cv2.cvtColor(scene.image, cv2.COLOR_RGB2BGR)
        if not cv2.imwrite(str(folder / name), bgr, params):
            raise OSError(f"could not write {folder / name}")
        images.append({"id": i + 1, "file_name": name, "width": w, "height": h, "seed": seed})
        annotations += scene_annotations(scene, i + 1, len(annotations) + 1)
    doc = {
        "info": {"description": f"detserve synthetic scenes, seeds {seeds[0] if seeds else '-'}"
                 f"..{seeds[-1] if seeds else '-'}", "split": split},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": "shape"}
                       for k, n in enumerate(classes)],
    }
    out = folder / ANNOTATIONS_FILE
    out.write_text(json.dumps(doc))
    return out
