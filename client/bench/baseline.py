"""Raw-engine baseline: the same model, the same images, no server, at fixed batch sizes.

This is the limit the server is measured against. Two rates per batch size:
- `pipeline`: decode the encoded image, letterbox, infer, decode outputs + NMS: the work the
  server does per image, minus gRPC and batching;
- `infer`: `engine.infer` alone on prepared tensors.
The only place the client package imports engines (lazily, so the client needs no engine deps).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from detserve.protos import detection_pb2 as pb

DEFAULT_MAX_PIXELS = 40_000_000


@dataclass(frozen=True)
class RawResult:
    batch_size: int
    pipeline_images_per_s: float
    infer_images_per_s: float
    pipeline_batches: int
    infer_batches: int
    pipeline_ms_per_batch: float
    infer_ms_per_batch: float
    # Process CPU (all threads, the engine library's included) per image of the infer-only
    # loop: what the engine alone costs the machine; NaN where it was not measured.
    infer_cpu_us_per_image: float = float("nan")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _timed_loop(fn: Any, duration_s: float, min_iters: int = 3) -> tuple[int, float]:
    """Call fn() until `duration_s` has passed (at least `min_iters` times): (calls, seconds)."""
    n = 0
    start = time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= duration_s and n >= min_iters:
            return n, elapsed


def engine_choice(kind: str | None, options: Mapping[str, Any] | None,
                  package_dir: str | Path | None = None) -> tuple[str, Mapping[str, Any]]:
    """The engine to build: `kind` with `options` (default none); without a kind, the served
    default's engine and options for the served default's package (or when no package is
    named), else the package's own engine (OpenVINO for an IR model.xml) with `options`."""
    if kind is not None:
        return kind, options or {}
    from detserve.client.bench.served import load_served_default

    served = load_served_default()
    if package_dir is None or _same_package(package_dir, served.model["package"]):
        return served.engine, served.engine_options if options is None else options
    from detserve.engines.manifest import default_engine_kind, load_package

    return default_engine_kind(load_package(package_dir).manifest), options or {}


def _same_package(package_dir: str | Path, served_package: Any) -> bool:
    from detserve.client.bench.sweep import resolve_package

    served = resolve_package(str(served_package), Path.cwd())
    return Path(package_dir).resolve() == Path(served).resolve()


def raw_engine_baseline(
    package_dir: str | Path,
    images: Sequence[pb.Image],
    batch_sizes: Sequence[int],
    duration_s: float = 5.0,
    engine_kind: str | None = None,
    engine_options: Mapping[str, Any] | None = None,
    warmup_batches: int = 2,
) -> list[RawResult]:
    """Images per second of the bare engine at each batch size, on the benchmark's inputs.

    `engine_kind` None: for the served default's package, the served default's engine and its
    engine options unless `engine_options` are given; for any other package, the package's own
    engine (its manifest names the model file it loads, e.g. the OpenVINO IR model.xml of
    builtin:shapes_320_int8)."""
    import numpy as np

    from detserve.engines.base import DecodeParams
    from detserve.engines.decode import decode_batch
    from detserve.engines.factory import create_engine
    from detserve.engines.manifest import load_package
    from detserve.engines.pipeline import infer_pixels
    from detserve.engines.preprocess import (
        DecodedImage,
        decode_encoded_native,
        decode_raw_native,
        prepare_decoded,
    )

    if not images:
        raise ValueError("raw engine baseline needs at least one input image, got none")
    bad = [b for b in batch_sizes if b < 1]
    if bad:
        raise ValueError(f"batch sizes must be >= 1, got {bad}")
    engine_kind, engine_options = engine_choice(engine_kind, engine_options, package_dir)
    package = load_package(package_dir)
    engine = create_engine(package, engine_kind, engine_options)
    manifest = engine.manifest
    params = DecodeParams.from_manifest(manifest)

    def decode(im: pb.Image) -> DecodedImage:
        # The server's data path: native channel order, a JPEG >= 2x the input decoded
        # straight to the letterboxed size (jpeg_reduced_decode, on by default).
        if im.HasField("encoded"):
            return decode_encoded_native(im.encoded, DEFAULT_MAX_PIXELS, manifest)
        fmt = pb.PixelFormat.Name(im.raw.pixel_format).removeprefix("PIXEL_FORMAT_")
        return decode_raw_native(im.raw.data, im.raw.height, im.raw.width, fmt,
                                 DEFAULT_MAX_PIXELS)

    results = []
    try:
        for b in batch_sizes:
            chosen = [images[i % len(images)] for i in range(b)]

            def pipeline(chosen: list[pb.Image] = chosen) -> None:
                prepared = [prepare_decoded(decode(im), manifest) for im in chosen]
                outputs = infer_pixels(engine, np.stack([p.pixels for p in prepared]))
                decode_batch(outputs, manifest, [p.letterbox for p in prepared],
                             [params] * len(prepared))

            # What the server hands the engine: uint8 canvases (normalised in the graph where
            # the engine can, else on the host as part of this "infer only" time).
            pixels = np.stack([prepare_decoded(decode(im), manifest).pixels for im in chosen])
            for _ in range(warmup_batches):
                pipeline()
            n_pipe, t_pipe = _timed_loop(pipeline, duration_s)
            cpu_start = time.process_time()
            n_inf, t_inf = _timed_loop(lambda p=pixels: infer_pixels(engine, p), duration_s)
            infer_cpu_s = time.process_time() - cpu_start
            results.append(RawResult(
                batch_size=b,
                pipeline_images_per_s=n_pipe * b / t_pipe,
                infer_images_per_s=n_inf * b / t_inf,
                pipeline_batches=n_pipe,
                infer_batches=n_inf,
                pipeline_ms_per_batch=t_pipe / n_pipe * 1000.0,
                infer_ms_per_batch=t_inf / n_inf * 1000.0,
                infer_cpu_us_per_image=infer_cpu_s / (n_inf * b) * 1e6,
            ))
    finally:
        engine.close()
    return results
