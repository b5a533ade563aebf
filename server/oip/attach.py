"""Adds the Open Inference Protocol to a detserve server: the gRPC servicer on its port and,
with `rest_port` set, the REST endpoint on its event loop (app.start_grpc calls this)."""

from __future__ import annotations

from typing import Any

import grpc

from detserve.protos import inference_pb2 as ip
from detserve.server.catalog import Catalog
from detserve.server.config import ServerConfig
from detserve.server.detect import DetectCore
from detserve.server.observe import RequestObserver
from detserve.server.oip.guard import OipGuard
from detserve.server.oip.rest import RestEndpoint
from detserve.server.oip.service import InferenceService, OipParts
from detserve.server.oip.statistics import Statistics
from detserve.server.oip.wire import add_inference_service
from detserve.server.security import EdgeSecurity
from detserve.server.service import DetectorService

SERVICE_NAME: str = ip.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name


class OipFrontEnd:
    """The protocol's servicers on one server; `rest_port` is the bound REST port, if any."""

    def __init__(self, parts: OipParts, config: ServerConfig) -> None:
        self.parts = parts
        self.config = config
        self.service = InferenceService(parts)
        self.rest: RestEndpoint | None = None

    @property
    def rest_port(self) -> int | None:
        return None if self.rest is None else self.rest.port

    @classmethod
    def build(cls, config: ServerConfig, catalog: Catalog, core: DetectCore,
              statistics: Statistics, detector: DetectorService, security: EdgeSecurity,
              observer: RequestObserver) -> OipFrontEnd:
        logger = observer.logger if config.log_requests else None
        guard = OipGuard(security, observer.metrics, logger)
        parts = OipParts(catalog, core, statistics, detector, guard, config.stream_max_in_flight)
        return cls(parts, config)

    def add_to(self, server: grpc.aio.Server) -> None:
        add_inference_service(self.service, server)

    async def start_rest(self, reuse_port: bool = False) -> int | None:
        """Bind the REST port when the config has one; OSError when it cannot. `reuse_port`:
        shared with the other front-end processes, as their gRPC port is."""
        if self.config.rest_port is None:
            return None
        self.rest = RestEndpoint(self.parts, self.config)
        return await self.rest.start(self.config.rest_port, reuse_port)

    async def stop(self) -> None:
        if self.rest is not None:
            await self.rest.stop()

    def summary(self) -> dict[str, Any]:
        return {"grpc": SERVICE_NAME, "rest_port": self.rest_port}
