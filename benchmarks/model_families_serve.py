"""One Detect call to a real detserve server on loopback per package: proof that a package is
served, with what its reply holds. Used by model_families.py for the torchvision packages."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import cv2
import grpc

from detserve.models.scenes import render_scene, split_seeds
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import start_server
from detserve.server.batcher import BatchingConfig
from detserve.server.config import ModelConfig, ServerConfig


async def _detect_once(package: Path) -> dict[str, Any]:
    model = ModelConfig(package=package, engine_options={"intra_op_threads": 2},
                        batching=BatchingConfig(max_batch_size=1, max_queue_delay_s=0.0))
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=None, models=(model,))
    server = await start_server(config)
    try:
        image = render_scene(split_seeds("val", 1)[0], 640, 480).image
        ok, png = cv2.imencode(".png", image[:, :, ::-1])
        if not ok:
            raise RuntimeError("OpenCV could not encode the val scene as PNG")
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]
            listed = await stub.ListModels(pb.ListModelsRequest())
            reply = await stub.Detect(pb.DetectRequest(image=pb.Image(encoded=png.tobytes())))
        info = listed.models[0]
        return {"served_as": info.name, "output_format": info.output_format, "nms": info.nms,
                "detections": len(reply.detections),
                "first": [reply.detections[0].label, round(reply.detections[0].score, 4)]
                if reply.detections else None}  # fmt: skip
    finally:
        await server.stop(grace_s=1.0)


def detect_once(package: Path) -> dict[str, Any]:
    return asyncio.run(_detect_once(package))
