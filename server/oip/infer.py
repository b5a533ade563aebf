"""One Open Inference Protocol inference, protocol-neutral: B images through detserve's own
request path.

Each image becomes a detserve.v1 `DetectRequest` run by `DetectCore.detect`, the path Detect
takes: the same admission, pixel budget, decode pool, dynamic batcher, deadlines and error
mapping, so the B images of one call are B items of the model's batcher (batched with each
other and with every other caller's). A failed image fails the call with its status, the message
naming its index; the call's other images are cancelled. A call refused before its images
reach that path (a bad tensor, parameter or model) is recorded by `record_refusal`, so every
outcome still counts once in the metrics, the log and ModelStatistics.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from detserve.protos import detection_pb2 as pb
from detserve.server.catalog import Catalog, ModelView
from detserve.server.detect import DetectCore, RequestRecord, decode_params
from detserve.server.errors import RequestError, invalid, to_request_error
from detserve.server.oip.outputs import OutputTensor, build_outputs, requested
from detserve.server.oip.tensors import InferOptions


class ImageFailed(RequestError):
    """An image of the call failed in the request path, which recorded it."""


def record_refusal(core: DetectCore, exc: RequestError, request_id: str, model: str,
                   peer: str) -> None:
    """Count and log a call refused before its images reached the request path."""
    if not isinstance(exc, ImageFailed):
        core.observer(RequestRecord(request_id, 0, model, exc.code, exc.message, peer=peer))


@dataclass(frozen=True)
class InferCall:
    model: ModelView
    request_id: str
    images: Sequence[bytes]
    options: InferOptions
    outputs: Sequence[str] = ()  # the requested output names; empty: the default four


def resolve(catalog: Catalog, name: str, version: str) -> ModelView:
    """The served model for a protocol model name ("shapes", "shapes@640"; "" the default) and
    version ("" or the model's own); NOT_FOUND otherwise."""
    model = catalog.resolve(name)
    if version and version != model.manifest.version:
        raise RequestError(
            grpc.StatusCode.NOT_FOUND,
            f"model {model.key} has version {model.manifest.version!r}, not {version!r}; "
            f"omit model_version or send {model.manifest.version!r}",
        )
    return model


def template(call: InferCall) -> pb.DetectRequest:
    """The detserve.v1 request every image of the call is sent as (its image set per image)."""
    o = call.options
    request = pb.DetectRequest(request_id=call.request_id, model=call.model.key,
                               class_ids=list(o.class_ids))
    if o.score_threshold is not None:
        request.score_threshold = o.score_threshold
    if o.iou_threshold is not None:
        request.iou_threshold = o.iou_threshold
    if o.max_detections is not None:
        request.max_detections = o.max_detections
    return request


def deadline_of(grpc_deadline: float | None, options: InferOptions) -> float | None:
    """The earlier of the transport's deadline and the `timeout` parameter (monotonic s)."""
    if options.timeout_s is None:
        return grpc_deadline
    mine = time.monotonic() + options.timeout_s
    return mine if grpc_deadline is None else min(grpc_deadline, mine)


async def _run_all(core: DetectCore, requests: Sequence[pb.DetectRequest],
                   deadline: float | None, peer: str) -> list[pb.DetectResponse]:
    tasks = [asyncio.ensure_future(core.detect(r, deadline, peer=peer)) for r in requests]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for index, task in enumerate(tasks):
        if not task.cancelled() and task.exception() is not None:
            error = to_request_error(task.exception())  # type: ignore[arg-type]
            where = f"IMAGE[{index}]" if len(tasks) > 1 else "IMAGE"
            raise ImageFailed(error.code, f"{where}: {error.message}")
    return [task.result() for task in tasks]


async def infer(core: DetectCore, call: InferCall, deadline: float | None,
                peer: str = "") -> list[OutputTensor]:
    """Run the call; RequestError with the status the caller sees."""
    names = requested(call.outputs)
    base = template(call)
    params = decode_params(base, call.model)  # parameter errors once, before any image
    if not call.images:
        raise invalid("no image in the request")
    requests = []
    for index, image in enumerate(call.images):
        request = pb.DetectRequest()
        request.CopyFrom(base)
        request.frame_id = index
        request.image.encoded = image
        requests.append(request)
    responses = await _run_all(core, requests, deadline, peer)
    return build_outputs(responses, params.max_detections, names)
