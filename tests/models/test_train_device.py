"""What makes the training recipe portable to a GPU: parallel rendering and batch prefetching
must not change the data a run sees."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from detserve.models.train import _prefetch
from detserve.models.train_data import AugmentConfig, make_batch, render_pool


def test_parallel_rendering_gives_the_same_pool() -> None:
    sizes = ((320, 320), (640, 480))
    serial = render_pool("train", 6, sizes, 416, None, progress=False, workers=1)
    parallel = render_pool("train", 6, sizes, 416, None, progress=False, workers=2)
    assert len(serial) == len(parallel) == 6
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a.image, b.image)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        np.testing.assert_array_equal(a.classes, b.classes)


def test_prefetched_batches_equal_inline_batches() -> None:
    pool = render_pool("train", 8, ((320, 320),), 320, None, progress=False)
    aug = AugmentConfig(size=320)

    def batches(seed: int) -> Iterator[object]:
        rng = np.random.default_rng(seed)
        return (make_batch(pool[i:i + 2], aug, rng) for i in range(0, 8, 2))

    inline = list(_prefetch(batches(7), ahead=0))  # type: ignore[arg-type]
    ahead = list(_prefetch(batches(7), ahead=3))  # type: ignore[arg-type]
    assert len(inline) == len(ahead) == 4
    for a, b in zip(inline, ahead, strict=True):
        assert bool((a.images == b.images).all())  # type: ignore[attr-defined]


def test_prefetch_surfaces_producer_errors_and_stops_early() -> None:
    def failing() -> Iterator[int]:
        yield 1
        raise RuntimeError("augmentation broke")

    got = []
    with pytest.raises(RuntimeError, match="augmentation broke"):
        for item in _prefetch(failing(), ahead=2):  # type: ignore[arg-type]
            got.append(item)
    assert got == [1]
    # Leaving early must not hang on a producer blocked on a full queue.
    first = next(iter(_prefetch(iter(range(100)), ahead=2)))  # type: ignore[arg-type]
    assert first == 0
