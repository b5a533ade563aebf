"""Typed results of the detserve client, converted from the protobuf replies.

Callers get frozen dataclasses with plain Python values, never protobuf messages, so results can
be compared, logged and turned into JSON (`to_json`) without knowing the wire format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import grpc

from detserve.protos import detection_pb2 as pb

_CODES_BY_VALUE: dict[int, grpc.StatusCode] = {code.value[0]: code for code in grpc.StatusCode}


def status_code_from_int(value: int) -> grpc.StatusCode:
    """The grpc.StatusCode for a google.rpc.Status code number (unknown numbers -> UNKNOWN)."""
    return _CODES_BY_VALUE.get(value, grpc.StatusCode.UNKNOWN)


PUSHBACK_KEY = "grpc-retry-pushback-ms"


def retry_after_s(error: object) -> float | None:
    """The server's retry hint (grpc-retry-pushback-ms trailing metadata) in seconds, if any."""
    trailing = getattr(error, "trailing_metadata", None)
    for key, value in (trailing() if callable(trailing) else None) or ():
        if key == PUSHBACK_KEY:
            try:
                return max(int(value), 0) / 1e3
            except (TypeError, ValueError):
                return None
    return None


class DetectError(Exception):
    """A call failed; `code` is the gRPC status code and `details` the server's reason.
    `retry_after_s`: when the server said a retry could be admitted (busy refusals)."""

    def __init__(self, code: grpc.StatusCode, details: str, frame_id: int | None = None,
                 retry_after_s: float | None = None) -> None:
        where = f" (frame {frame_id})" if frame_id is not None else ""
        super().__init__(f"{code.name}{where}: {details}")
        self.code = code
        self.details = details
        self.frame_id = frame_id
        self.retry_after_s = retry_after_s

    @classmethod
    def from_rpc_error(cls, error: grpc.RpcError) -> DetectError:
        # grpc.RpcError raised by calls is also a grpc.Call carrying code() and details().
        code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
        details = error.details() if hasattr(error, "details") else str(error)
        return cls(code or grpc.StatusCode.UNKNOWN, details or "",
                   retry_after_s=retry_after_s(error))


@dataclass(frozen=True)
class Detection:
    """One detected object; `bbox` is (x1, y1, x2, y2) in the caller's original pixels."""

    label: str
    class_id: int
    score: float
    bbox: tuple[float, float, float, float]

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "class_id": self.class_id,
            "score": round(self.score, 4),
            "bbox": [round(v, 2) for v in self.bbox],
        }


@dataclass(frozen=True)
class Timing:
    """Server-side milliseconds per stage (see Timing in detection.proto)."""

    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    total_ms: float = 0.0

    def to_json(self) -> dict[str, float]:
        return {
            "queue_ms": round(self.queue_ms, 3),
            "preprocess_ms": round(self.preprocess_ms, 3),
            "inference_ms": round(self.inference_ms, 3),
            "postprocess_ms": round(self.postprocess_ms, 3),
            "total_ms": round(self.total_ms, 3),
        }


@dataclass(frozen=True)
class DetectResult:
    """The answer for one image.

    `latency_ms` is the client-measured round trip (for streams: frame sent -> reply received);
    `timing` is the server's own account. On streams a failed frame comes back as a result whose
    `error` is set (the stream stays open); unary calls raise DetectError instead.
    """

    detections: tuple[Detection, ...]
    timing: Timing
    batch_size: int
    model: str
    model_version: str
    request_id: str
    frame_id: int
    image_width: int
    image_height: int
    latency_ms: float
    nms: str = ""
    dropped_frames: int = 0
    error: DetectError | None = None
    executed_batch_size: int = 0  # batch_size plus the engine's padding (0: not reported)

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """The seed lesson's shape: detections with label/score/bbox, latency_ms, then extras."""
        out: dict[str, Any] = {
            "detections": [d.to_json() for d in self.detections],
            "latency_ms": round(self.latency_ms, 3),
            "server_timing_ms": self.timing.to_json(),
            "batch_size": self.batch_size,
            "executed_batch_size": self.executed_batch_size,
            "model": self.model,
            "model_version": self.model_version,
            "request_id": self.request_id,
            "frame_id": self.frame_id,
            "image_size": [self.image_width, self.image_height],
        }
        if self.nms:
            out["nms"] = self.nms
        if self.dropped_frames:
            out["dropped_frames"] = self.dropped_frames
        if self.error is not None:
            out["error"] = {"code": self.error.code.name, "message": self.error.details}
        return out


