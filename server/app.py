"""The gRPC server: Detector service, health checking, reflection, metrics, graceful drain.

`start_server(config)` returns a running `Server` (tests use it on 127.0.0.1:0);
`serve(config)` runs until SIGTERM/SIGINT, then drains: health goes NOT_SERVING, new requests are
refused with UNAVAILABLE, requests in flight are answered (up to `drain_grace_s`), the batchers
finish and stop, and the coroutine returns. With `workers` > 1 it runs the supervisor of
server/workers instead: front-end processes on this port, one engine process behind them;
`start_grpc` is the gRPC side both share.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from detserve.protos import detection_pb2 as pb
from detserve.server.admission import PixelBudget
from detserve.server.catalog import Catalog
from detserve.server.collector import freeze_startup_objects
from detserve.server.config import ServerConfig
from detserve.server.connection_age import connection_age_options
from detserve.server.decode_pool import DecodePool
from detserve.server.detect import DetectCore, RequestRecord
from detserve.server.errors import RequestError
from detserve.server.lanes import Lane, LocalLane
from detserve.server.logs import configure_logging, get_logger
from detserve.server.observe import UNKNOWN_MODEL, RequestObserver, build_observer
from detserve.server.oip.attach import OipFrontEnd
from detserve.server.oip.statistics import Statistics
from detserve.server.oip.wire import SERVICE as OIP_SERVICE
from detserve.server.reflection_pool import enable_reflection
from detserve.server.registry import EngineFactory, ModelRegistry, default_engine_factory
from detserve.server.security import EdgeSecurity, load_security
from detserve.server.service import DetectorService
from detserve.server.stream_slots import StreamSlots
from detserve.server.streams import StreamSettings
from detserve.server.threadnames import naming_engines
from detserve.server.wire import add_detector_service

SERVICE_NAME: str = pb.DESCRIPTOR.services_by_name["Detector"].full_name
# After the last detection call ends: time for replies to flush before other calls are cut.
FINAL_GRACE_S = 1.0
# Then no call may have arrived for this long: calls gRPC accepted before the drain but this
# process had not picked up yet get their UNAVAILABLE, not the CANCELLED of gRPC's stop.
QUIET_S = 0.05
HEALTH_SERVICE_NAME: str = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


class ServerStartError(RuntimeError):
    """The server could not bind its address."""


class Server:
    """A running server. `port` is the bound port (useful with port 0). `registry` is what it
    serves (the ModelRegistry in one process); `stop_backend(drain)` stops what holds the
    batchers once the calls are done."""

    def __init__(
        self,
        grpc_server: grpc.aio.Server,
        port: int,
        registry: Catalog,
        service: DetectorService,
        health: HealthServicer,
        observer: RequestObserver,
        core: DetectCore,
        stop_backend: Callable[[bool], Awaitable[None]],
    ) -> None:
        self.core = core
        self.grpc_server = grpc_server
        self.port = port
        self.registry = registry
        self.service = service
        self.health = health
        self.observer = observer
        self._stop_backend = stop_backend
        self._stopped = asyncio.Event()
        self._stopping = False
        self._marking: set[asyncio.Future[None]] = set()  # health updates under way
        self._drain_ends: float | None = None  # time.monotonic() the drain's grace ends
        self.security = EdgeSecurity()  # what start_grpc applied: TLS, tokens, rate limits
        self.oip: OipFrontEnd | None = None  # the Open Inference Protocol (server/oip)

    @property
    def metrics_port(self) -> int | None:
        return self.observer.metrics_port

    def out_of_service(self, model: str, error: BaseException) -> None:
        """A model's batcher died (registry on_fault): health says NOT_SERVING, so probes and
        load balancers stop sending here; the model's requests get UNAVAILABLE."""
        for name in ("", SERVICE_NAME):
            task = asyncio.ensure_future(
                self.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING))
            self._marking.add(task)
            task.add_done_callback(self._marking.discard)

    async def stop(self, grace_s: float | None = 5.0) -> None:
        """Drain and stop: refuse new calls, answer the ones in flight, stop the batchers."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        try:
            self.service.start_drain()
            await self.health.enter_graceful_shutdown()
            # Wait for detection work only: health Watch streams would hold a plain grpc stop
            # for the whole grace period.
            started = time.monotonic()
            self._drain_ends = None if grace_s is None else started + grace_s
            if not await self.service.wait_idle(grace_s):
                self.service.calls.cut(f"server is shutting down: the call was not answered "
                                       f"within the drain's {grace_s:g} s")
            if self.oip is not None:
                await self.oip.stop()  # REST requests in flight finish first
            await self.service.calls.wait_quiet(QUIET_S, FINAL_GRACE_S)
            left = None if grace_s is None else max(grace_s - (time.monotonic() - started), 0.0)
            await self.grpc_server.stop(FINAL_GRACE_S if left is None else min(left, FINAL_GRACE_S))
            await self._stop_backend(True)
        finally:
            await asyncio.to_thread(self.core.decoder.close)
            self.observer.close()
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def backend_bound_s(self) -> float | None:
        """How long the batchers may drain: the rest of the grace, at least FINAL_GRACE_S for
        the batches in the engines (None: no bound)."""
        if self._drain_ends is None:
            return None
        return max(self._drain_ends - time.monotonic(), FINAL_GRACE_S)


async def start_server(
    config: ServerConfig,
    engine_factory: EngineFactory = default_engine_factory,
    on_stream_drop: Callable[[str], None] | None = None,
) -> Server:
    """Load the models, bind `config.address` and start serving."""
    security = load_security(config, get_logger())  # bad TLS/token files fail before loading
    registry = await ModelRegistry.start(config, naming_engines(engine_factory))
    try:
        observer = build_observer(config)
    except OSError as exc:
        await registry.stop(drain=False)
        raise ServerStartError(
            f"could not serve metrics on {config.host}:{config.metrics_port}: {exc}"
        ) from exc
    try:
        return await _start(config, registry, observer, on_stream_drop, security)
    except BaseException:
        observer.close()
        await registry.stop(drain=False)
        raise


async def _start(
    config: ServerConfig,
    registry: ModelRegistry,
    observer: RequestObserver,
    on_stream_drop: Callable[[str], None] | None,
    security: EdgeSecurity,
) -> Server:
    def record(rec: RequestRecord) -> None:
        observer.request(rec, registry)

    lane = LocalLane(registry, PixelBudget(config.max_pixels_in_flight))
    started: list[Server] = []

    def stop_models(drain: bool) -> Awaitable[None]:
        return registry.stop(drain, started[0].backend_bound_s() if started else None)

    running = await start_grpc(config, registry, lane, record, observer, on_stream_drop,
                               stop_models, security=security)
    started.append(running)
    registry.on_fault(running.out_of_service)
    return running


async def start_grpc(
    config: ServerConfig,
    catalog: Catalog,
    lane: Lane,
    record: Callable[[RequestRecord], None],
    observer: RequestObserver,
    on_stream_drop: Callable[[str], None] | None,
    stop_backend: Callable[[bool], Awaitable[None]],
    reuse_port: bool = False,
    security: EdgeSecurity | None = None,
) -> Server:
    """The Detector service, health and reflection on `config.address`, serving `catalog`
    through `lane`. `reuse_port`: share the port with the other front-end processes.
    `security` (TLS, tokens, rate limits) is loaded from `config` when not given."""
    if security is None:
        security = load_security(config, observer.logger)
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.max_message_bytes),
            ("grpc.max_send_message_length", config.max_message_bytes),
            # Without this a second server on a busy port binds too and they split the traffic;
            # front-end workers share theirs on purpose (the supervisor reserved it).
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            *connection_age_options(config),
        ],
        # A backstop in gRPC itself (RESOURCE_EXHAUSTED beyond it); admission decides first.
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        interceptors=security.interceptors(
            catalog, observer.metrics, observer.logger if config.log_requests else None),
    )

    def dropped(model: str) -> None:
        try:
            label = catalog.resolve(model).key
        except RequestError:
            label = UNKNOWN_MODEL
        observer.stream_drop(label)
        if on_stream_drop is not None:
            on_stream_drop(model)

    statistics = Statistics(catalog.models)  # the Open Inference Protocol's ModelStatistics
    core = DetectCore(catalog, lane, config.max_pixels, statistics.observing(record),
                      DecodePool(config.decode_thread_count),
                      reduced_decode=config.jpeg_reduced_decode)
    observer.watch(catalog.models.values())  # the drift alerts' references (server/drift.py)
    streams = StreamSettings(config.stream_policy, config.stream_max_in_flight, dropped,
                             slots=StreamSlots(config.stream_max_frames_held))
    service = DetectorService(catalog, core, streams)
    add_detector_service(service, server)  # wire.py: bytes that do not parse are refused
    oip = OipFrontEnd.build(config, catalog, core, statistics, service, security, observer)
    oip.add_to(server)
    health = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    if config.reflection:
        enable_reflection(server, [pb.DESCRIPTOR.services_by_name["Detector"], OIP_SERVICE,
                                   health_pb2.DESCRIPTOR.services_by_name["Health"]])
    try:
        port = security.bind(server, config.address)
    except RuntimeError as exc:
        raise ServerStartError(
            f"could not bind gRPC address {config.address!r} (port in use?): {exc}"
        ) from exc
    if port == 0:
        raise ServerStartError(f"could not bind gRPC address {config.address!r}")
    try:
        await oip.start_rest(reuse_port)
    except OSError as exc:
        await server.stop(None)
        raise ServerStartError(f"could not bind REST port {config.rest_port} on "
                               f"{config.host}: {exc}") from exc
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = Server(server, port, catalog, service, health, observer, core, stop_backend)
    running.security = security
    running.oip = oip
    return running


def serving_summary(registry: Catalog) -> dict[str, dict[str, str]]:
    """Per served model: the engine, the precision it actually runs at (the engine's manifest:
    an OpenVINO BF16 request on a CPU without BF16 reads fp32 here, with the engine's note), and
    where NMS runs."""
    summary = {}
    for key in sorted(registry.models):
        model = registry.models[key]
        entry = {"engine": model.engine_kind, "precision": model.manifest.precision,
                 "nms": model.manifest.nms}  # fmt: skip
        note = model.manifest.metadata.get("precision_note")
        if note:
            entry["precision_note"] = str(note)
        summary[key] = entry
    return summary


async def serve(
    config: ServerConfig, ready: Callable[[Server], None] | None = None
) -> None:
    """Serve until SIGTERM or SIGINT, then drain and return (the process then exits 0).
    With `workers` > 1 the supervisor of server/workers serves instead (`ready` is not
    called: no Server lives in this process)."""
    configure_logging(config.log_level)
    if config.workers > 1:
        from detserve.server.workers.supervisor import supervise

        await supervise(config)
        return
    server = await start_server(config)
    frozen = freeze_startup_objects()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server.observer.event(
        "listening",
        gc_frozen_objects=frozen,
        address=f"{config.host}:{server.port}",
        metrics_port=server.metrics_port,
        models=sorted(server.registry.models),
        default_model=server.registry.default.key,
        serving=serving_summary(server.registry),
        security=server.security.summary(config),
        oip=server.oip.summary() if server.oip is not None else None,
    )
    if ready is not None:
        ready(server)
    try:
        await stop.wait()
        server.observer.event("draining", grace_s=config.drain_grace_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop(config.drain_grace_s)
    server.observer.event("stopped")
