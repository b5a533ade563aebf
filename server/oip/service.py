"""`inference.GRPCInferenceService`, the Open Inference Protocol over gRPC, on detserve's port.

Calls are counted with detserve.v1's (`DetectorService.admitted`): refused UNAVAILABLE once the
server drains, waited for before it stops. Inference goes through infer.py, so through the same
admission and batchers as Detect. Failures leave with the status errors.py chose; a stream
answers a failed request in-band (`error_message`, its status code name first) and goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

from detserve.protos import inference_pb2 as ip
from detserve.protos import inference_pb2_grpc as ip_grpc
from detserve.server.admission import PUSHBACK_KEY, Rejected
from detserve.server.auth import AUTH_KEY
from detserve.server.catalog import Catalog, ModelView
from detserve.server.detect import DetectCore, deadline_from
from detserve.server.errors import RequestError, invalid
from detserve.server.oip import describe
from detserve.server.oip.grpc_tensors import infer_response, parameters_of, tensors_of
from detserve.server.oip.guard import OipGuard
from detserve.server.oip.infer import InferCall, deadline_of, infer, record_refusal, resolve
from detserve.server.oip.statistics import Statistics
from detserve.server.oip.tensors import binary_output, images_of, marks_final, options_of
from detserve.server.service import DetectorService
from detserve.server.tokens import Grant
from detserve.server.wire import Unparsable

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]


@dataclass
class OipParts:
    """What the protocol's servicers (gRPC here, REST in rest.py) share."""

    catalog: Catalog
    core: DetectCore
    statistics: Statistics
    detector: DetectorService
    guard: OipGuard
    stream_max_in_flight: int = 4


async def _abort(context: Context, exc: RequestError) -> None:
    trailers: tuple[tuple[str, str], ...] = ()
    if isinstance(exc, Rejected) and exc.retry_after_s:
        trailers = ((PUSHBACK_KEY, str(math.ceil(exc.retry_after_s * 1e3))),)
    await context.abort(exc.code, exc.message, trailing_metadata=trailers)


