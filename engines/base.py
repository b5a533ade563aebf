"""The engine seam: what every inference backend provides, and the data passed around it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from detserve.engines.manifest import Manifest


@dataclass(frozen=True)
class Letterbox:
    """How an original image was mapped into the model input.

    input = original * scale + pad, per axis. `stretch` resizing has scale_x != scale_y and no pad.
    """

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    orig_width: int
    orig_height: int


@dataclass(frozen=True)
class PreparedImage:
    """One preprocessed image: `tensor` is float32 `[3, H, W]` at the model's input size."""

    tensor: npt.NDArray[np.float32]
    letterbox: Letterbox


@dataclass(frozen=True)
class DecodeParams:
    """Per-request postprocessing settings (the manifest supplies the defaults)."""

    score_threshold: float
    iou_threshold: float
    max_detections: int
    class_ids: frozenset[int] | None = None  # None keeps every class

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> DecodeParams:
        post = manifest.postprocess
        return cls(post.score_threshold, post.iou_threshold, post.max_detections)


@runtime_checkable
class Engine(Protocol):
    """Runs a model package's network on a batch. Implementations must be safe to call from
    one worker thread per instance; the server creates one engine object per instance."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def kind(self) -> str:
        """Backend name reported to callers, e.g. "onnxruntime"."""
        ...

    def infer(self, batch: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.generic]]:
        """Run `batch` (`[B, 3, H, W]` float32) and return the raw outputs in graph order."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class PixelEngine(Protocol):
    """An engine that can take the letterboxed uint8 canvases as they are and normalise them in
    its own graph (OpenVINO's PrePostProcessor): no float copy of each image on the host."""

    @property
    def takes_pixels(self) -> bool:
        """Whether infer_pixels runs on a uint8 input (else it would only convert)."""
        ...

    def infer_pixels(self, batch: npt.NDArray[np.uint8]) -> Sequence[npt.NDArray[np.generic]]:
        """Run `batch` (`[B, H, W, 3]` uint8, the manifest's colour order)."""
        ...
