"""Images in, detections out, in one call: what the server does per batch, without a server.

Used by evaluation and benchmarks; also the shortest readable path through the engine stack.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from detserve.engines.base import DecodeParams, Engine
from detserve.engines.decode import decode_batch
from detserve.engines.detections import Detections
from detserve.engines.preprocess import prepare


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
        prepared = [prepare(img, manifest) for img in images_rgb[start : start + step]]
        batch = np.stack([p.tensor for p in prepared])
        outputs = engine.infer(batch)
        results += decode_batch(
            outputs,
            manifest,
            [p.letterbox for p in prepared],
            per_image[start : start + step],
            nms_method,
        )
    return results
