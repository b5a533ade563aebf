"""The `detserve.v1.Detector` servicer: Detect, DetectStream (see streams.py), ListModels,
GetModelInfo. Failures leave through `context.abort` with the status that `errors.py` chose."""

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
from detserve.server.cameras import camera_id
from detserve.server.catalog import Catalog, ModelView
from detserve.server.detect import DetectCore, deadline_from
from detserve.server.errors import RequestError
from detserve.server.streams import StreamSettings, run_stream

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
        self._active = 0  # Detect calls and streams in progress
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def active_calls(self) -> int:
        """Detect calls and streams in progress."""
        return self._active

    def start_drain(self) -> None:
        """Refuse new calls; open streams stop reading and end after their pending frames."""
        self.draining = True
        self.streams.stopping.set()

    async def wait_idle(self, timeout_s: float | None) -> bool:
        """Wait until no call is in progress; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout_s)
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
        self._active += 1
        self._idle.clear()
        try:
            if self.draining:
                await context.abort(
                    grpc.StatusCode.UNAVAILABLE, "server is shutting down (draining)"
                )
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def Detect(self, request: pb.DetectRequest, context: Context) -> pb.DetectResponse:
        async with self._admitted(context):
            try:
                return await self.core.detect(request, deadline_from(context),
                                              peer=context.peer(), camera=camera_id(context))
            except RequestError as exc:
                # The status without abort's exception round trip: refusals under overload
                # are the hot path, and this halves what one costs the event loop.
                context.set_code(exc.code)
                context.set_details(exc.message)
                if isinstance(exc, Rejected) and exc.retry_after_s:
                    ms = str(math.ceil(exc.retry_after_s * 1e3))
                    context.set_trailing_metadata(((PUSHBACK_KEY, ms),))
                return pb.DetectResponse()

    async def DetectStream(
        self, request_iterator: AsyncIterator[pb.DetectRequest], context: Context
    ) -> AsyncIterator[pb.DetectResponse]:
        async with self._admitted(context):
            async for response in run_stream(request_iterator, context, self.core, self.streams):
                yield response

    async def ListModels(
        self,
        request: pb.ListModelsRequest,
        context: grpc.aio.ServicerContext[pb.ListModelsRequest, pb.ListModelsResponse],
    ) -> pb.ListModelsResponse:
        return pb.ListModelsResponse(
            models=[model_info(m) for m in self.registry.models.values()],
            default_model=self.registry.default.key,
        )

    async def GetModelInfo(
        self,
        request: pb.GetModelInfoRequest,
        context: grpc.aio.ServicerContext[pb.GetModelInfoRequest, pb.ModelInfo],
    ) -> pb.ModelInfo:
        try:
            return model_info(self.registry.resolve(request.model))
        except RequestError as exc:
            await context.abort(exc.code, exc.message)
            raise