def detection_from_proto(msg: pb.Detection) -> Detection:
    box = msg.box
    return Detection(
        label=msg.label,
        class_id=int(msg.class_id),
        score=float(msg.score),
        bbox=(float(box.x1), float(box.y1), float(box.x2), float(box.y2)),
    )


def timing_from_proto(msg: pb.Timing) -> Timing:
    return Timing(
        queue_ms=msg.queue_ms,
        preprocess_ms=msg.preprocess_ms,
        inference_ms=msg.inference_ms,
        postprocess_ms=msg.postprocess_ms,
        total_ms=msg.total_ms,
    )


def result_from_proto(msg: pb.DetectResponse, latency_ms: float) -> DetectResult:
    """Convert a reply; a non-OK per-frame status (streams) becomes `error`."""
    error = None
    if msg.HasField("status") and msg.status.code != 0:
        error = DetectError(
            status_code_from_int(msg.status.code), msg.status.message, frame_id=msg.frame_id
        )
    return DetectResult(
        detections=tuple(detection_from_proto(d) for d in msg.detections),
        timing=timing_from_proto(msg.timing),
        batch_size=int(msg.batch_size),
        model=msg.model,
        model_version=msg.model_version,
        request_id=msg.request_id,
        frame_id=int(msg.frame_id),
        image_width=int(msg.image_width),
        image_height=int(msg.image_height),
        latency_ms=latency_ms,
        nms=msg.nms,
        dropped_frames=int(msg.dropped_frames),
        error=error,
        executed_batch_size=int(msg.executed_batch_size),
    )


@dataclass(frozen=True)
class BatchingInfo:
    max_batch_size: int
    max_queue_delay_ms: float
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    instances: int
    max_queue_wait_ms: float = 0.0  # admission's bound on the expected wait; 0 = none


@dataclass(frozen=True)
class ModelInfo:
    """What the server says about one served model (GetModelInfo / ListModels)."""

    name: str
    version: str
    classes: tuple[str, ...]
    input_width: int
    input_height: int
    output_format: str
    precision: str
    engine: str
    score_threshold: float
    iou_threshold: float
    max_detections: int
    batching: BatchingInfo
    is_default: bool
    nms: str
    metadata: dict[str, str] = field(default_factory=dict)
    multi_label: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "classes": list(self.classes),
            "input_size": [self.input_width, self.input_height],
            "output_format": self.output_format,
            "precision": self.precision,
            "engine": self.engine,
            "score_threshold": round(self.score_threshold, 4),
            "iou_threshold": round(self.iou_threshold, 4),
            "max_detections": self.max_detections,
            "batching": {
                "max_batch_size": self.batching.max_batch_size,
                "max_queue_delay_ms": self.batching.max_queue_delay_ms,
                "preferred_batch_sizes": list(self.batching.preferred_batch_sizes),
                "max_queue_size": self.batching.max_queue_size,
                "instances": self.batching.instances,
                "max_queue_wait_ms": self.batching.max_queue_wait_ms,
            },
            "is_default": self.is_default,
            "nms": self.nms,
            "multi_label": self.multi_label,
            "metadata": dict(self.metadata),
        }


def model_info_from_proto(msg: pb.ModelInfo) -> ModelInfo:
    b = msg.batching
    return ModelInfo(
        name=msg.name,
        version=msg.version,
        classes=tuple(msg.classes),
        input_width=int(msg.input_width),
        input_height=int(msg.input_height),
        output_format=msg.output_format,
        precision=msg.precision,
        engine=msg.engine,
        score_threshold=float(msg.score_threshold),
        iou_threshold=float(msg.iou_threshold),
        max_detections=int(msg.max_detections),
        batching=BatchingInfo(
            max_batch_size=int(b.max_batch_size),
            max_queue_delay_ms=float(b.max_queue_delay_ms),
            preferred_batch_sizes=tuple(int(s) for s in b.preferred_batch_sizes),
            max_queue_size=int(b.max_queue_size),
            instances=int(b.instances),
            max_queue_wait_ms=float(b.max_queue_wait_ms),
        ),
        is_default=bool(msg.is_default),
        nms=msg.nms,
        metadata=dict(msg.metadata),
        multi_label=bool(msg.multi_label),
    )
