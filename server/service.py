"""The `detserve.v1.Detector` servicer: Detect, DetectStream (see streams.py), ListModels,
GetModelInfo. Failures leave through `context.abort` with the status that `errors.py` chose; a
fault outside the request path (a bug here) leaves as INTERNAL "internal error, request id X",
its detail in the `rpc_failed` log line, never as gRPC's UNKNOWN with the exception's text.
Requests arrive parsed by wire.py: bytes that do not parse are refused as INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc

from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.admission import PUSHBACK_KEY, Rejected
from detserve.server.calls import Calls
from detserve.server.cameras import camera_id
from detserve.server.catalog import Catalog, ModelView
from detserve.server.detect import DetectCore, check_model_name, deadline_from, new_request_id
from detserve.server.errors import RequestError, fault_detail, internal_error
from detserve.server.logs import get_logger
from detserve.server.streams import StreamSettings, run_stream
from detserve.server.wire import Incoming, Unparsable

Context: TypeAlias = grpc.aio.ServicerContext[pb.DetectRequest, pb.DetectResponse]


def _text(value: Any) -> str:
    """Metadata values as strings: text as is, anything else as JSON (nested metrics stay
    machine-readable)."""
    return value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)


def model_info(model: ModelView) -> pb.ModelInfo:
    m = model.manifest
    pre = m.preprocess
    batching = model.config.batching
    return pb.ModelInfo(
        name=model.key,
        version=m.version,
        classes=list(m.classes),
        input_width=m.input_width,
        input_height=m.input_height,
        preprocessing=pb.Preprocessing(
            color_order=pre.color_order,
            resize=pre.resize,
            pad_value=pre.pad_value,
            scale=pre.scale,
            mean=list(pre.mean),
            std=list(pre.std),
        ),
        output_format=m.output_format,
        precision=m.precision,
        engine=model.engine_kind,
        score_threshold=m.postprocess.score_threshold,
        iou_threshold=m.postprocess.iou_threshold,
        max_detections=m.postprocess.max_detections,
        batching=pb.BatchingSettings(
            max_batch_size=batching.max_batch_size,
            max_queue_delay_ms=batching.max_queue_delay_s * 1e3,
            preferred_batch_sizes=list(batching.preferred_batch_sizes),
            max_queue_size=batching.max_queue_size,
            instances=batching.instances,
            max_queue_wait_ms=(batching.max_queue_wait_s or 0.0) * 1e3,
        ),
        is_default=model.is_default,
        nms=m.nms,
        multi_label=m.postprocess.multi_label,
        metadata={str(k): _text(v) for k, v in m.metadata.items()},
    )


class DetectorService(pb_grpc.DetectorServicer):
    def __init__(
        self, registry: Catalog, core: DetectCore, streams: StreamSettings
    ) -> None:
        self.registry = registry
        self.core = core
        self.streams = streams
        self.draining = False
        self.calls = Calls()  # Detect calls and streams in progress (and the other servicers')

    @property
    def active_calls(self) -> int:
        """Detect calls and streams in progress."""
        return self.calls.active

    def start_drain(self) -> None:
        """Refuse new calls; open streams stop reading and end after their pending frames."""
        self.draining = True
        self.streams.stopping.set()

    async def wait_idle(self, timeout_s: float | None) -> bool:
        """Wait until no call is in progress; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self.calls.idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def admitted(self, context: grpc.aio.ServicerContext[Any, Any]
                 ) -> contextlib.AbstractAsyncContextManager[None]:
        """A call of another servicer on this server (the Open Inference Protocol's, server/oip)
        counted as this one's: refused while draining, waited for by `wait_idle`."""
        return self._admitted(context)

    @contextlib.asynccontextmanager
    async def _admitted(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        self.calls.enter()
        try:
            if self.draining:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "server is shutting down (draining)"
                )
            yield
        finally:
            self.calls.leave()

    async def Detect(self, request: Incoming, context: Context) -> pb.DetectResponse:
        async with self._admitted(context):
            try:
                return await self.core.detect(request, deadline_from(context),
                                              peer=context.peer(), camera=camera_id(context))
            except RequestError as exc:
                # The status without abort's exception round trip: refusals under overload
                # are the hot path, and this halves what one costs the event loop.
                _set_status(context, exc)
                return pb.DetectResponse()
            except asyncio.CancelledError:
                reason = self.calls.ended_by_cut()
                if reason is None:
                    raise
                _set_status(context, RequestError(grpc.StatusCode.UNAVAILABLE, reason))
                return pb.DetectResponse()
            except Exception as exc:
                _set_status(context, _fault("Detect", request.request_id, exc))
                return pb.DetectResponse()

    async def DetectStream(
        self, request_iterator: AsyncIterator[Incoming], context: Context
    ) -> AsyncIterator[pb.DetectResponse]:
        async with self._admitted(context):
            replies = run_stream(request_iterator, context, self.core, self.streams)
            try:
                async with contextlib.aclosing(replies):
                    async for response in replies:
                        yield response
            except grpc.aio.AbortError:
                raise
            except asyncio.CancelledError:
                reason = self.calls.ended_by_cut()
                if reason is None:
                    raise
                await context.abort(grpc.StatusCode.UNAVAILABLE, reason)
            except Exception as exc:
                error = _fault("DetectStream", "", exc)
                with contextlib.suppress(grpc.aio.UsageError):  # the call had ended already
                    await context.abort(error.code, error.message)

    async def ListModels(
        self,
        request: pb.ListModelsRequest | Unparsable,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse:
        if isinstance(request, Unparsable):
            await _abort(context, request.refusal())
        return pb.ListModelsResponse(
            models=[model_info(m) for m in self.registry.models.values()],
            default_model=self.registry.default.key,
        )

    async def GetModelInfo(
        self,
        request: pb.GetModelInfoRequest | Unparsable,
        context: grpc.aio.ServicerContext[pb.GetModelInfoRequest, pb.ModelInfo],
    ) -> pb.ModelInfo:
        try:
            if isinstance(request, Unparsable):
                raise request.refusal()
            return model_info(self.registry.resolve(check_model_name(request.model)))
        except RequestError as exc:
            await _abort(context, exc)
            raise


def _set_status(context: Context, exc: RequestError) -> None:
    context.set_code(exc.code)
    context.set_details(exc.message)
    if isinstance(exc, Rejected) and exc.retry_after_s:
        ms = str(math.ceil(exc.retry_after_s * 1e3))
        context.set_trailing_metadata(((PUSHBACK_KEY, ms),))


async def _abort(context: grpc.aio.ServicerContext[Any, Any], exc: RequestError) -> None:
    await context.abort(exc.code, exc.message)


def _fault(rpc: str, request_id: str, exc: Exception) -> RequestError:
    """A fault outside the request path: logged with its detail; the caller gets the id."""
    rid = request_id[:64] or new_request_id()
    get_logger().error("rpc_failed", rpc=rpc, request_id=rid, error=fault_detail(exc))
    return internal_error(rid, fault_detail(exc))
