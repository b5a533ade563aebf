"""A batch on one engine: `EnginePool.run_batch` runs in a batcher worker thread, takes a free
engine, stacks the batch, runs the engine and decodes the outputs with the engine's own manifest
(an engine may change the output format, e.g. GPU NMS engines emit end2end). A decode failure
fails only its item; an engine failure raises, so the batcher fails that batch (INTERNAL) and
lives on. An engine that decodes JPEGs on its device (engines/device_jpeg.py) gets the batch's
encoded JPEGs beside its canvases; a JPEG its decoder refuses fails only its own item.
"""

from __future__ import annotations

import queue
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detserve.engines.base import DecodeParams, Engine, Letterbox
from detserve.engines.batch_plan import executed_batch_size
from detserve.engines.decode import decode_batch
from detserve.engines.detections import Detections
from detserve.engines.device_jpeg import DeviceJpeg, JpegDeviceEngine
from detserve.engines.manifest import Manifest
from detserve.engines.pipeline import infer_pixels


@dataclass(frozen=True)
class BatchItem:
    """One prepared image waiting for the engine."""

    pixels: npt.NDArray[np.uint8]  # [H, W, 3] letterboxed, in the manifest's colour order
    letterbox: Letterbox
    params: DecodeParams
    jpeg: DeviceJpeg | None = None  # set: left encoded for the engine's device; pixels empty


@dataclass(frozen=True)
class ItemResult:
    detections: Detections
    inference_s: float  # engine run of the whole batch
    postprocess_s: float  # output decoding of the whole batch
    executed_batch_size: int  # images the engine computed for the batch: formed size + padding


class EnginePool:
    """Engines shared by the batcher's worker threads: each run borrows a free one."""

    def __init__(self, engines: Sequence[Engine]) -> None:
        if not engines:
            raise ValueError("an engine pool needs at least one engine, got 0")
        self.engines = list(engines)
        # Fixed for the pool's life; asked once per request, and a Protocol isinstance check
        # costs the event loop microseconds it has not got under load.
        self._decodes_jpeg = all(
            isinstance(e, JpegDeviceEngine) and e.decodes_jpeg for e in self.engines)
        self._free: queue.SimpleQueue[Engine] = queue.SimpleQueue()
        for engine in self.engines:
            self._free.put(engine)

    def run_batch(self, items: list[BatchItem]) -> list[ItemResult | Exception]:
        engine = self._free.get()
        try:
            return run_on_engine(engine, items)
        finally:
            self._free.put(engine)

    @property
    def decodes_jpeg(self) -> bool:
        """Whether every engine decodes JPEGs on its device, so the front end may skip it."""
        return self._decodes_jpeg

    def close(self) -> None:
        for engine in self.engines:
            engine.close()


def _decode_each(
    outputs: Sequence[npt.NDArray[Any]], manifest: Manifest, items: Sequence[BatchItem]
) -> list[Detections | Exception]:
    """Decode item by item, so one bad item does not fail its neighbours."""
    results: list[Detections | Exception] = []
    for i, item in enumerate(items):
        try:
            sliced = [out[i : i + 1] for out in outputs]
            results.append(decode_batch(sliced, manifest, [item.letterbox], [item.params])[0])
        except Exception as exc:
            results.append(exc)
    return results


def _infer(engine: Engine, items: Sequence[BatchItem]
           ) -> tuple[Sequence[npt.NDArray[Any]], Mapping[int, Exception]]:
    """Raw outputs (raising here fails the whole batch: INTERNAL), and the items whose JPEG the
    engine's device decoder refused."""
    if any(item.jpeg is not None for item in items):
        if not isinstance(engine, JpegDeviceEngine):
            raise TypeError(f"engine {engine.kind!r} got encoded JPEGs but cannot decode them")
        run = engine.infer_images([item.jpeg or item.pixels for item in items])
        return run.outputs, run.failed
    return infer_pixels(engine, np.stack([item.pixels for item in items])), {}


def run_on_engine(engine: Engine, items: list[BatchItem]) -> list[ItemResult | Exception]:
    start = time.perf_counter()
    outputs, failed = _infer(engine, items)
    inferred = time.perf_counter()
    manifest = engine.manifest
    decoded: list[Detections | Exception]
    try:
        decoded = list(decode_batch(
            outputs, manifest, [i.letterbox for i in items], [i.params for i in items]
        ))
    except Exception:
        decoded = _decode_each(outputs, manifest, items)
    decoded = [failed.get(i, d) for i, d in enumerate(decoded)]
    post_s = time.perf_counter() - inferred
    infer_s = inferred - start
    executed = executed_batch_size(engine, len(items))
    return [
        d if isinstance(d, Exception) else ItemResult(d, infer_s, post_s, executed)
        for d in decoded
    ]


