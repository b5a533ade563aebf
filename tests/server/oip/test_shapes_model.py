"""The embedded shapes detector on real JPEG scenes: what tritonclient gets over gRPC and HTTP
equals what detserve.v1 Detect answers for the same files, boxes in the caller's pixels."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

import detserve.models
from detserve.models.scenes import render_scene, split_seeds
from detserve.protos import detection_pb2 as pb
from detserve.server.config import ModelConfig, resolve_package

from ..conftest import server_config
from .conftest import grpcclient, httpclient, image_array, oip_rows, v1_rows

PACKAGE = Path(detserve.models.__file__).parent / "packages" / "shapes_320"
pytestmark = pytest.mark.skipif(not (PACKAGE / "manifest.yaml").is_file(),
                                reason="embedded shapes package not committed")
OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


def jpeg(seed: int) -> bytes:
    scene = render_scene(seed, 480, 360)
    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(scene.image[:, :, ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return bytes(data.tobytes())


async def test_scenes_equal_detect_v1_over_grpc_and_http(start: Callable[..., Any]) -> None:
    model = ModelConfig(package=resolve_package("builtin:shapes_320", Path.cwd(), "package"),
                        engine="onnxruntime", engine_options={"intra_op_threads": 1})
    run = await start(server_config(model, rest_port=0, log_requests=False))
    images = [jpeg(seed) for seed in split_seeds("test", 2)]
    expected = [v1_rows(await run.stub.Detect(pb.DetectRequest(image=pb.Image(encoded=i))))
                for i in images]
    assert all(expected)  # the scenes have objects the model finds
    g = grpcclient.InferenceServerClient(f"127.0.0.1:{run.server.port}")
    h = httpclient.InferenceServerClient(f"127.0.0.1:{run.server.oip.rest_port}")
    try:
        grpc_in = grpcclient.InferInput("IMAGE", [2, 1], "BYTES")
        grpc_in.set_data_from_numpy(image_array(*images))
        via_grpc = await g.infer("shapes", [grpc_in])
        http_in = httpclient.InferInput("IMAGE", [2, 1], "BYTES")
        http_in.set_data_from_numpy(image_array(*images))
        via_http = await h.infer("shapes", [http_in])
    finally:
        await g.close()
        await h.close()
    for result in (via_grpc, via_http):
        arrays = [result.as_numpy(n) for n in OUTPUTS]
        assert [oip_rows(*arrays, i) for i in range(2)] == expected
        assert arrays[1][..., 2].max() > 320  # x2 in the 480-wide caller's pixels, not 320
