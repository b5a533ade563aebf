from __future__ import annotations

import itertools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from detserve.models.coco import load_coco
from detserve.models.scene_shapes import CLASSES, clip_mask, shape_mask
from detserve.models.scenes import (
    MIN_VISIBLE,
    VAL_SIZES,
    render_camera,
    render_layout,
    render_scene,
    split_seeds,
    write_coco,
)


def _mask_box(mask: np.ndarray, x0: int = 0, y0: int = 0) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return [x0 + cols[0], y0 + rows[0], x0 + cols[-1] + 1, y0 + rows[-1] + 1]


def test_same_seed_same_scene_and_other_seed_differs() -> None:
    a, b = render_scene(7, 416, 416), render_scene(7, 416, 416)
    c = render_scene(8, 416, 416)
    assert np.array_equal(a.image, b.image)
    assert np.array_equal(a.boxes, b.boxes)
    assert np.array_equal(a.class_ids, b.class_ids)
    assert not np.array_equal(a.image, c.image)
    assert a.image.shape == (416, 416, 3) and a.image.dtype == np.uint8


@pytest.mark.parametrize("seed", [3, 11, 10_000_005])
def test_boxes_are_the_extent_of_each_objects_visible_pixels(seed: int) -> None:
    layout = render_layout(seed, 480, 360, effects=False)
    scene = layout.scene
    assert len(layout.objects) == len(scene.boxes) > 0
    for obj, box, cls in zip(layout.objects, scene.boxes, scene.class_ids, strict=True):
        visible = layout.labels == obj.label
        assert box.tolist() == _mask_box(visible)
        assert cls == obj.spec.kind
        drawn = clip_mask(shape_mask(obj.spec), 480, 360)
        full = np.zeros_like(visible)
        h, w = drawn.mask.shape
        full[drawn.y0 : drawn.y0 + h, drawn.x0 : drawn.x0 + w] = drawn.mask
        # Visible pixels are a subset of the drawn shape, and at least MIN_VISIBLE of it.
        assert not np.any(visible & ~full)
        assert visible.sum() >= MIN_VISIBLE * full.sum()
        if visible.sum() == full.sum():  # unoccluded: the box is the whole shape's extent
            assert box.tolist() == _mask_box(full)


def test_objects_change_the_pixels_they_cover_and_nothing_else() -> None:
    layout = render_layout(21, 320, 320, effects=False)
    image, bg = layout.scene.image, layout.background
    untouched = layout.labels == 0
    assert np.array_equal(image[untouched], bg[untouched])
    for obj in layout.objects:
        covered = layout.labels == obj.label
        changed = np.any(image[covered] != bg[covered], axis=1)
        assert changed.mean() > 0.9


def test_splits_are_disjoint_fixed_ranges() -> None:
    train, val, test = (set(split_seeds(s, 2000)) for s in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert split_seeds("val", 3) == split_seeds("val", 5)[:3]
    with pytest.raises(ValueError, match="'dev'"):
        split_seeds("dev", 3)


def test_calib_split_is_disjoint_from_train_val_and_test() -> None:
    span = 10_000_000
    starts = {s: split_seeds(s, 1)[0] for s in ("train", "val", "test", "calib")}
    for split in starts:
        assert split_seeds(split, 2)[1] == starts[split] + 1
        with pytest.raises(ValueError, match=f"n must be in \\[0, {span}\\], got {span + 1}"):
            split_seeds(split, span + 1)  # so a split never reaches past start + span
    ordered = sorted(starts.values())
    assert all(a + span <= b for a, b in itertools.pairwise(ordered))
    assert split_seeds("calib", 3) == [30_000_000, 30_000_001, 30_000_002]


def test_bad_scene_size_is_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match=r"width .* got 10"):
        render_scene(0, 10, 320)


def test_val_scenes_are_hard_enough() -> None:
    areas, counts = [], []
    for i, seed in enumerate(split_seeds("val", 60)):
        w, h = VAL_SIZES[i % len(VAL_SIZES)]
        s = render_scene(seed, w, h)
        areas += ((s.boxes[:, 2] - s.boxes[:, 0]) * (s.boxes[:, 3] - s.boxes[:, 1])).tolist()
        counts.append(len(s.boxes))
        assert set(s.class_ids.tolist()) <= set(range(len(CLASSES)))
    small = np.mean(np.array(areas) < 32**2)
    assert small >= 0.40, f"only {small:.0%} of val objects are small"
    assert np.mean(np.array(areas) >= 96**2) > 0.03  # large objects exist too
    assert max(counts) >= 8 and min(counts) >= 1


def test_write_coco_round_trip(tmp_path: Path) -> None:
    path = write_coco(tmp_path, "val", 3, sizes=[(320, 320), (480, 360)])
    coco = load_coco(path)
    assert [c for _, c in sorted(coco.categories.items())] == list(CLASSES)
    assert [(i.width, i.height) for i in coco.images] == [(320, 320), (480, 360), (320, 320)]
    doc = json.loads(path.read_text())
    seeds = split_seeds("val", 3)
    for img, seed in zip(coco.images, seeds, strict=True):
        scene = render_scene(seed, img.width, img.height)
        assert np.array_equal(coco.read_rgb(img), scene.image)  # PNG is lossless
        anns = [a for a in doc["annotations"] if a["image_id"] == img.id]
        got = np.array([a["bbox"] for a in anns]).reshape(-1, 4)
        want = scene.boxes.copy()
        want[:, 2:] -= want[:, :2]
        assert np.allclose(got, want)
        assert [a["category_id"] - 1 for a in anns] == scene.class_ids.tolist()


def test_camera_objects_move_between_frames() -> None:
    frames = list(render_camera(5, 4, 640, 360))
    again = list(render_camera(5, 4, 640, 360))
    assert len(frames) == 4
    assert np.array_equal(frames[3].image, again[3].image)
    assert len(frames[0].boxes) > 0
    assert not np.array_equal(frames[0].image, frames[1].image)
    grey0 = cv2.cvtColor(frames[0].image, cv2.COLOR_RGB2GRAY).astype(int)
    grey3 = cv2.cvtColor(frames[3].image, cv2.COLOR_RGB2GRAY).astype(int)
    assert np.abs(grey0 - grey3).max() > 60  # objects moved, not only sensor noise
