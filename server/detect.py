"""The request path shared by `Detect` and `DetectStream`: validate, decode, batch, reply.

`DetectCore.detect` either returns a `DetectResponse` or raises `RequestError` with the status the
caller sees; every outcome, good or bad, is reported once to the observer (metrics + log line).
Admission and the batch queue sit behind a `Lane` (lanes.py): in this process, or in the engine
process when the server runs front-end workers (server/workers); the path here is the same.
"""

from __future__ import annotations

import asyncio
import functools
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from detserve.engines.base import DecodeParams
from detserve.engines.device_jpeg import deferred, plan_device_jpeg
from detserve.engines.manifest import Manifest
from detserve.engines.preprocess import (
    DecodedImage,
    PreparedPixels,
    check_encoded,
    check_raw,
    decode_encoded_native,
    decode_raw_native,
    prepare_decoded,
)
from detserve.protos import detection_pb2 as pb
from detserve.server.admission import Rejected
from detserve.server.catalog import Catalog, ModelView
from detserve.server.decode_pool import DecodeOutcome, DecodePool
from detserve.server.errors import (
    RequestError,
    clip,
    fault_detail,
    for_caller,
    invalid,
    to_request_error,
)
from detserve.server.lanes import Lane, Ticket
from detserve.server.logs import get_logger
from detserve.server.registry import ItemResult
from detserve.server.wire import Incoming, Unparsable

PIXEL_FORMAT_NAMES = {
    pb.PIXEL_FORMAT_RGB8: "RGB8",
    pb.PIXEL_FORMAT_BGR8: "BGR8",
    pb.PIXEL_FORMAT_GRAY8: "GRAY8",
}
# Bounds of the request's strings: far above any real name or id, far below what would make a
# reply or a log line unwieldy (a 16 KB name echoed in an error exceeds gRPC's metadata limit).
MODEL_MAX_CHARS = 256
REQUEST_ID_MAX_CHARS = 1024
_LISTED_IDS = 10  # bad class ids named in an error, at most


@dataclass
class RequestRecord:
    """Everything the metrics and the per-request log line need about one finished request."""

    request_id: str
    frame_id: int
    model: str  # "name@variant", or what the caller asked for if it did not resolve
    code: grpc.StatusCode
    message: str = ""
    stream: bool = False
    model_version: str = ""
    peer: str = ""
    nms: str = ""  # where NMS ran: "host" (inside postprocess_ms) or in the engine run
    batch_size: int = 0
    executed_batch_size: int = 0  # batch_size plus the engine's padding
    reject_reason: str = ""  # admission bound that refused it (admission.REASONS), if any
    decode: DecodeOutcome | None = None  # None: never reached the decode stage
    queue_ms: float = 0.0
    preprocess_ms: float = 0.0
    inference_ms: float = 0.0
    postprocess_ms: float = 0.0
    total_ms: float = 0.0
    detections: int = 0
    max_score: float = 0.0
    image_width: int = 0
    image_height: int = 0
    scores: tuple[float, ...] = ()
    camera: str = ""  # server/cameras.py: the stream's or the caller's camera id; "" for none
    params: DecodeParams | None = None  # the request's postprocessing, once validated


Observer = Callable[[RequestRecord], None]


def _check_range(name: str, value: float, low: float, high: float, low_open: bool) -> float:
    inside = math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
    if not inside:
        bounds = f"({low:g}, {high:g}]" if low_open else f"[{low:g}, {high:g}]"
        raise invalid(f"{name} must be in {bounds}, got {value!r}")
    return float(value)


def _check_fixed_iou(iou: float, model: ModelView) -> None:
    """NMS that runs inside the engine used the IoU threshold fixed when it was built; another
    value cannot apply, and answering anyway would hide that."""
    fixed = model.manifest.postprocess.iou_threshold
    # The request field is a float32: 0.45 arrives as 0.44999998.
    if model.manifest.nms != "host" and abs(iou - fixed) > 1e-6:
        raise invalid(
            f"iou_threshold {iou:g} cannot apply to model {model.key}: its NMS runs "
            f"{model.manifest.nms} with the IoU threshold {fixed:g} fixed when it was built; "
            f"omit iou_threshold or pick a model whose NMS runs on the host"
        )


