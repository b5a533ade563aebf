"""The Ray Serve deployment's class: one replica = one detserve request path (admission, decode
pool, batchers, engines), with the methods of detserve.v1.Detector that Ray's gRPC proxy calls
by name.

The replica reuses DetectorService unchanged, so admission (queue bounds, expected-wait refusal,
pixel budget), deadlines inside the server, statuses and messages are those of detserve-server.
What differs is the transport: Ray's proxy does TLS-less gRPC, so the config's TLS, tokens and
rate limits do not apply here (keep the proxy on a private network).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any, cast

from detserve.protos import detection_pb2 as pb
from detserve.server.admission import PixelBudget
from detserve.server.config import ServerConfig
from detserve.server.decode_pool import DecodePool
from detserve.server.detect import DetectCore, RequestRecord
from detserve.server.lanes import LocalLane
from detserve.server.logs import configure_logging
from detserve.server.observe import RequestObserver, build_observer
from detserve.server.rayserve.context import AbortedCall, RayContext, ReplicaContext
from detserve.server.registry import ModelRegistry, default_engine_factory
from detserve.server.service import Context, DetectorService
from detserve.server.stream_slots import StreamSlots
from detserve.server.streams import StreamSettings
from detserve.server.threadnames import naming_engines


def _replica_id() -> str:
    from ray import serve

    return str(serve.get_replica_context().replica_id.unique_id)


class DetectorReplica:
    """Ray Serve calls `__init__` (async: the models load and warm up before the replica takes
    requests), the RPC-named methods per call, `check_health` periodically and `__del__` on a
    graceful stop."""

    # Ray awaits an async constructor (its replica startup); Python's type rules do not know it.
    async def __init__(  # type: ignore[misc]
        self, config: ServerConfig, request_timeout_s: float | None
    ) -> None:
        # One /metrics per host cannot be shared by replicas; Ray exports its own per replica.
        config = replace(config, metrics_port=None, rest_port=None)
        configure_logging(config.log_level)
        self.config = config
        self.timeout_s = request_timeout_s
        self.replica = _replica_id()
        self.registry = await ModelRegistry.start(config, naming_engines(default_engine_factory))
        self.faulted: list[str] = []  # models whose batcher went out of service
        self.registry.on_fault(lambda key, _exc: self.faulted.append(key))
        self.observer: RequestObserver = build_observer(config)
        self.service = self._service(config)

    def _service(self, config: ServerConfig) -> DetectorService:
        def record(rec: RequestRecord) -> None:
            self.observer.request(rec, self.registry)

        lane = LocalLane(self.registry, PixelBudget(config.max_pixels_in_flight))
        core = DetectCore(self.registry, lane, config.max_pixels, record,
                          DecodePool(config.decode_thread_count),
                          reduced_decode=config.jpeg_reduced_decode)
        streams = StreamSettings(config.stream_policy, config.stream_max_in_flight,
                                 self.observer.stream_drop,
                                 slots=StreamSlots(config.stream_max_frames_held))
        return DetectorService(self.registry, core, streams)

    def _context(self, grpc_context: RayContext) -> Context:
        return cast(Context, ReplicaContext(grpc_context, self.replica, self.timeout_s))

    async def Detect(self, request: pb.DetectRequest, grpc_context: Any) -> pb.DetectResponse:
        try:
            return await self.service.Detect(request, self._context(grpc_context))
        except AbortedCall:
            return pb.DetectResponse()  # the status is on grpc_context

    async def DetectStream(
        self, request_stream: AsyncIterator[pb.DetectRequest], grpc_context: Any
    ) -> AsyncIterator[pb.DetectResponse]:
        try:
            async for reply in self.service.DetectStream(request_stream,
                                                         self._context(grpc_context)):
                yield reply
        except AbortedCall:
            return

    async def ListModels(self, request: pb.ListModelsRequest,
                         grpc_context: Any) -> pb.ListModelsResponse:
        return await self.service.ListModels(request, cast(Any, self._context(grpc_context)))

    async def GetModelInfo(self, request: pb.GetModelInfoRequest,
                           grpc_context: Any) -> pb.ModelInfo:
        try:
            return await self.service.GetModelInfo(request, cast(Any, self._context(grpc_context)))
        except AbortedCall:
            return pb.ModelInfo()

    def check_health(self) -> None:
        """Ray restarts a replica whose health check raises: one whose engines are gone."""
        if self.faulted:
            raise RuntimeError(f"detserve models out of service: {sorted(set(self.faulted))}")

    async def __del__(self) -> None:
        """Ray's graceful stop: refuse new calls, answer those in flight within drain_grace_s
        (Ray's graceful_shutdown_timeout_s is set to cover it), then stop the batchers."""
        self.service.start_drain()
        await self.service.wait_idle(self.config.drain_grace_s)
        await self.registry.stop(drain=True, timeout_s=self.config.drain_grace_s)
        self.observer.close()
