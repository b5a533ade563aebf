"""Python clients for the detserve gRPC service: `DetectClient` (blocking) and
`AsyncDetectClient` (grpc.aio). Both return typed results (detserve.client.results) and raise
`DetectError` carrying the gRPC status code when a call fails.

Images: a file path, encoded bytes (JPEG/PNG as they are; grey, RGBA, 16-bit, WebP, BMP, TIFF
converted locally), or a numpy frame. NUMPY FRAMES ARE BGR BY DEFAULT, the OpenCV convention
(cv2.imread, cv2.VideoCapture); send an RGB array with DetectOptions(pixel_format="RGB8").
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import grpc
import grpc.aio

from detserve.client.images import DEFAULT_PIXEL_FORMAT, ImageInput, PixelFormat, to_image
from detserve.client.results import (
    DetectError,
    DetectResult,
    ModelInfo,
    model_info_from_proto,
    result_from_proto,
)
from detserve.client.security import ChannelSecurity, open_aio_channel, open_channel
from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc

DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class DetectOptions:
    """Per-request settings; None falls back to the model's manifest values on the server.

    `pixel_format` is the channel order of numpy frames: "BGR8" (the default, OpenCV's order)
    or "RGB8"; grey (HxW) frames go as GRAY8 either way."""

    model: str = ""
    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    class_ids: tuple[int, ...] = ()
    pixel_format: PixelFormat = DEFAULT_PIXEL_FORMAT  # numpy frames: BGR unless told "RGB8"


@dataclass(frozen=True)
class ModelList:
    models: tuple[ModelInfo, ...]
    default_model: str


def build_request(
    image: ImageInput | pb.Image,
    options: DetectOptions,
    request_id: str = "",
    frame_id: int = 0,
) -> pb.DetectRequest:
    """The DetectRequest for one image; optional fields are set only when given."""
    req = pb.DetectRequest(
        request_id=request_id,
        frame_id=frame_id,
        model=options.model,
        image=to_image(image, options.pixel_format),
        class_ids=list(options.class_ids),
    )
    if options.score_threshold is not None:
        req.score_threshold = options.score_threshold
    if options.iou_threshold is not None:
        req.iou_threshold = options.iou_threshold
    if options.max_detections is not None:
        req.max_detections = options.max_detections
    return req


def channel_options(
    max_message_bytes: int, load_balancing: str | None = None
) -> list[tuple[str, Any]]:
    """`load_balancing` ("round_robin"): a call per subchannel in turn over every address the
    target resolves to (`dns:///detserve-headless:50051`, `ipv4:a:p,b:p`), instead of gRPC's
    default pick_first, which sends every call down one connection (README "Scale-out")."""
    options: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
    ]
    if load_balancing:
        options.append(("grpc.service_config", json.dumps(balanced_service_config(
            load_balancing))))
    return options


# Unary calls a draining replica refused (UNAVAILABLE, nothing done) are sent again, to the
# next pick; streams are not retried (their frames may have been answered). A draining server
# keeps its connections through the grace period, so with other calls picking in between a
# retry can land on it again: 5 attempts, gRPC's most. CANCELLED too: a server's final stop
# cancels calls it had accepted but never handed to the servicer (nothing was done, and Detect
# only reads); a caller's own cancellation is local and never retried.
UNARY_RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.02s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
}


def balanced_service_config(load_balancing: str) -> dict[str, Any]:
    """gRPC service config: the balancing policy, and retries of refused unary calls."""
    unary = [{"service": "detserve.v1.Detector", "method": m}
             for m in ("Detect", "ListModels", "GetModelInfo")]
    return {"loadBalancingConfig": [{load_balancing: {}}],
            "methodConfig": [{"name": unary, "retryPolicy": UNARY_RETRY_POLICY}]}


class _SentTimes:
    """Send time per frame id of a stream, so each reply gets its own round-trip latency.

    Replies come in frame order, so a reply for frame f also settles every earlier frame that
    the server dropped (policy `latest`)."""

    def __init__(self) -> None:
        self._sent: dict[int, float] = {}

    def mark(self, frame_id: int) -> None:
        self._sent[frame_id] = time.perf_counter()

    def latency_ms(self, frame_id: int) -> float:
        sent = self._sent.pop(frame_id, None)
        for stale in [f for f in self._sent if f < frame_id]:
            del self._sent[stale]
        return 0.0 if sent is None else (time.perf_counter() - sent) * 1000.0


class _FrameSourceFailure:
    """An exception raised by the caller's frames (a bad frame, a failing camera).

    Raised inside the request iterator, gRPC would log a traceback and end the call with UNKNOWN
    "Exception iterating requests!"; instead the request stream ends there, the frames already
    sent are answered, and the caller gets its own exception."""

    def __init__(self) -> None:
        self.error: Exception | None = None

    def reraise(self) -> None:
        if self.error is not None:
            raise self.error


class DetectClient:
    """Blocking client. Use as a context manager or call close(). `security`: TLS and a bearer
    token (detserve.client.security.ChannelSecurity); plaintext without one."""

    def __init__(
        self,
        target: str,
        timeout_s: float | None = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        security: ChannelSecurity | None = None,
        load_balancing: str | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel = open_channel(
            target, channel_options(max_message_bytes, load_balancing), security)
        self._stub = pb_grpc.DetectorStub(self._channel)  # type: ignore[no-untyped-call]

    def wait_ready(self, timeout_s: float = 10.0) -> None:
        """Block until the channel connects; DetectError UNAVAILABLE after `timeout_s`."""
        try:
            grpc.channel_ready_future(self._channel).result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            raise DetectError(
                grpc.StatusCode.UNAVAILABLE, f"no server at {self.target} after {timeout_s}s"
            ) from None

    def detect(
        self,
        image: ImageInput | pb.Image,
        options: DetectOptions | None = None,
        request_id: str = "",
        frame_id: int = 0,
        timeout_s: float | None = None,
    ) -> DetectResult:
        """Detect objects in one image (file path, encoded bytes, numpy frame or pb.Image)."""
        req = build_request(image, options or DetectOptions(), request_id, frame_id)
        start = time.perf_counter()
        try:
            reply = self._stub.Detect(req, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as err:
            raise DetectError.from_rpc_error(err) from None
        return result_from_proto(reply, (time.perf_counter() - start) * 1000.0)

    def stream(
        self,
        frames: Iterable[ImageInput | pb.Image],
        options: DetectOptions | None = None,
        timeout_s: float | None = None,
        policy: str | None = None,
    ) -> Iterator[DetectResult]:
        """Send frames over one DetectStream (frame ids 1, 2, ...) and yield replies in order.

        `policy` ("block" or "latest") overrides the server's stream policy for this stream.
        A failed frame yields a result with `error` set; a failed stream raises DetectError.
        An exception from `frames` itself ends the stream: the frames sent before it are
        answered, then that exception is raised as it is."""
        opts = options or DetectOptions()
        sent = _SentTimes()
        failure = _FrameSourceFailure()

        def requests() -> Iterator[pb.DetectRequest]:
            try:
                for frame_id, frame in enumerate(frames, start=1):
                    req = build_request(frame, opts, frame_id=frame_id)
                    sent.mark(frame_id)
                    yield req
            except Exception as err:  # re-raised below, after the frames already sent
                failure.error = err

        try:
            replies = self._stub.DetectStream(requests(), timeout=timeout_s,
                                              metadata=_policy_metadata(policy))
            for reply in replies:
                yield result_from_proto(reply, sent.latency_ms(int(reply.frame_id)))
        except grpc.RpcError as err:
            raise DetectError.from_rpc_error(err) from None
        failure.reraise()

    def list_models(self) -> ModelList:
        try:
            reply = self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise DetectError.from_rpc_error(err) from None
        return ModelList(tuple(model_info_from_proto(m) for m in reply.models), reply.default_model)

    def model_info(self, model: str = "") -> ModelInfo:
        try:
            reply = self._stub.GetModelInfo(
                pb.GetModelInfoRequest(model=model), timeout=self.timeout_s
            )
        except grpc.RpcError as err:
            raise DetectError.from_rpc_error(err) from None
        return model_info_from_proto(reply)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DetectClient:
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncDetectClient:
    """grpc.aio client; create it inside a running event loop. `async with` closes it.
    `security` as for DetectClient."""

    def __init__(
        self,
        target: str,
        timeout_s: float | None = 30.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        security: ChannelSecurity | None = None,
        load_balancing: str | None = None,
    ) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self._channel = open_aio_channel(
            target, channel_options(max_message_bytes, load_balancing), security)
        self._stub = pb_grpc.DetectorStub(self._channel)  # type: ignore[no-untyped-call]

    @property
    def stub(self) -> pb_grpc.DetectorStub:
        """The raw stub, for callers (the load generator) that build requests themselves."""
        return self._stub

    async def wait_ready(self, timeout_s: float = 10.0) -> None:
        import asyncio

        try:
            await asyncio.wait_for(self._channel.channel_ready(), timeout_s)
        except TimeoutError:
            raise DetectError(
                grpc.StatusCode.UNAVAILABLE, f"no server at {self.target} after {timeout_s}s"
            ) from None

    async def detect(
        self,
        image: ImageInput | pb.Image,
        options: DetectOptions | None = None,
        request_id: str = "",
        frame_id: int = 0,
        timeout_s: float | None = None,
    ) -> DetectResult:
        req = build_request(image, options or DetectOptions(), request_id, frame_id)
        start = time.perf_counter()
        try:
            reply = await self._stub.Detect(req, timeout=timeout_s or self.timeout_s)
        except grpc.RpcError as err:
            raise DetectError.from_rpc_error(err) from None
        return result_from_proto(reply, (time.perf_counter() - start) * 1000.0)

    async def stream(
        self,
        frames: AsyncIterable[ImageInput | pb.Image] | Iterable[ImageInput | pb.Image],
        options: DetectOptions | None = None,
        timeout_s: float | None = None,
        policy: str | None = None,
    ) -> AsyncIterator[DetectResult]:
        """Async iterator of replies for frames sent over one DetectStream (ids 1, 2, ...)."""
        opts = options or DetectOptions()
        sent = _SentTimes()

        failure = _FrameSourceFailure()

        async def requests() -> AsyncIterator[pb.DetectRequest]:
            frame_id = 0
            try:
                async for frame in _aiter(frames):
                    frame_id += 1
                    req = build_request(frame, opts, frame_id=frame_id)
                    sent.mark(frame_id)
                    yield req
            except Exception as err:  # re-raised below, after the frames already sent
                failure.error = err

        call = self._stub.DetectStream(requests(), timeout=timeout_s,
                                       metadata=_policy_metadata(policy))
        try:
            async for reply in call:
                yield result_from_proto(reply, sent.latency_ms(int(reply.frame_id)))
        except grpc.RpcError as err:
            raise DetectError.from_rpc_error(err) from None
        finally:
            call.cancel()
        failure.reraise()

    async def list_models(self) -> ModelList:
        try:
            reply = await self._stub.ListModels(pb.ListModelsRequest(), timeout=self.timeout_s)
        except grpc.RpcError as err:
            raise DetectError.from_rpc_error(err) from None
        return ModelList(tuple(model_info_from_proto(m) for m in reply.models), reply.default_model)

    async def model_info(self, model: str = "") -> ModelInfo:
        try:
            reply = await self._stub.GetModelInfo(
                pb.GetModelInfoRequest(model=model), timeout=self.timeout_s
            )
        except grpc.RpcError as err:
            raise DetectError.from_rpc_error(err) from None
        return model_info_from_proto(reply)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncDetectClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


STREAM_POLICY_KEY = "detserve-stream-policy"  # call metadata the server reads


def _policy_metadata(policy: str | None) -> tuple[tuple[str, str], ...] | None:
    if policy is None:
        return None
    if policy not in ("block", "latest"):
        raise ValueError(f"stream policy must be 'block' or 'latest', got {policy!r}")
    return ((STREAM_POLICY_KEY, policy),)


async def _aiter(items: AsyncIterable[Any] | Iterable[Any]) -> AsyncIterator[Any]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