def decode_params(request: pb.DetectRequest, model: ModelView) -> DecodeParams:
    """The request's postprocessing settings, manifest defaults for unset fields; range-checked."""
    defaults = DecodeParams.from_manifest(model.manifest)
    score, iou, top = defaults.score_threshold, defaults.iou_threshold, defaults.max_detections
    if request.HasField("score_threshold"):
        score = _check_range("score_threshold", request.score_threshold, 0.0, 1.0, False)
    if request.HasField("iou_threshold"):
        iou = _check_range("iou_threshold", request.iou_threshold, 0.0, 1.0, True)
        _check_fixed_iou(iou, model)
    if request.HasField("max_detections"):
        if request.max_detections < 1:
            raise invalid(f"max_detections must be >= 1, got {request.max_detections}")
        top = int(request.max_detections)
    classes: frozenset[int] | None = None
    if request.class_ids:
        nc = model.manifest.num_classes
        bad = sorted({c for c in request.class_ids if c >= nc})
        if bad:
            more = f" and {len(bad) - _LISTED_IDS} more" if len(bad) > _LISTED_IDS else ""
            raise invalid(
                f"class_ids {bad[:_LISTED_IDS]}{more} out of range: model {model.key} has "
                f"{nc} classes (ids 0..{nc - 1})"
            )
        classes = frozenset(int(c) for c in request.class_ids)
    return DecodeParams(score, iou, top, classes)


def _raw_format(raw: pb.RawFrame) -> str:
    fmt = PIXEL_FORMAT_NAMES.get(raw.pixel_format)
    if fmt is None:
        # proto3 enums are open: a value this schema does not define arrives as a bare number.
        value = raw.pixel_format
        known = value in pb.PixelFormat.values()
        name = pb.PixelFormat.Name(value) if known else f"{value} (not a PixelFormat value)"
        allowed = ", ".join(f"PIXEL_FORMAT_{n} ({pb.PixelFormat.Value('PIXEL_FORMAT_' + n)})"
                            for n in sorted(PIXEL_FORMAT_NAMES.values()))
        raise invalid(f"raw frame pixel_format {name} is not supported; use one of {allowed}")
    return fmt


def check_model_name(model: str) -> str:
    """`model` if its length is within MODEL_MAX_CHARS, else INVALID_ARGUMENT."""
    if len(model) > MODEL_MAX_CHARS:
        raise invalid(f"model is {len(model)} characters, above the limit of {MODEL_MAX_CHARS}: "
                      f"{clip(model)!r}")
    return model


def check_strings(request: pb.DetectRequest) -> None:
    """Every string field of the request within its bound, else INVALID_ARGUMENT."""
    check_model_name(request.model)
    if len(request.request_id) > REQUEST_ID_MAX_CHARS:
        raise invalid(f"request_id is {len(request.request_id)} characters, above the limit of "
                      f"{REQUEST_ID_MAX_CHARS}: {clip(request.request_id)!r}")


def new_request_id() -> str:
    """The id of a request whose caller gave none: what its log line and an INTERNAL name."""
    return f"srv-{secrets.token_hex(8)}"


def image_size(image: pb.Image, max_pixels: int) -> tuple[int, int]:
    """(width, height) of an image the server accepts, from its header or raw fields alone:
    everything admission needs, checked before a pixel is decoded. ImageError if it is bad.
    A JPEG's EXIF orientation is applied: this is the size boxes are given in."""
    source = image.WhichOneof("source")
    if source == "encoded":
        return check_encoded(image.encoded, max_pixels).display_size
    if source == "raw":
        raw = image.raw
        check_raw(raw.data, raw.height, raw.width, _raw_format(raw), max_pixels)
        return raw.width, raw.height
    raise invalid("image is required: set image.encoded (JPEG/PNG bytes) or image.raw")


