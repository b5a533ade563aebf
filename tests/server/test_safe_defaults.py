"""Issue 14, safe defaults: no internals in replies, every enum and string of a request checked
with a clear INVALID_ARGUMENT, bounded messages and log lines, requests that do not parse
refused, and only the deadline checks giving DEADLINE_EXCEEDED."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from detserve.protos import detection_pb2 as pb
from detserve.server.detect import MODEL_MAX_CHARS, REQUEST_ID_MAX_CHARS
from detserve.server.logs import MAX_FIELD_CHARS, get_logger
from detserve.server.text import clip

from .conftest import Running, blocks_image, boxes_of, request_for
from .log_capture import CapturedLog, captured_log

__all__ = ["captured_log"]  # the fixture, imported for the tests below

GOOD = blocks_image(64, 64, [(0, 0, 0)])
GOOD_BOXES = [("red", 1.0, [0.0, 0.0, 32.0, 32.0])]
INVALID = grpc.StatusCode.INVALID_ARGUMENT
# gRPC refuses a status message over its 16 KB metadata limit; ours stay far below.
MESSAGE_LIMIT = 1024


def _raw(pixel_format: int) -> pb.DetectRequest:
    data = np.zeros((64, 64, 3), np.uint8).tobytes()
    frame = pb.RawFrame(data=data, height=64, width=64, pixel_format=pixel_format)  # type: ignore[arg-type]
    return pb.DetectRequest(image=pb.Image(raw=frame))


async def _refusal(run: Running, request: pb.DetectRequest) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.Detect(request, timeout=10)
    return err.value


async def test_fault_reply_names_the_request_id_and_the_log_holds_the_detail(
    start: Callable[..., Any], captured_log: CapturedLog
) -> None:
    run: Running = await start()
    for given in ("cam-7/frame-19", ""):
        run.engines.first.fail_with = RuntimeError("CUDA error: an illegal memory access")
        error = await _refusal(run, request_for(GOOD, request_id=given))
        assert error.code() == grpc.StatusCode.INTERNAL
        match = re.fullmatch(r"internal error, request id (\S+)", error.details() or "")
        assert match is not None, error.details()
        rid = match[1]
        assert rid == given if given else re.fullmatch(r"srv-[0-9a-f]{16}", rid)
        [line] = [x for x in captured_log.events("request") if x["request_id"] == rid]
        assert line["status"] == "INTERNAL" and line["level"] == "error"
        assert line["message"] == (f"internal error, request id {rid}: RuntimeError: CUDA error: "
                                   f"an illegal memory access")
    assert boxes_of(await run.stub.Detect(request_for(GOOD))) == GOOD_BOXES


async def test_timeout_raised_inside_an_engine_is_internal_not_deadline_exceeded(
    start: Callable[..., Any],
) -> None:
    run: Running = await start()
    run.engines.first.fail_with = TimeoutError("engine watchdog fired")
    error = await _refusal(run, request_for(GOOD, request_id="r1"))
    assert (error.code(), error.details()) == (grpc.StatusCode.INTERNAL,
                                               "internal error, request id r1")


@pytest.mark.parametrize("value", [7, 2**31 - 1, -1])
async def test_unknown_pixel_format_is_invalid_argument_naming_the_allowed_values(
    start: Callable[..., Any], value: int
) -> None:
    run: Running = await start()
    error = await _refusal(run, _raw(value))
    assert error.code() == INVALID
    assert error.details() == (
        f"raw frame pixel_format {value} (not a PixelFormat value) is not supported; use one "
        f"of PIXEL_FORMAT_BGR8 (2), PIXEL_FORMAT_GRAY8 (3), PIXEL_FORMAT_RGB8 (1)")
    assert boxes_of(await run.stub.Detect(request_for(GOOD))) == GOOD_BOXES


async def test_a_16_kb_model_name_is_a_short_invalid_argument(start: Callable[..., Any]) -> None:
    run: Running = await start()
    name = "m" * 16_500
    error = await _refusal(run, request_for(GOOD, model=name))
    assert error.code() == INVALID
    assert error.details() == (f"model is 16500 characters, above the limit of "
                               f"{MODEL_MAX_CHARS}: '{'m' * 64}… (16500 characters)'")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await run.stub.GetModelInfo(pb.GetModelInfoRequest(model=name))
    assert (err.value.code(), err.value.details()) == (INVALID, error.details())


async def test_an_unknown_model_at_the_limit_is_not_found_with_a_clipped_echo(
    start: Callable[..., Any],
) -> None:
    run: Running = await start()
    name = "x" * MODEL_MAX_CHARS
    error = await _refusal(run, request_for(GOOD, model=name))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == (f"unknown model '{clip(name)}'; served models: ['blocks@64']")


async def test_a_1_mb_request_id_is_refused_and_logs_no_long_line(
    start: Callable[..., Any], captured_log: CapturedLog
) -> None:
    run: Running = await start()
    error = await _refusal(run, request_for(GOOD, request_id="r" * 1_000_000))
    assert error.code() == INVALID
    assert error.details() == (f"request_id is 1000000 characters, above the limit of "
                               f"{REQUEST_ID_MAX_CHARS}: '{'r' * 64}… (1000000 characters)'")
    reply = await run.stub.Detect(request_for(GOOD, request_id="r" * REQUEST_ID_MAX_CHARS))
    assert reply.request_id == "r" * REQUEST_ID_MAX_CHARS  # at the limit: echoed whole
    assert [line["status"] for line in captured_log.events("request")] == ["INVALID_ARGUMENT",
                                                                            "OK"]
    assert captured_log.longest() < 4 * MAX_FIELD_CHARS


async def test_many_bad_class_ids_give_a_bounded_message(start: Callable[..., Any]) -> None:
    run: Running = await start()
    error = await _refusal(run, request_for(GOOD, class_ids=list(range(3, 200_003))))
    assert error.code() == INVALID
    assert error.details() == ("class_ids [3, 4, 5, 6, 7, 8, 9, 10, 11, 12] and 199990 more out "
                               "of range: model blocks@64 has 3 classes (ids 0..2)")


async def test_a_long_stream_policy_is_echoed_clipped(start: Callable[..., Any]) -> None:
    run: Running = await start()
    call = run.stub.DetectStream(iter([request_for(GOOD)]),
                                 metadata=(("detserve-stream-policy", "b" * 4_000),))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        _ = [r async for r in call]
    assert err.value.code() == INVALID
    assert len(err.value.details() or "") < MESSAGE_LIMIT
    assert "(4000 characters)" in (err.value.details() or "")


# Bytes that are not a DetectRequest: gRPC used to answer UNKNOWN "Unexpected <class
# 'google.protobuf.message.DecodeError'>: ...", the parser's internals.
UNPARSABLE = [
    (b"\xff\xff\xff", "Wire format was corrupt"),
    (b"\x0a\x02\xff\xfe", "String field had bad UTF-8"),  # request_id, not UTF-8
    (b"\x1a\x02\xc3\x28", "String field had bad UTF-8"),  # model
]


@pytest.mark.parametrize(("data", "why"), UNPARSABLE)
async def test_bytes_that_do_not_parse_are_invalid_argument(
    start: Callable[..., Any], data: bytes, why: str
) -> None:
    run: Running = await start()
    detect = run.channel.unary_unary("/detserve.v1.Detector/Detect")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await detect(data)
    assert (err.value.code(), err.value.details()) == (
        INVALID, f"the request is not a valid detserve.v1.DetectRequest message: {why}")



async def test_a_model_info_request_that_does_not_parse_is_invalid_argument(
    start: Callable[..., Any],
) -> None:
    run: Running = await start()
    info = run.channel.unary_unary("/detserve.v1.Detector/GetModelInfo")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await info(b"\x0a\x02\xc3\x28")  # model, not UTF-8
    assert (err.value.code(), err.value.details()) == (
        INVALID, "the request is not a valid detserve.v1.GetModelInfoRequest message: String "
        "field had bad UTF-8")


async def test_a_stream_frame_that_does_not_parse_fails_alone(start: Callable[..., Any]) -> None:
    run: Running = await start()
    stream = run.channel.stream_stream(
        "/detserve.v1.Detector/DetectStream",
        request_serializer=None, response_deserializer=pb.DetectResponse.FromString)
    good = request_for(GOOD, frame_id=2).SerializeToString()
    replies = [r async for r in stream(iter([b"\x0a\x02\xff\xfe", good]))]
    assert [(r.frame_id, r.status.code) for r in replies] == [(0, INVALID.value[0]), (2, 0)]
    assert "String field had bad UTF-8" in replies[0].status.message
    assert boxes_of(replies[1]) == GOOD_BOXES


def test_every_string_field_of_every_log_line_is_bounded(captured_log: CapturedLog) -> None:
    get_logger().info("anything", huge="z" * 2_000_000, small="kept")
    [line] = captured_log.events("anything")
    assert line["small"] == "kept"
    assert line["huge"] == clip("z" * 2_000_000, MAX_FIELD_CHARS)
    assert captured_log.longest() < MAX_FIELD_CHARS + 200


def test_clip_keeps_short_text_and_marks_what_it_cut() -> None:
    assert clip("shapes@320") == "shapes@320"
    assert clip("a" * 65) == "a" * 64 + "… (65 characters)"
    assert clip("abcdef", 3) == "abc… (6 characters)"


async def test_a_3_kb_png_claiming_a_4_gb_chunk_is_refused_at_once(
    start: Callable[..., Any],
) -> None:
    """Found by fuzzing (tests/fuzz/regressions): OpenCV allocated the 4 GB it claims."""
    run: Running = await start()
    data = (Path(__file__).parents[1] / "fuzz" / "regressions"
            / "decode-png-chunk-claims-4gb.bin").read_bytes()
    started = time.monotonic()
    error = await _refusal(run, pb.DetectRequest(image=pb.Image(encoded=data)))
    assert time.monotonic() - started < 1.0
    assert error.code() == INVALID
    assert "chunk at byte 33 claims 4294904675 bytes" in (error.details() or "")
