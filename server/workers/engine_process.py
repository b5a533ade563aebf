"""The engine process: the ModelRegistry (engines, batchers, admission, pixel budget) of the
whole server, and the shared-memory slots of every front end, behind a Unix socket.

It tells the supervisor "ready" once the models are loaded and warmed up and the socket
listens. Told to stop (by the supervisor, once the front ends have drained), it stops taking
connections, lets the batchers finish what they hold and removes the shared memory. It ignores
SIGTERM and SIGINT: a signal sent to the whole process group (systemd, a terminal's Ctrl-C)
must not stop it while the front ends still answer the calls in flight. If the supervisor is
gone, it stops once its front ends have disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection

from detserve.engines.manifest import ManifestError
from detserve.server.admission import PixelBudget
from detserve.server.catalog import ModelEntry
from detserve.server.collector import freeze_startup_objects
from detserve.server.config import ConfigError, ServerConfig
from detserve.server.lanes import LocalLane
from detserve.server.logs import configure_logging, get_logger
from detserve.server.observe import RequestObserver
from detserve.server.registry import EngineFactory, ModelRegistry
from detserve.server.threadnames import ENGINE, name_os_thread, naming_engines
from detserve.server.workers import children
from detserve.server.workers.engine_hub import EngineHub
from detserve.server.workers.mp_metrics import WorkerMetrics
from detserve.server.workers.slots import Segment, SlotLayout, check_room, layout_for

ORPHAN_WAIT_S = 60.0  # without a supervisor: how long the front ends may take to drain


@dataclass(frozen=True)
class EngineSpec:
    config: ServerConfig  # shares.engine_config of the server's
    workers: int
    socket_path: str
    frontend_decode_threads: int


@dataclass(frozen=True)
class EngineReady:
    """What the supervisor learns once the engine process serves."""

    entries: list[ModelEntry]
    segments: list[str]  # shared memory names, one per front end
    layout: SlotLayout


class EngineHost:
    def __init__(self, registry: ModelRegistry, hub: EngineHub, server: asyncio.Server,
                 segments: list[Segment]) -> None:
        self.registry = registry
        self.hub = hub
        self.server = server
        self.segments = segments

    @classmethod
    async def start(cls, spec: EngineSpec, factory: EngineFactory) -> EngineHost:
        config = spec.config
        registry = await ModelRegistry.start(config, naming_engines(factory))
        segments: list[Segment] = []
        try:
            layout = layout_for(list(registry.models.values()), spec.frontend_decode_threads)
            check_room(layout, spec.workers)
            segments = [Segment.create(layout) for _ in range(spec.workers)]
            lane = LocalLane(registry, PixelBudget(config.max_pixels_in_flight))
            hub = EngineHub(registry, lane, segments, layout, RequestObserver(config),
                            WorkerMetrics())
            server = await asyncio.get_running_loop().create_unix_server(
                hub.new_stream, path=spec.socket_path)
        except BaseException:
            _remove(segments)
            await registry.stop(drain=False)
            raise
        return cls(registry, hub, server, segments)

    def ready(self) -> EngineReady:
        return EngineReady([ModelEntry.of(m) for m in self.registry.models.values()],
                           [s.name for s in self.segments], self.hub.layout)

    async def stop(self) -> None:
        """After the front ends: no new connections, the batchers finish, slots removed."""
        self.hub.stopping = True
        self.server.close()
        try:
            await self.registry.stop(drain=True)
        finally:
            self.hub.close_all()
            _remove(self.segments)


def _remove(segments: list[Segment]) -> None:
    for segment in segments:
        segment.close()
        segment.unlink()


async def _main(spec: EngineSpec, factory: EngineFactory, conn: Connection) -> int:
    try:
        host = await EngineHost.start(spec, factory)
    except (ConfigError, ManifestError) as exc:
        conn.send(("failed", "config", str(exc)))
        return 2
    except OSError as exc:
        conn.send(("failed", "start", str(exc)))
        return 1
    except Exception as exc:  # a bug: say so on the pipe, with the traceback in the log
        get_logger().exception("engine_start_failed")
        conn.send(("failed", "start", f"the engine process failed to start: {exc!r}"))
        return 1
    freeze_startup_objects()
    conn.send(("ready", host.ready()))
    # A batcher out of service (a worker died) ends this process: the front ends then report
    # NOT_SERVING and the supervisor stops the server (exit 1), as for an engine process lost.
    faulted = asyncio.Event()
    host.registry.on_fault(lambda key, exc: faulted.set())
    told = asyncio.ensure_future(children.told_to_stop(conn))
    fault = asyncio.ensure_future(faulted.wait())
    await asyncio.wait((told, fault), return_when=asyncio.FIRST_COMPLETED)
    fault.cancel()
    if not told.done():
        told.cancel()
        await host.stop()
        return 1
    if not told.result():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(host.hub.idle.wait(), ORPHAN_WAIT_S)
    await host.stop()
    return 0


def run_engine(spec: EngineSpec, factory: EngineFactory, conn: Connection) -> None:
    """The process's target (multiprocessing, spawn)."""
    name_os_thread(ENGINE)
    for sig in (signal.SIGINT, signal.SIGTERM):  # the supervisor says when (see above)
        signal.signal(sig, signal.SIG_IGN)
    configure_logging(spec.config.log_level)
    sys.exit(asyncio.run(_main(spec, factory, conn)))