def decode_image(image: pb.Image, max_pixels: int,
                 reduce_for: Manifest | None = None) -> DecodedImage:
    """The request image as HxWx3 uint8 in its own channel order (BGR for JPEG/PNG); ImageError
    (INVALID_ARGUMENT) if it is bad. `reduce_for`: a JPEG at least twice that model's input is
    decoded at 1/2, 1/4 or 1/8 size (engines/preprocess.jpeg_reduction)."""
    source = image.WhichOneof("source")
    if source == "encoded":
        return decode_encoded_native(image.encoded, max_pixels, reduce_for)
    if source == "raw":
        raw = image.raw
        return decode_raw_native(raw.data, raw.height, raw.width, _raw_format(raw), max_pixels)
    raise invalid("image is required: set image.encoded (JPEG/PNG bytes) or image.raw")


def _prepare(image: pb.Image, manifest: Manifest, max_pixels: int, reduced_decode: bool,
             place: Callable[[PreparedPixels], PreparedPixels],
             jpeg_on_device: bool = False) -> PreparedPixels:
    if jpeg_on_device and image.WhichOneof("source") == "encoded":
        # The engine decodes it (engines/device_jpeg.py); None: not a JPEG its device takes.
        jpeg = plan_device_jpeg(image.encoded, max_pixels, manifest)
        if jpeg is not None:
            return place(deferred(jpeg))
    decoded = decode_image(image, max_pixels, manifest if reduced_decode else None)
    return place(prepare_decoded(decoded, manifest))


def build_response(
    request: pb.DetectRequest, model: ModelView, result: ItemResult
) -> pb.DetectResponse:
    dets = result.detections
    classes = model.manifest.classes
    response = pb.DetectResponse(
        request_id=request.request_id,
        frame_id=request.frame_id,
        model=model.key,
        model_version=model.manifest.version,
        nms=model.manifest.nms,
    )
    for box, score, cid in zip(
        dets.boxes.tolist(), dets.scores.tolist(), dets.class_ids.tolist(), strict=True
    ):
        label = classes[cid] if 0 <= cid < len(classes) else f"class_{cid}"
        x1, y1, x2, y2 = box
        response.detections.append(pb.Detection(
            class_id=cid, label=label, score=score, box=pb.Box(x1=x1, y1=y1, x2=x2, y2=y2)
        ))
    return response


