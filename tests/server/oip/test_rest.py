"""The Open Inference Protocol over HTTP/JSON, driven by tritonclient.http and by plain JSON
(what `curl` sends), on a real server over loopback; detections equal detserve.v1 Detect's."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest

from detserve.protos import detection_pb2 as pb

from .conftest import (
    SCENE,
    InferenceServerException,
    Oip,
    httpclient,
    image_array,
    oip_rows,
    scene_png,
    v1_rows,
)

OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


async def v1(oip: Oip, image: bytes) -> list[tuple[int, float, tuple[float, ...]]]:
    return v1_rows(await oip.run.stub.Detect(pb.DetectRequest(image=pb.Image(encoded=image))))


async def infer(oip: Oip, images: Sequence[bytes], binary: bool, **kwargs: Any) -> Any:
    """`binary`: Triton's binary extension both ways; else JSON, the images base64 text (the
    JSON convention for BYTES here: encoded images are not UTF-8)."""
    tensor = httpclient.InferInput("IMAGE", [len(images), 1], "BYTES")
    data = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(image_array(*data), binary_data=binary)
    outputs = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in OUTPUTS]
    return await oip.http.infer("blocks", [tensor], outputs=outputs, **kwargs)


async def test_health_metadata_config_and_statistics(oip: Oip) -> None:
    h = oip.http
    assert await h.is_server_live() and await h.is_server_ready()
    assert await h.is_model_ready("blocks") and not await h.is_model_ready("nope")
    assert (await h.get_server_metadata())["name"] == "detserve"
    meta = await h.get_model_metadata("blocks")
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": [-1, 1]}]
    config = await h.get_model_config("blocks")
    assert config["max_batch_size"] == 4
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 1000
    await infer(oip, [scene_png()], binary=True)
    (stats,) = (await h.get_inference_statistics("blocks"))["model_stats"]
    assert stats["inference_count"] == 1 and stats["inference_stats"]["success"]["count"] == 1


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("count", [1, 4])
async def test_infer_equals_detect_v1(oip: Oip, count: int, binary: bool) -> None:
    scenes = [SCENE, SCENE[:1], SCENE[1:], SCENE[::2]][:count]
    images = [scene_png(s) for s in scenes]
    result = await infer(oip, images, binary, request_id="http-1")
    assert result.get_response()["id"] == "http-1"
    arrays = [result.as_numpy(n) for n in OUTPUTS]
    assert arrays[1].shape == (count, 100, 4)
    for i, image in enumerate(images):
        assert oip_rows(*arrays, i) == await v1(oip, image)


async def test_plain_json_with_base64_as_curl_sends_it(oip: Oip) -> None:
    image = scene_png()
    body = {"id": "c1", "parameters": {"class_ids": [0, 2], "max_detections": 5},
            "inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1],
                        "data": [base64.b64encode(image).decode()]}]}
    async with (aiohttp.ClientSession() as session,
                session.post(f"{oip.rest_url}/v2/models/blocks/infer", json=body) as reply):
        assert reply.status == 200
        doc = await reply.json()
    assert doc["id"] == "c1" and doc["model_name"] == "blocks"
    out = {o["name"]: o for o in doc["outputs"]}
    assert out["num_detections"]["data"] == [2]
    assert out["detection_boxes"]["shape"] == [1, 5, 4]
    expected = [r for r in await v1(oip, image) if r[0] in (0, 2)]
    classes = out["detection_classes"]["data"][:2]
    assert sorted(classes) == [0, 2]
    assert sorted(out["detection_scores"]["data"][:2]) == sorted(r[1] for r in expected)


BAD = {
    "not json": (b"{nope", 400, "not JSON"),
    "bad base64": (b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], '
                   b'"data": ["%%%"]}]}', 400, "not valid base64"),
    "no inputs": (b'{"id": "x"}', 400, "'inputs'"),
    "not an image": (b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", "shape": [1], '
                     b'"data": ["bm90IGFuIGltYWdl"]}]}', 400, "IMAGE"),
    "binary size past the end": (b'{"inputs": [{"name": "IMAGE", "datatype": "BYTES", '
                                 b'"shape": [1], "parameters": {"binary_data_size": 99}}]}',
                                 400, "binary_data_size 99"),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_bodies_are_400_with_the_reason(oip: Oip, case: str) -> None:
    body, status, words = BAD[case]
    headers = {"Inference-Header-Content-Length": str(len(body))} if b"binary" in body else {}
    async with (aiohttp.ClientSession() as session,
                session.post(f"{oip.rest_url}/v2/models/blocks/infer", data=body,
                             headers=headers) as reply):
        assert reply.status == status
        assert words in (await reply.json())["error"]


async def test_unknown_model_is_404_and_tritonclient_reads_the_error(oip: Oip) -> None:
    tensor = httpclient.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(image_array(scene_png()))
    with pytest.raises(InferenceServerException) as info:
        await oip.http.infer("nope", [tensor])
    assert info.value.status() == "404" and "unknown model 'nope'" in info.value.message()
    five = httpclient.InferInput("IMAGE", [5, 1], "BYTES")
    five.set_data_from_numpy(image_array(*[scene_png()] * 5))
    with pytest.raises(InferenceServerException) as too_many:
        await oip.http.infer("blocks", [five])
    assert too_many.value.status() == "400" and "max_batch_size" in too_many.value.message()


async def test_unknown_routes_and_oversized_bodies_answer_json_errors(oip: Oip) -> None:
    limit = oip.run.server.oip.config.max_message_bytes  # type: ignore[union-attr]
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{oip.rest_url}/v2/nothing") as missing:
            assert missing.status == 404
            assert (await missing.json())["error"] == "no route GET /v2/nothing"
        url = f"{oip.rest_url}/v2/models/blocks/infer"
        async with session.post(url, data=b"x" * (limit + 1)) as big:
            assert big.status == 413
            assert str(limit) in (await big.json())["error"]