class InferenceService(ip_grpc.GRPCInferenceServiceServicer):
    def __init__(self, parts: OipParts) -> None:
        self.parts = parts

    def _grant(self, context: Context) -> Grant | None:
        if self.parts.guard.security.tokens is None:
            return None
        values = [v for k, v in context.invocation_metadata() or () if k == AUTH_KEY]
        value = values[0] if values else None
        return self.parts.guard.grant(value.decode() if isinstance(value, bytes) else value)

    def _model(self, context: Context, name: str, version: str) -> ModelView:
        """The named model, within the caller's token scope; RequestError otherwise."""
        model = resolve(self.parts.catalog, name, version)
        self.parts.guard.check_scope(self._grant(context), model, name)
        return model

    async def ServerLive(self, request: ip.ServerLiveRequest,
                         context: Context) -> ip.ServerLiveResponse:
        return ip.ServerLiveResponse(live=True)

    async def ServerReady(self, request: ip.ServerReadyRequest,
                          context: Context) -> ip.ServerReadyResponse:
        return ip.ServerReadyResponse(ready=not self.parts.detector.draining)

    async def ModelReady(self, request: ip.ModelReadyRequest,
                         context: Context) -> ip.ModelReadyResponse:
        try:
            self._model(context, request.name, request.version)
        except Rejected as exc:
            await _abort(context, exc)
        except RequestError:  # an unknown model or version is simply not ready
            return ip.ModelReadyResponse(ready=False)
        return ip.ModelReadyResponse(ready=not self.parts.detector.draining)

    async def ServerMetadata(self, request: ip.ServerMetadataRequest,
                             context: Context) -> ip.ServerMetadataResponse:
        return describe.server_metadata()

    async def ModelMetadata(self, request: ip.ModelMetadataRequest,
                            context: Context) -> ip.ModelMetadataResponse:
        try:
            model = self._model(context, request.name, request.version)
        except RequestError as exc:
            await _abort(context, exc)
            raise
        return describe.model_metadata(request.name, model)

    async def ModelConfig(self, request: ip.ModelConfigRequest,
                          context: Context) -> ip.ModelConfigResponse:
        try:
            model = self._model(context, request.name, request.version)
        except RequestError as exc:
            await _abort(context, exc)
            raise
        return ip.ModelConfigResponse(config=describe.model_config(request.name, model))

    async def ModelStatistics(self, request: ip.ModelStatisticsRequest,
                              context: Context) -> ip.ModelStatisticsResponse:
        try:
            if request.name:
                model = self._model(context, request.name, request.version)
                pairs = [(request.name, model)]
            else:
                grant = self._grant(context)
                pairs = [(m.key, m) for m in self.parts.catalog.models.values()
                         if grant is None or grant.allows(m.key, m.name)]
        except RequestError as exc:
            await _abort(context, exc)
            raise
        stats = self.parts.statistics
        return ip.ModelStatisticsResponse(model_stats=[
            describe.model_statistics(name, m, stats.of(m.key)) for name, m in pairs])

    async def _infer(self, request: ip.ModelInferRequest, context: Context,
                     deadline: float | None) -> ip.ModelInferResponse:
        """One inference; RequestError with the caller's status."""
        parts = self.parts
        label = request.model_name
        try:
            grant = self._grant(context)
            model = resolve(parts.catalog, request.model_name, request.model_version)
            label = model.key
            parts.guard.check_scope(grant, model, request.model_name)
            parts.guard.take(grant, context.peer(), model)
            params = parameters_of(request.parameters, "request")
            options = options_of(params)
            images = images_of(tensors_of(request), model.config.batching.max_batch_size)
            outputs = [o.name for o in request.outputs]
            raw = binary_output(params, default=True) and not _typed_outputs(request)
            call = InferCall(model, request.id, images, options, outputs)
            tensors = await infer(parts.core, call, deadline_of(deadline, options),
                                  context.peer())
        except RequestError as exc:
            record_refusal(parts.core, exc, request.id, label, context.peer())
            raise
        response = infer_response(request, model, tensors, raw)
        if marks_final(params):
            response.parameters["triton_final_response"].bool_param = True
        return response

    async def ModelInfer(self, request: ip.ModelInferRequest,
                         context: Context) -> ip.ModelInferResponse:
        async with self.parts.detector.admitted(context):
            try:
                return await self._infer(request, context, deadline_from(context))
            except RequestError as exc:
                await _abort(context, exc)
                raise

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[ip.ModelInferRequest
                                                                     | Unparsable],
                               context: Context) -> AsyncIterator[ip.ModelStreamInferResponse]:
        async with self.parts.detector.admitted(context):
            async for reply in self._stream(request_iterator, context):
                yield reply

    async def _answer(self, request: ip.ModelInferRequest | Unparsable, context: Context,
                      deadline: float | None) -> ip.ModelStreamInferResponse:
        try:
            if isinstance(request, Unparsable):
                raise request.refusal()
            response = await self._infer(request, context, deadline)
        except RequestError as exc:
            message = f"{exc.code.name}: {exc.message}"
            if not isinstance(request, Unparsable) and request.id:
                message = f"[request id: {request.id}] {message}"
            return ip.ModelStreamInferResponse(error_message=message)
        return ip.ModelStreamInferResponse(infer_response=response)

    async def _stream(self, requests: AsyncIterator[ip.ModelInferRequest | Unparsable],
                      context: Context
                      ) -> AsyncIterator[ip.ModelStreamInferResponse]:
        """Up to stream_max_in_flight requests run at once; replies leave in request order."""
        deadline = deadline_from(context)
        slots = asyncio.Semaphore(self.parts.stream_max_in_flight)
        order: asyncio.Queue[asyncio.Task[ip.ModelStreamInferResponse] | None] = asyncio.Queue()
        stopping = self.parts.detector.streams.stopping

        async def reader() -> None:
            try:
                while not stopping.is_set():
                    await slots.acquire()  # no free slot: stop reading (flow control)
                    request = await anext(requests, None)
                    if request is None:
                        return
                    order.put_nowait(asyncio.create_task(
                        self._answer(request, context, deadline)))
            finally:
                order.put_nowait(None)

        reading = asyncio.create_task(reader())
        try:
            while (task := await order.get()) is not None:
                yield await task
                slots.release()
            await reading  # re-raises a failed read (the call then ends with its status)
        finally:
            reading.cancel()
            while not order.empty():
                leftover = order.get_nowait()
                if leftover is not None:
                    leftover.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reading


def _typed_outputs(request: ip.ModelInferRequest) -> bool:
    """Every requested output asks for typed contents (binary_data false): no raw replies."""
    flags = []
    for output in request.outputs:
        value = parameters_of(output.parameters, f"output {output.name}").get("binary_data")
        if value is not None and not isinstance(value, bool):
            raise invalid(f"output {output.name} parameter binary_data must be true or false")
        flags.append(value is False)
    return bool(flags) and all(flags)