class DetectCore:
    def __init__(self, catalog: Catalog, lane: Lane, max_pixels: int, observer: Observer,
                 decoder: DecodePool, reduced_decode: bool = True) -> None:
        self.catalog = catalog
        self.lane = lane
        self.max_pixels = max_pixels
        self.observer = observer
        self.decoder = decoder
        self.reduced_decode = reduced_decode

    async def detect(
        self, request: Incoming, deadline: float | None, stream: bool = False,
        peer: str = "", held: bool = False, camera: str = "",
    ) -> pb.DetectResponse:
        """Run one request; raises RequestError. `deadline` is in time.monotonic() seconds.
        `held`: a stream frame already holding a shared stream slot (waits, never refused).
        `camera`: the camera it comes from (server/cameras.py), for the drift alerts."""
        arrived = time.perf_counter()
        request_id = (clip(request.request_id, REQUEST_ID_MAX_CHARS) if request.request_id
                      else new_request_id())
        record = RequestRecord(request_id, request.frame_id, clip(request.model, MODEL_MAX_CHARS),
                               grpc.StatusCode.OK, stream=stream, peer=peer, camera=camera)
        try:
            response = await self._run(request, deadline, record, held)
        except asyncio.CancelledError:
            record.code, record.message = grpc.StatusCode.CANCELLED, "cancelled by the caller"
            raise
        except Exception as exc:
            error = for_caller(to_request_error(exc), request_id)
            record.code, record.message = error.code, error.message
            if error.detail:
                record.message = f"{error.message}: {error.detail}"
            if isinstance(exc, Rejected):
                record.reject_reason = exc.reason
            raise error from exc
        finally:
            record.total_ms = (time.perf_counter() - arrived) * 1e3
            self._observe(record)
        response.timing.total_ms = (time.perf_counter() - arrived) * 1e3
        return response

    def _observe(self, record: RequestRecord) -> None:
        """Report the request; an observer that fails (a metrics or alert bug) is logged and
        never replaces the request's own outcome, nor ends the stream it came on."""
        try:
            self.observer(record)
        except Exception as exc:
            get_logger("detserve.server.detect").error(
                "observer_failed", request_id=record.request_id, error=fault_detail(exc))

    async def _run(
        self, request: Incoming, deadline: float | None, record: RequestRecord,
        held: bool,
    ) -> pb.DetectResponse:
        if isinstance(request, Unparsable):
            raise request.refusal()
        check_strings(request)
        model = self.catalog.resolve(request.model)
        record.model, record.model_version = model.key, model.manifest.version
        record.nms = model.manifest.nms
        record.params = params = decode_params(request, model)
        record.image_width, record.image_height = image_size(request.image, self.max_pixels)
        # Admission and the pixel budget, reserved from the header before any pixel is decoded.
        ticket = await self.lane.admit(model, deadline, held,
                                       record.image_width * record.image_height)
        try:
            prepared = await self._decode(request, model, deadline, record, ticket)
            outcome = await ticket.submit(prepared, params, deadline)
        finally:
            ticket.release()
        return self._reply(request, model, outcome.value, outcome.batch_size,
                           outcome.queue_s, record)

    async def _decode(
        self, request: pb.DetectRequest, model: ModelView, deadline: float | None,
        record: RequestRecord, ticket: Ticket,
    ) -> PreparedPixels:
        """Decode and letterbox on the decode pool, into the ticket's canvas."""
        record.decode = outcome = DecodeOutcome()
        on_device = ticket.decodes_jpeg
        work = functools.partial(_prepare, request.image, model.manifest, self.max_pixels,
                                 self.reduced_decode, ticket.place, on_device)
        try:
            # A decode the mean says would end past the deadline is not started. A wider margin
            # (mean + 3 deviations, + a batch of one) measured zero goodput at 4K with 200 ms
            # deadlines on this CPU, so a decode on the tail may still end late; it is counted.
            return await self.decoder.run(work, deadline, outcome, ticket.decode_finished,
                                          ticket.expected_decode_s)
        finally:
            record.preprocess_ms = (outcome.waited_s + outcome.decode_s) * 1e3
            ticket.decoded(outcome)

    @staticmethod
    def _reply(request: pb.DetectRequest, model: ModelView, result: ItemResult,
               batch_size: int, queue_s: float, record: RequestRecord) -> pb.DetectResponse:
        response = build_response(request, model, result)
        response.batch_size = batch_size
        response.executed_batch_size = result.executed_batch_size
        response.image_width, response.image_height = record.image_width, record.image_height
        timing = response.timing
        timing.queue_ms = queue_s * 1e3
        timing.preprocess_ms = record.preprocess_ms
        timing.inference_ms = result.inference_s * 1e3
        timing.postprocess_ms = result.postprocess_s * 1e3
        record.batch_size, record.executed_batch_size = batch_size, result.executed_batch_size
        record.queue_ms, record.inference_ms = timing.queue_ms, timing.inference_ms
        record.postprocess_ms = timing.postprocess_ms
        record.scores = tuple(result.detections.scores.tolist())
        record.detections = len(record.scores)
        record.max_score = max(record.scores, default=0.0)
        return response


def deadline_from(context: grpc.aio.ServicerContext[object, object]) -> float | None:
    """The call's gRPC deadline as time.monotonic() seconds (None: the caller set none)."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


__all__ = ["DetectCore", "RequestError", "RequestRecord", "deadline_from"]
