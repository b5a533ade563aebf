"""The Open Inference Protocol over gRPC, driven by tritonclient as a Triton user would, on a real
server over loopback; the detections must equal detserve.v1 Detect's on the same images."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import pytest

from detserve.protos import detection_pb2 as pb
from detserve.protos import inference_pb2 as ip
from detserve.protos import inference_pb2_grpc as ip_grpc
from detserve.server.oip.tensors import join_bytes

from ..conftest import request_for
from .conftest import (
    SCENE,
    InferenceServerException,
    Oip,
    grpcclient,
    image_array,
    oip_rows,
    scene_png,
    v1_rows,
)

OUTPUTS = ("num_detections", "detection_boxes", "detection_scores", "detection_classes")


async def v1_detect(oip: Oip, image: bytes) -> list[tuple[int, float, tuple[float, ...]]]:
    reply = await oip.run.stub.Detect(pb.DetectRequest(image=pb.Image(encoded=image)))
    return v1_rows(reply)


def rows(result: Any, i: int) -> list[tuple[int, float, tuple[float, ...]]]:
    return oip_rows(*(result.as_numpy(n) for n in OUTPUTS), i)


async def infer(oip: Oip, images: Sequence[bytes], **kwargs: Any) -> Any:
    tensor = grpcclient.InferInput("IMAGE", [len(images), 1], "BYTES")
    tensor.set_data_from_numpy(image_array(*images))
    return await oip.grpc.infer("blocks", [tensor], **kwargs)


async def test_health_metadata_and_config(oip: Oip) -> None:
    c = oip.grpc
    assert await c.is_server_live() and await c.is_server_ready()
    assert await c.is_model_ready("blocks") and await c.is_model_ready("blocks@64")
    assert not await c.is_model_ready("nope") and not await c.is_model_ready("blocks", "7")
    server = await c.get_server_metadata(as_json=True)
    assert server["name"] == "detserve" and "statistics" in server["extensions"]
    meta = await c.get_model_metadata("blocks", as_json=True)
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "IMAGE", "datatype": "BYTES", "shape": ["-1", "1"]}]
    assert [(o["name"], o["datatype"]) for o in meta["outputs"]][:4] == [
        ("num_detections", "INT32"), ("detection_boxes", "FP32"), ("detection_scores", "FP32"),
        ("detection_classes", "INT32")]
    config = (await c.get_model_config("blocks", as_json=True))["config"]
    assert config["max_batch_size"] == 4
    batching = config["dynamic_batching"]
    assert batching["preferred_batch_size"] == [2, 4]
    assert batching["max_queue_delay_microseconds"] == "1000"
    assert batching["default_queue_policy"]["max_queue_size"] == 256
    assert batching["default_queue_policy"]["default_timeout_microseconds"] == "500000"
    assert config["input"] == [{"name": "IMAGE", "data_type": "TYPE_STRING", "dims": ["1"]}]
    assert config["instance_group"][0]["count"] == 1
    assert json.loads(config["parameters"]["classes"]["string_value"]) == [
        "red", "green", "blue"]


async def test_one_image_equals_detect_v1_and_echoes_the_id(oip: Oip) -> None:
    image = scene_png()
    result = await infer(oip, [image], request_id="req-7")
    response = result.get_response()
    assert response.id == "req-7" and response.model_version == "1"
    assert result.as_numpy("num_detections").tolist() == [[3]]
    assert result.as_numpy("detection_boxes").shape == (1, 100, 4)  # EfficientNMS padding
    assert not result.as_numpy("detection_boxes")[0, 3:].any()
    expected = await v1_detect(oip, image)
    assert sorted(r[0] for r in expected) == [0, 1, 2]
    assert rows(result, 0) == expected


@pytest.mark.parametrize("count", [2, 4])
async def test_a_batch_in_one_request_runs_every_image_through_the_engine(
        oip: Oip, count: int) -> None:
    scenes = [SCENE[:1], SCENE[1:2], SCENE, SCENE[::2]][:count]
    images = [scene_png(s) for s in scenes]
    before = oip.run.engines.first.images_run
    result = await infer(oip, images)
    assert oip.run.engines.first.images_run - before == count  # B items of the one batcher
    assert result.as_numpy("num_detections").ravel().tolist() == [len(s) for s in scenes]
    for i, image in enumerate(images):
        assert rows(result, i) == await v1_detect(oip, image)


async def test_uint8_file_bytes_and_typed_contents(oip: Oip) -> None:
    image = scene_png()
    expected = await v1_detect(oip, image)
    tensor = grpcclient.InferInput("IMAGE", [1, len(image)], "UINT8")
    tensor.set_data_from_numpy(np.frombuffer(image, np.uint8)[None])
    assert rows(await oip.grpc.infer("blocks", [tensor]), 0) == expected
    stub = ip_grpc.GRPCInferenceServiceStub(oip.run.channel)  # type: ignore[no-untyped-call]
    for tensor_msg in (
        ip.ModelInferRequest.InferInputTensor(
            name="IMAGE", datatype="BYTES", shape=[1],
            contents=ip.InferTensorContents(bytes_contents=[image])),
        ip.ModelInferRequest.InferInputTensor(
            name="IMAGE", datatype="UINT8", shape=[1, len(image)],
            contents=ip.InferTensorContents(uint_contents=list(image))),
    ):
        out = [ip.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in OUTPUTS]
        for o in out:
            o.parameters["binary_data"].bool_param = False  # typed contents back
        reply = await stub.ModelInfer(ip.ModelInferRequest(
            model_name="blocks", inputs=[tensor_msg], outputs=out))
        assert not reply.raw_output_contents
        num, boxes, scores, classes = reply.outputs
        n = num.contents.int_contents[0]
        got = [(classes.contents.int_contents[j], scores.contents.fp32_contents[j],
                tuple(boxes.contents.fp32_contents[4 * j:4 * j + 4])) for j in range(n)]
        assert got == expected


async def test_parameters_and_requested_outputs(oip: Oip) -> None:
    image = scene_png()
    only_green = await infer(oip, [image], parameters={"class_ids": "1", "max_detections": 2,
                                                       "score_threshold": 0.9})
    assert only_green.as_numpy("num_detections").tolist() == [[1]]
    assert only_green.as_numpy("detection_boxes").shape == (1, 2, 4)  # K = max_detections
    assert only_green.as_numpy("detection_classes").tolist() == [[1, 0]]
    assert only_green.as_numpy("detection_boxes")[0, 0].tolist() == [32.0, 32.0, 64.0, 64.0]
    tensor = grpcclient.InferInput("IMAGE", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([image], dtype=np.object_))
    asked = [grpcclient.InferRequestedOutput(n) for n in ("detection_labels", "num_detections")]
    result = await oip.grpc.infer("blocks", [tensor], outputs=asked, timeout=5_000_000)
    assert [o.name for o in result.get_response().outputs] == [
        "detection_labels", "num_detections"]
    labels = result.as_numpy("detection_labels")[0]
    assert sorted(bytes(v) for v in labels[:3]) == [b"blue", b"green", b"red"]
    assert not any(bytes(v) for v in labels[3:])  # padding: empty labels
    assert result.as_numpy("detection_boxes") is None


def _raw_request(**fields: Any) -> ip.ModelInferRequest:
    image = scene_png()
    request = ip.ModelInferRequest(model_name="blocks", **fields)
    if not request.inputs:
        request.inputs.add(name="IMAGE", datatype="BYTES", shape=[1, 1])
        request.raw_input_contents.append(join_bytes([image]))
    return request


def _param(name: str, **value: Any) -> ip.ModelInferRequest:
    request = _raw_request()
    for key, v in value.items():
        setattr(request.parameters[name], key, v)
    return request


BAD = {
    "wrong input name": (_raw_request(inputs=[ip.ModelInferRequest.InferInputTensor(
        name="images", datatype="BYTES", shape=[1], contents=ip.InferTensorContents(
            bytes_contents=[b"x"]))]), "IMAGE"),
    "FP32 input": (_raw_request(inputs=[ip.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="FP32", shape=[1, 3],
        contents=ip.InferTensorContents(fp32_contents=[1, 2, 3]))]), "datatype 'FP32'"),
    "shape and elements disagree": (_raw_request(inputs=[ip.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[2, 1],
        contents=ip.InferTensorContents(bytes_contents=[b"x"]))]), "carries 1 element"),
    "raw length prefix past the end": (_raw_request(
        inputs=[ip.ModelInferRequest.InferInputTensor(name="IMAGE", datatype="BYTES",
                                                      shape=[1])],
        raw_input_contents=[b"\xff\x00\x00\x00abc"]), "declares 255 bytes"),
    "unknown parameter": (_param("score_treshold", double_param=0.3), "score_treshold"),
    "priority": (_param("priority", uint64_param=2), "no request priorities"),
    "score out of range": (_param("score_threshold", double_param=2.0), "[0, 1]"),
    "class id out of range": (_param("class_ids", string_param="0,7"), "out of range"),
    "too many images": (_raw_request(inputs=[ip.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[5], contents=ip.InferTensorContents(
            bytes_contents=[scene_png()] * 5))]), "max_batch_size is 4"),
    "not an image at index 1": (_raw_request(inputs=[ip.ModelInferRequest.InferInputTensor(
        name="IMAGE", datatype="BYTES", shape=[2], contents=ip.InferTensorContents(
            bytes_contents=[scene_png(), b"not an image"]))]), "IMAGE[1]"),
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_requests_are_invalid_argument_saying_what_is_wrong(oip: Oip,
                                                                      case: str) -> None:
    request, words = BAD[case]
    stub = ip_grpc.GRPCInferenceServiceStub(oip.run.channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    assert words in (info.value.details() or "")


async def test_unknown_model_or_version_is_not_found(oip: Oip) -> None:
    for name, version in (("nope", ""), ("blocks", "3")):
        tensor = grpcclient.InferInput("IMAGE", [1], "BYTES")
        tensor.set_data_from_numpy(np.array([scene_png()], dtype=np.object_))
        with pytest.raises(InferenceServerException) as info:
            await oip.grpc.infer(name, [tensor], model_version=version)
        assert info.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException):
            await oip.grpc.get_model_config(name, version)


async def test_statistics_count_what_was_answered(oip: Oip) -> None:
    def stats(doc: dict[str, Any]) -> dict[str, Any]:
        (entry,) = doc["model_stats"]
        return entry  # type: ignore[no-any-return]

    before = stats(await oip.grpc.get_inference_statistics("blocks", as_json=True))
    await infer(oip, [scene_png(), scene_png()])
    await oip.run.stub.Detect(request_for(np.zeros((64, 64, 3), np.uint8)))  # detserve.v1 too
    tensor = grpcclient.InferInput("IMAGE", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([b"junk"], dtype=np.object_))
    with pytest.raises(InferenceServerException):
        await oip.grpc.infer("blocks", [tensor])  # fails in the request path
    fp32 = grpcclient.InferInput("IMAGE", [1, 3], "FP32")
    fp32.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException):
        await oip.grpc.infer("blocks", [fp32])  # refused before it: counted all the same
    after = stats(await oip.grpc.get_inference_statistics("blocks", as_json=True))
    assert after["name"] == "blocks" and after["version"] == "1"
    count = int(after.get("inference_count", 0)) - int(before.get("inference_count", 0))
    assert count == 3
    s0, s1 = before["inference_stats"], after["inference_stats"]
    for part in ("success", "queue", "compute_input", "compute_infer", "compute_output"):
        assert int(s1[part]["count"]) - int(s0.get(part, {}).get("count", 0)) == 3, part
        assert int(s1[part]["ns"]) > int(s0.get(part, {}).get("ns", 0)), part
    assert int(s1["fail"]["count"]) - int(s0.get("fail", {}).get("count", 0)) == 2
    metrics = oip.run.server.observer.metrics.registry
    assert metrics.get_sample_value("detserve_requests_total", {
        "model": "blocks@64", "code": "INVALID_ARGUMENT"}) == 2
    assert int(after["execution_count"]) > int(before.get("execution_count", 0))
    assert int(after["last_inference"]) > 0
    everything = await oip.grpc.get_inference_statistics(as_json=True)
    assert [m["name"] for m in everything["model_stats"]] == ["blocks@64"]


async def test_bytes_that_are_not_a_message_are_invalid_argument(oip: Oip) -> None:
    call = oip.run.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(b"\xff\xff\xff\xff not protobuf")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid inference.ModelInferRequest" in (info.value.details() or "")


async def test_perf_analyzers_final_response_flag_is_answered(oip: Oip) -> None:
    stub = ip_grpc.GRPCInferenceServiceStub(oip.run.channel)  # type: ignore[no-untyped-call]
    request = _param("triton_enable_empty_final_response", bool_param=True)
    reply = await stub.ModelInfer(request)
    assert reply.parameters["triton_final_response"].bool_param is True
    plain = await stub.ModelInfer(_raw_request())
    assert "triton_final_response" not in plain.parameters
