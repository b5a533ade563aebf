"""A tiny COCO set whose right answer is known: the blocks model (tests/conftest.py) finds every
object in it exactly. Shared by the evaluation and precision-report tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def write_blocks_set(root: Path) -> Path:
    """Three 64x64 black images with saturated 32x32 colour blocks on the blocks model's grid.

    Returns the path of `root/annotations.json` (val split).
    """
    colours = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
    layout = [[("red", 0, 0)], [("green", 32, 0), ("blue", 0, 32)], [("blue", 32, 32)]]
    (root / "images").mkdir(parents=True)
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for i, blocks in enumerate(layout, start=1):
        img = np.zeros((64, 64, 3), np.uint8)
        for name, x, y in blocks:
            img[y : y + 32, x : x + 32] = colours[name]
            anns.append({"id": len(anns) + 1, "image_id": i, "bbox": [x, y, 32, 32],
                         "category_id": list(colours).index(name) + 1, "area": 1024,
                         "iscrowd": 0})  # fmt: skip
        cv2.imwrite(str(root / f"images/{i}.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        images.append({"id": i, "file_name": f"images/{i}.png", "width": 64, "height": 64})
    doc = {"info": {"split": "val"}, "images": images, "annotations": anns,
           "categories": [{"id": k + 1, "name": n} for k, n in enumerate(colours)]}  # fmt: skip
    path = root / "annotations.json"
    path.write_text(json.dumps(doc))
    return path
