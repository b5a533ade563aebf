"""Hypothesis against a real server (issue 14): DetectRequest messages of every shape, and bytes
that are not one, sent next to a valid request. Every reply must be OK or a status the README's
contract documents for bad input ("The contract", the error table), never INTERNAL or UNKNOWN,
with a short message; the valid neighbour is answered with the right boxes; the server lives.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import cv2
import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.app import Server, start_server

from .conftest import blocks_image, blocks_model, boxes_of, png, request_for, server_config

GOOD = blocks_image(64, 64, [(0, 0, 0)])
GOOD_BOXES = [("red", 1.0, [0.0, 0.0, 32.0, 32.0])]
# What bad input may get (README "The contract"): the rest of the table needs auth, a deadline,
# overload, a drain or an engine fault, none of which these requests bring.
DOCUMENTED = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.RESOURCE_EXHAUSTED}
MESSAGE_LIMIT = 1024
WAIT_S = 30.0
FUZZ = settings(max_examples=100, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


class ThreadedServer:
    """A real server on its own event loop and thread, for a synchronous hypothesis test."""

    def __init__(self, package: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        config = server_config(blocks_model(package), max_message_bytes=1 << 20)
        self.server: Server = self._run(start_server(config))
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.port}")
        self.stub = pb_grpc.DetectorStub(self.channel)  # type: ignore[no-untyped-call]

    def _run(self, coro: object) -> Server:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)  # type: ignore[arg-type]

    def close(self) -> None:
        self.channel.close()
        asyncio.run_coroutine_threadsafe(self.server.stop(1.0), self.loop).result(WAIT_S)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)


@pytest.fixture(scope="module")
def served(tiny_package: Path) -> Iterator[ThreadedServer]:
    server = ThreadedServer(tiny_package)
    yield server
    server.close()


def _jpeg(image: np.ndarray) -> bytes:
    return bytes(cv2.imencode(".jpg", image)[1].tobytes())


VALID_FILES = [png(GOOD), _jpeg(GOOD), png(blocks_image(200, 120, [(32, 64, 1)]))]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid PNG or JPEG with bytes flipped, cut, or inserted."""
    data = bytearray(draw(st.sampled_from(VALID_FILES)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(("flip", "cut", "insert")))
        if action == "flip":
            data[at] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del data[at:]
            if not data:
                break
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


sides = st.one_of(st.integers(0, 80), st.integers(0, 2**32 - 1))
raw_frames = st.builds(
    lambda h, w, fmt, fill, extra: pb.RawFrame(
        height=h, width=w, pixel_format=fmt,
        data=(b"\x7f" * (h * w * 3) if fill and h * w <= 10_000 else b"") + extra),
    sides, sides, st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1)), st.booleans(),
    st.binary(max_size=64))
images = st.one_of(
    st.none(),
    st.builds(lambda b: pb.Image(encoded=b), st.binary(max_size=512)),
    st.builds(lambda b: pb.Image(encoded=b), mutated()),
    st.builds(lambda r: pb.Image(raw=r), raw_frames),
)
floats = st.one_of(st.none(), st.floats(width=32), st.floats(-0.25, 1.25, width=32))
texts = st.one_of(st.text(max_size=40), st.sampled_from(["", "blocks", "blocks@64", "blocks@1"]),
                  st.builds(lambda n: "m" * n, st.integers(200, 20_000)))


@st.composite
def requests(draw: st.DrawFn) -> pb.DetectRequest:
    request = pb.DetectRequest(
        request_id=draw(st.one_of(st.text(max_size=40),
                                  st.builds(lambda n: "r" * n, st.integers(1000, 50_000)))),
        frame_id=draw(st.integers(0, 2**64 - 1)),
        model=draw(texts),
        class_ids=draw(st.lists(st.integers(0, 2**32 - 1), max_size=12)),
    )
    image = draw(images)
    if image is not None:
        request.image.CopyFrom(image)
    for name in ("score_threshold", "iou_threshold"):
        value = draw(floats)
        if value is not None:
            setattr(request, name, value)
    top = draw(st.one_of(st.none(), st.integers(0, 2**32 - 1)))
    if top is not None:
        request.max_detections = top
    return request


def _check_status(code: grpc.StatusCode, details: str) -> None:
    assert code in DOCUMENTED, (code, details)
    assert len(details) < MESSAGE_LIMIT, details[:200]


def _neighbour_and(served: ThreadedServer, send: grpc.Future) -> None:
    """`send` is in flight: a valid request next to it must be answered right."""
    good = served.stub.Detect.future(request_for(GOOD), timeout=WAIT_S)
    try:
        send.result()
    except grpc.RpcError as exc:
        _check_status(exc.code(), exc.details() or "")
    assert boxes_of(good.result()) == GOOD_BOXES


@FUZZ
@given(request=requests())
def test_fuzzed_detect_requests_get_documented_statuses(served: ThreadedServer,
                                                        request: pb.DetectRequest) -> None:
    _neighbour_and(served, served.stub.Detect.future(request, timeout=WAIT_S))


@FUZZ
@given(data=st.one_of(st.binary(max_size=256),
                      st.builds(lambda r, cut: r.SerializeToString()[:cut], requests(),
                                st.integers(0, 600))))
def test_fuzzed_bytes_on_the_wire_get_documented_statuses(served: ThreadedServer,
                                                          data: bytes) -> None:
    detect = served.channel.unary_unary("/detserve.v1.Detector/Detect")
    _neighbour_and(served, detect.future(data, timeout=WAIT_S))


@settings(FUZZ, max_examples=40)
@given(frames=st.lists(requests(), min_size=1, max_size=4))
def test_fuzzed_stream_frames_fail_alone(served: ThreadedServer,
                                         frames: list[pb.DetectRequest]) -> None:
    sent = [*frames, request_for(GOOD, frame_id=99)]
    replies = list(served.stub.DetectStream(iter(sent), timeout=WAIT_S))
    assert len(replies) == len(sent)
    for reply in replies[:-1]:
        _check_status(_code(reply.status.code), reply.status.message)
    assert (replies[-1].frame_id, replies[-1].status.code) == (99, 0)
    assert boxes_of(replies[-1]) == GOOD_BOXES


def _code(number: int) -> grpc.StatusCode:
    return next(c for c in grpc.StatusCode if c.value[0] == number)
