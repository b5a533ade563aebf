"""ModelStreamInfer: a stream of 10 requests with one bad frame, driven by tritonclient. Each
request gets its reply in order, the bad one an in-band error naming its status, and the
stream goes on to answer the frames after it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from detserve.protos import inference_pb2 as ip
from detserve.protos import inference_pb2_grpc as ip_grpc

from .conftest import SCENE, Oip, grpcclient, image_array, scene_png

BAD_FRAME = 4


def _request(i: int) -> dict[str, Any]:
    image = b"not an image" if i == BAD_FRAME else scene_png(SCENE[: 1 + i % 3])
    tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(image_array(image))
    return {"model_name": "blocks", "inputs": [tensor], "request_id": f"frame-{i}"}


async def test_a_bad_frame_is_answered_in_band_and_the_stream_goes_on(oip: Oip) -> None:
    async def frames() -> AsyncIterator[dict[str, Any]]:
        for i in range(10):
            yield _request(i)

    replies = [(r, e) async for r, e in oip.grpc.stream_infer(frames())]
    assert len(replies) == 10
    for i, (result, error) in enumerate(replies):
        if i == BAD_FRAME:
            assert result is None
            assert "INVALID_ARGUMENT" in error.message() and "frame-4" in error.message()
            continue
        assert error is None, error
        assert result.get_response().id == f"frame-{i}"
        assert result.as_numpy("num_detections").tolist() == [[1 + i % 3]]


async def test_a_failed_request_keeps_the_stream_open_for_the_next(oip: Oip) -> None:
    """With our own stub: the reply to a bad request arrives before the next is sent."""
    stub = ip_grpc.GRPCInferenceServiceStub(oip.run.channel)  # type: ignore[no-untyped-call]
    call = stub.ModelStreamInfer()
    bad = ip.ModelInferRequest(model_name="nope", id="a")
    bad.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        scene_png())
    await call.write(bad)
    first = await call.read()
    assert first.error_message.startswith("[request id: a] NOT_FOUND: unknown model 'nope'")
    good = ip.ModelInferRequest(model_name="blocks", id="b")
    good.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        scene_png())
    await call.write(good)
    second = await call.read()
    assert not second.error_message and second.infer_response.id == "b"
    await call.done_writing()
    assert await call.read() == grpc.aio.EOF
    assert await call.code() == grpc.StatusCode.OK


async def test_calls_are_refused_while_the_server_drains(oip: Oip) -> None:
    oip.run.server.service.start_drain()
    stub = ip_grpc.GRPCInferenceServiceStub(oip.run.channel)  # type: ignore[no-untyped-call]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ModelInfer(ip.ModelInferRequest(model_name="blocks"))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not (await stub.ServerReady(ip.ServerReadyRequest())).ready


async def test_a_frame_that_is_not_a_message_is_answered_in_band(oip: Oip) -> None:
    call = oip.run.channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        response_deserializer=ip.ModelStreamInferResponse.FromString)()
    good = ip.ModelInferRequest(model_name="blocks", id="ok")
    good.inputs.add(name="IMAGE", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        scene_png())
    for frame in (b"\xff\xff\xff\xff not protobuf", good.SerializeToString()):
        await call.write(frame)
    await call.done_writing()
    first, second = [reply async for reply in call]
    assert "INVALID_ARGUMENT: the request is not a valid inference.ModelInferRequest" in (
        first.error_message)
    assert second.infer_response.id == "ok"
    assert await call.code() == grpc.StatusCode.OK
