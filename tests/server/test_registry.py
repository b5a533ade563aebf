"""run_on_engine: decode with the engine's own manifest; a bad item fails alone, an engine
failure fails the batch."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest

from detserve.engines.base import DecodeParams, Letterbox
from detserve.engines.manifest import Manifest
from detserve.server.registry import BatchItem, EnginePool, ItemResult, run_on_engine

MANIFEST = Manifest(name="e2e", version="3", classes=("a", "b", "c"), input_width=32,
                    input_height=32, output_format="end2end", nms="in-graph")


@dataclass
class ScriptedEngine:
    """Returns fixed end2end outputs, as an in-graph-NMS engine would; records batch sizes."""

    classes: list[int]
    fail: bool = False

    @property
    def manifest(self) -> Manifest:
        return MANIFEST

    @property
    def kind(self) -> str:
        return "scripted"

    def infer(self, batch: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.generic]]:
        if self.fail:
            raise RuntimeError("device lost")
        b = batch.shape[0]
        boxes = np.tile(np.array([[[2.0, 4.0, 12.0, 16.0]]], np.float32), (b, 1, 1))
        return [np.ones((b, 1), np.int32), boxes, np.full((b, 1), 0.9, np.float32),
                np.array(self.classes, np.int32).reshape(b, 1)]

    def close(self) -> None:
        return None


def _items(n: int) -> list[BatchItem]:
    # The caller's image was 64x64, shrunk by half into the 32x32 input.
    box = Letterbox(0.5, 0.5, 0.0, 0.0, 64, 64)
    return [BatchItem(np.zeros((32, 32, 3), np.uint8), box, DecodeParams(0.5, 0.5, 10))
            for _ in range(n)]


def test_bad_item_fails_alone() -> None:
    results = run_on_engine(ScriptedEngine(classes=[1, 7, 2]), _items(3))
    good = [r for r in results if isinstance(r, ItemResult)]
    assert [r.detections.class_ids.tolist() for r in good] == [[1], [2]]
    assert good[0].detections.boxes.tolist() == [[4.0, 8.0, 24.0, 32.0]]
    assert isinstance(results[1], ValueError)
    assert "class id 7" in str(results[1])
    assert good[0].inference_s == good[1].inference_s >= 0


def test_engine_failure_raises_for_the_batch() -> None:
    engine = ScriptedEngine(classes=[0], fail=True)
    pool = EnginePool([engine])
    with pytest.raises(RuntimeError, match="device lost"):
        pool.run_batch(_items(1))
    # The engine went back to the pool: the next batch gets it again.
    engine.fail = False
    assert isinstance(pool.run_batch(_items(1))[0], ItemResult)


def test_pool_needs_an_engine() -> None:
    with pytest.raises(ValueError, match="at least one engine, got 0"):
        EnginePool([])
