"""A front-end process: the Detector servicer, health and reflection on the shared port.

It parses and validates each request, reads its header, asks the engine process to admit it,
decodes and letterboxes it into its slot (or, where the model's engine decodes JPEGs on its
device, copies the JPEG there still encoded), and builds the reply: detect.py's path, with a
`RemoteLane` in place of the local one. Health says SERVING only while the engine process is
connected; once that connection is lost it says NOT_SERVING and every call gets UNAVAILABLE
(the supervisor then stops the server). Told to stop by the supervisor, sent SIGTERM, or
left without a supervisor (its pipe closed), it drains as one process drains: new calls are
refused, calls in flight are answered within drain_grace_s.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from dataclasses import dataclass
from multiprocessing.connection import Connection

from grpc_health.v1 import health_pb2

from detserve.server.app import SERVICE_NAME, Server, ServerStartError, start_grpc
from detserve.server.catalog import ModelList
from detserve.server.collector import freeze_startup_objects
from detserve.server.config import ServerConfig
from detserve.server.detect import RequestRecord
from detserve.server.logs import configure_logging, get_logger
from detserve.server.observe import RequestObserver
from detserve.server.threadnames import name_os_thread
from detserve.server.workers import children
from detserve.server.workers.remote_lane import EngineLink, RemoteLane
from detserve.server.workers.slots import Segment


@dataclass(frozen=True)
class FrontendSpec:
    index: int
    config: ServerConfig  # shares.frontend_config: the reserved port, this front end's shares
    socket_path: str


async def start_frontend(spec: FrontendSpec) -> Server:
    """Connect to the engine process, then serve on the shared port."""
    link, welcome = await EngineLink.connect(spec.socket_path, spec.index, os.getpid())
    segment = Segment.attach(welcome.segment, welcome.layout)
    catalog = ModelList(welcome.entries)
    lane = RemoteLane(link, segment, welcome.jpeg_models)
    observer = RequestObserver(spec.config)

    def record(rec: RequestRecord) -> None:
        observer.finished(rec, rec.model in catalog.models)

    try:
        server = await start_grpc(spec.config, catalog, lane, record, observer, None,
                                  lane.close, reuse_port=True)
    except BaseException:
        await lane.close()
        raise

    marking: set[asyncio.Task[None]] = set()

    def lost() -> None:
        if not server.service.draining:
            observer.event("engine_lost", worker=spec.index)
        task = asyncio.ensure_future(_not_serving(server))
        marking.add(task)
        task.add_done_callback(marking.discard)

    link.on_lost(lost)
    if link.lost:
        lost()
    return server


async def _not_serving(server: Server) -> None:
    for name in ("", SERVICE_NAME):
        await server.health.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)


async def _main(spec: FrontendSpec, conn: Connection) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)

    async def supervisor_says() -> None:
        await children.told_to_stop(conn)
        stop.set()

    try:
        server = await start_frontend(spec)
    except ServerStartError as exc:
        conn.send(("failed", "start", str(exc)))
        return 1
    except (OSError, TimeoutError) as exc:
        conn.send(("failed", "start", f"front end {spec.index} could not reach the engine "
                                      f"process: {exc!r}"))
        return 1
    except Exception as exc:  # a bug: say so on the pipe, with the traceback in the log
        get_logger().exception("worker_start_failed", worker=spec.index)
        conn.send(("failed", "start", f"front end {spec.index} failed to start: {exc!r}"))
        return 1
    freeze_startup_objects()
    conn.send(("ready", os.getpid()))
    listening = asyncio.create_task(supervisor_says())
    await stop.wait()
    listening.cancel()
    get_logger().info("worker_draining", worker=spec.index)
    await server.stop(spec.config.drain_grace_s)
    return 0


def run_frontend(spec: FrontendSpec, conn: Connection) -> None:
    """The process's target (multiprocessing, spawn)."""
    name_os_thread(f"ds-frontend-{spec.index}")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor handles the group's Ctrl-C
    configure_logging(spec.config.log_level)
    sys.exit(asyncio.run(_main(spec, conn)))
