"""Images in, detections out, in one call: what the server does per batch, without a server.

Used by evaluation and benchmarks; also the shortest readable path through the engine stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from detserve.engines.base import DecodeParams, Engine, PixelEngine
from detserve.engines.decode import decode_batch
from detserve.engines.detections import Detections
from detserve.engines.preprocess import pixels_to_tensor, prepare_pixels


def _params_per_image(
    engine: Engine, n: int, params: DecodeParams | Sequence[DecodeParams] | None
) -> list[DecodeParams]:
    if params is None:
        return [DecodeParams.from_manifest(engine.manifest)] * n
    if isinstance(params, DecodeParams):
        return [params] * n
    if len(params) != n:
        raise ValueError(f"got {len(params)} DecodeParams for {n} images")
    return list(params)


def infer_pixels(engine: Engine, batch: npt.NDArray[np.uint8]) -> Sequence[npt.NDArray[np.generic]]:
    """Run `batch` ([B, H, W, 3] uint8 canvases in the manifest's colour order): on the engine's
    own uint8 input where it has one (normalised in its graph), else normalised here."""
    if isinstance(engine, PixelEngine) and engine.takes_pixels:
        return engine.infer_pixels(batch)
    return engine.infer(pixels_to_tensor(batch, engine.manifest))


def detect_images(
    engine: Engine,
    images_rgb: Sequence[npt.NDArray[np.uint8]],
    params: DecodeParams | Sequence[DecodeParams] | None = None,
    nms_method: str = "numpy",
) -> list[Detections]:
    """Detections for each HxWx3 uint8 RGB image, in its own pixels.

    Images are sent in chunks of the model's max_batch_size; `params` is one for all images,
    one per image, or None for the manifest's defaults.
    """
    per_image = _params_per_image(engine, len(images_rgb), params)
    manifest = engine.manifest
    results: list[Detections] = []
    step = manifest.max_batch_size
    for start in range(0, len(images_rgb), step):
        prepared = [prepare_pixels(img, manifest) for img in images_rgb[start : start + step]]
        outputs = infer_pixels(engine, np.stack([p.pixels for p in prepared]))
        results += decode_batch(
            outputs,
            manifest,
            [p.letterbox for p in prepared],
            per_image[start : start + step],
            nms_method,
        )
    return results
