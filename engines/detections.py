"""Detections of one image as a dataclass of numpy arrays, shapes checked on creation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Detections:
    """Boxes `[K, 4]` as x1, y1, x2, y2; `scores [K]`; `class_ids [K]`."""

    boxes: FloatArray
    scores: FloatArray
    class_ids: IntArray

    def __post_init__(self) -> None:
        k = self.scores.shape[0] if self.scores.ndim == 1 else -1
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape [K, 4], got {self.boxes.shape}")
        if k != self.boxes.shape[0]:
            raise ValueError(
                f"scores must have shape [{self.boxes.shape[0]}], got {self.scores.shape}"
            )
        if self.class_ids.shape != (k,):
            raise ValueError(f"class_ids must have shape [{k}], got {self.class_ids.shape}")

    @classmethod
    def empty(cls) -> Detections:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            class_ids=np.zeros((0,), np.int64),
        )

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def select(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> Detections:
        """The subset picked by a boolean mask or an index array (order kept)."""
        return Detections(self.boxes[keep], self.scores[keep], self.class_ids[keep])
