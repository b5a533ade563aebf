"""The per-image data path of the served default, stage by stage, in one process (no server):
what each choice costs per 640x480 JPEG, and the engine with float or uint8 input at batch 8.

    .venv/bin/python benchmarks/data_path.py --out benchmarks/results/data_path

Front-end variants (one thread, as a decode thread runs them), per image:
- "opencv rgb float": OpenCV decode to RGB, letterbox, float32 CHW per image (the path before
  the pixel path);
- "opencv reduced (IMREAD_REDUCED_COLOR_2)": OpenCV's own half-size decode, then letterbox to
  the uint8 canvas;
- "full decode pixels": strict libjpeg-turbo decode in BGR at full size, letterbox, reorder at
  model size, uint8 canvas (the engine normalises): jpeg_reduced_decode false;
- "served (DCT-scaled decode)": the same, decoded in the DCT to the letterboxed size, what the
  served default does for a JPEG at least twice the model input.
Engine: the served default's OpenVINO engine at batch 8 on float32 input (host-normalised, the
normalisation timed with it) and on uint8 input (normalised in the graph).

Variants take turns round by round, so a burst of load elsewhere hits each alike; the median of
the rounds is reported, with the minimum. Writes results.json and report.md into --out.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import cv2
import numpy as np

from detserve.client.bench.served import ServedDefault, load_served_default
from detserve.client.images import encode_rgb, synthetic_images
from detserve.engines.base import DecodeParams
from detserve.engines.decode import decode_batch
from detserve.engines.factory import create_engine
from detserve.engines.manifest import Manifest, load_package
from detserve.engines.pipeline import infer_pixels
from detserve.engines.preprocess import (
    decode_encoded_native,
    pixels_to_tensor,
    prepare,
    prepare_decoded,
    prepare_pixels,
)
from detserve.protos import detection_pb2 as pb
from detserve.server.catalog import ModelView
from detserve.server.config import resolve_package
from detserve.server.detect import build_response
from detserve.server.engine_pool import ItemResult


def package_path(served: ServedDefault) -> Path:
    return resolve_package(served.model["package"], Path.cwd(), "served default")


def front_ends(manifest: Manifest) -> dict[str, Callable[[bytes], object]]:
    def opencv_rgb_float(data: bytes) -> object:
        bgr = np.asarray(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED))
        return prepare(np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), np.uint8), manifest).tensor

    def opencv_reduced(data: bytes) -> object:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
        return prepare_pixels(np.asarray(image, np.uint8), manifest, "BGR").pixels

    def full_pixels(data: bytes) -> object:
        return prepare_decoded(decode_encoded_native(data, 1 << 30), manifest).pixels

    def served(data: bytes) -> object:
        return prepare_decoded(decode_encoded_native(data, 1 << 30, manifest), manifest).pixels

    return {"opencv rgb float": opencv_rgb_float,
            "opencv reduced (IMREAD_REDUCED_COLOR_2)": opencv_reduced,
            "full decode pixels": full_pixels, "served (DCT-scaled decode)": served}


def run_on_next(fn: Callable[[bytes], object], next_data: Callable[[], bytes]) -> object:
    return fn(next_data())


def per_call_ms(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e3


def rounds_of(variants: dict[str, Callable[[], object]], rounds: int,
              calls: int) -> dict[str, dict[str, float]]:
    times: dict[str, list[float]] = {name: [] for name in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in variants.items():
            times[name].append(per_call_ms(fn, calls))
    return {name: {"median_ms": statistics.median(t), "min_ms": min(t)}
            for name, t in times.items()}


def engines(served: ServedDefault, batch: int) -> dict[str, Callable[[], object]]:
    package = load_package(package_path(served))
    options = served.engine_options
    host = create_engine(package, served.engine, {**options, "pixel_input": False})
    graph = create_engine(package, served.engine, {**options, "pixel_input": True})
    m = package.manifest
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (batch, m.input_height, m.input_width, 3), dtype=np.uint8)
    return {
        "float input (host normalise + infer)":
            lambda: host.infer(pixels_to_tensor(pixels, m)),
        "uint8 input (normalise in graph)": lambda: infer_pixels(graph, pixels),
    }


def postprocess(served: ServedDefault, batch: int) -> dict[str, Callable[[], object]]:
    """Host decode + NMS of one real engine output, at an eval-like score threshold (0.001,
    many candidates), with the manifest's max_detections cap against none (the cap now stops
    the greedy NMS loop); and the reply for the detections at the served threshold."""
    package = load_package(package_path(served))
    m = package.manifest
    engine = create_engine(package, served.engine, {**served.engine_options})
    images = synthetic_images(batch, 640, 480)
    prepared = [prepare_pixels(im, m) for im in images]
    outputs = infer_pixels(engine, np.stack([p.pixels for p in prepared]))
    boxes = [p.letterbox for p in prepared]
    post = m.postprocess
    capped = [DecodeParams(0.001, post.iou_threshold, post.max_detections)] * batch
    uncapped = [DecodeParams(0.001, post.iou_threshold, 1 << 20)] * batch
    served_params = [DecodeParams.from_manifest(m)] * batch
    dets = decode_batch(outputs, m, boxes, served_params)[0]
    view = cast(ModelView, SimpleNamespace(key="shapes@320", manifest=m))
    result = ItemResult(dets, 0.0, 0.0, batch)
    request = pb.DetectRequest(request_id="r")
    return {
        f"host NMS, score 0.001, max_detections {post.max_detections} (per batch of {batch})":
            lambda: decode_batch(outputs, m, boxes, capped),
        f"host NMS, score 0.001, uncapped (per batch of {batch})":
            lambda: decode_batch(outputs, m, boxes, uncapped),
        f"reply build + serialize, {len(dets.scores)} detections (per image)":
            lambda: build_response(request, view, result).SerializeToString(),
    }


def report(doc: dict[str, Any]) -> str:
    lines = [f"# Data path of the served default ({doc['when']})", "",
             f"Command: `{doc['command']}`", "",
             f"Inputs: {doc['inputs']}", "",
             "| stage | variant | median ms | min ms |", "|---|---|---|---|"]
    for stage in ("front_end_per_image", "engine_per_batch", "postprocess"):
        for name, t in doc[stage].items():
            lines.append(f"| {stage} | {name} | {t['median_ms']:.3f} | {t['min_ms']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/data_path"))
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--batch-size", type=int, default=8)
    args = p.parse_args()
    cv2.setNumThreads(1)  # a decode thread's view: the server runs several side by side
    served = load_served_default()
    manifest = load_package(package_path(served)).manifest
    datas = [encode_rgb(im) for im in synthetic_images(16, 640, 480)]
    counter = iter(range(1 << 62))

    def next_data() -> bytes:
        return datas[next(counter) % len(datas)]

    fronts: dict[str, Callable[[], object]] = {
        name: functools.partial(run_on_next, fn, next_data)
        for name, fn in front_ends(manifest).items()}
    doc: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "benchmarks/data_path.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()),
        "inputs": {"count": len(datas), "width": 640, "height": 480, "format": "jpeg",
                   "mean_bytes": sum(map(len, datas)) / len(datas)},
        "model": {"package": served.model["package"], "engine": served.engine,
                  "engine_options": served.engine_options},
        "front_end_per_image": rounds_of(fronts, args.rounds, 50),
        "engine_per_batch": rounds_of(engines(served, args.batch_size), args.rounds, 5),
        "postprocess": rounds_of(postprocess(served, args.batch_size), args.rounds, 20),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    text = report(doc)
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
