"""The packaged default configuration serves the embedded shapes model (both variants) and finds
the objects of synthetic test scenes. Skipped until the trained packages are committed."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest

import detserve.models
from detserve.models.scenes import CLASSES, render_scene, split_seeds
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import start_server
from detserve.server.config import load_config

from .conftest import png

PACKAGES = Path(detserve.models.__file__).parent / "packages"
pytestmark = pytest.mark.skipif(
    not all((PACKAGES / d / "manifest.yaml").is_file()
            for d in ("shapes_320", "shapes_640", "shapes_320_int8", "shapes_640_int8")),
    reason="embedded shapes packages not committed yet",
)


def iou(a: list[float], b: list[float]) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


@pytest.mark.parametrize("model", ["", "shapes@640", "shapes@320-fp32"])
async def test_default_config_finds_scene_objects(model: str) -> None:
    config = replace(load_config(None, env={}), host="127.0.0.1", port=0, metrics_port=None,
                     log_requests=False)
    server = await start_server(config)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            listing = await stub.ListModels(pb.ListModelsRequest())
            assert listing.default_model == "shapes@320"
            # The default serves OpenVINO INT8 at both sizes; the FP32 packages stay servable.
            assert {m.name: (m.engine, m.precision) for m in listing.models} == {
                "shapes@320": ("openvino", "int8"), "shapes@640": ("openvino", "int8"),
                "shapes@320-fp32": ("onnxruntime", "fp32"),
                "shapes@640-fp32": ("onnxruntime", "fp32"),
            }
            found = total = false_positives = 0
            # 10 scenes (60 objects): on 3 (23 objects) one miss moved recall across the bound.
            # Measured on these 10: recall 0.87-0.88 for every served variant, at most 7 false.
            for seed in split_seeds("test", 10):
                scene = render_scene(seed, 480, 360)
                reply = await stub.Detect(pb.DetectRequest(
                    model=model, image=pb.Image(encoded=png(scene.image))))
                assert reply.model == (model or "shapes@320")
                dets = [(d.label, [d.box.x1, d.box.y1, d.box.x2, d.box.y2])
                        for d in reply.detections]
                truth = [(CLASSES[int(c)], [float(v) for v in box])
                         for box, c in zip(scene.boxes, scene.class_ids, strict=True)]
                total += len(truth)
                matched = {i for i, (label, box) in enumerate(truth)
                           if any(lab == label and iou(b, box) >= 0.5 for lab, b in dets)}
                found += len(matched)
                false_positives += sum(
                    not any(lab == label and iou(b, box) >= 0.5 for label, box in truth)
                    for lab, b in dets)
            assert total > 0
            assert found / total >= 0.8, (found, total)
            assert false_positives <= max(1, int(np.ceil(0.2 * total))), (false_positives, total)
    finally:
        await server.stop(grace_s=1.0)
