"""The supervisor: with `workers: N` > 1 the process `detserve-server` starts runs no servicer
itself. It reserves the port, starts the engine process and waits until its models are warmed
up, then starts N front ends on the port and serves the one /metrics. It restarts a front end
that dies (with backoff); if the engine process dies it stops the front ends and exits 1.
On SIGTERM or SIGINT it drains every process: the front ends first (each refuses new calls and
answers those in flight within drain_grace_s), then the engine process (its batchers finish),
and it returns, so the server exits 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from detserve.server.app import FINAL_GRACE_S, ServerStartError, serving_summary
from detserve.server.catalog import ModelList
from detserve.server.config import ConfigError, ServerConfig
from detserve.server.logs import get_logger
from detserve.server.registry import EngineFactory, default_engine_factory
from detserve.server.workers import children, shares
from detserve.server.workers.children import Child, ChildExited
from detserve.server.workers.engine_process import EngineReady, EngineSpec, run_engine
from detserve.server.workers.frontend import FrontendSpec, run_frontend
from detserve.server.workers.mp_metrics import SupervisorMetrics, prepare_dir
from detserve.server.workers.slots import remove_segment

ENGINE_STOP_S = 60.0  # the batchers finish what they hold; nothing new reaches them by then
RESTART_BACKOFF_S = (0.1, 5.0)  # first and longest wait before restarting a dead front end
STABLE_S = 10.0  # a front end that served this long before it died restarts at once


class EngineProcessDied(ServerStartError):
    """The engine process ended while the server served; the front ends were stopped."""


@dataclass
class WorkersInfo:
    """What a caller embedding the supervisor (tests) learns once every process serves."""

    port: int
    metrics_port: int | None
    engine_pid: int | None
    frontend_pids: dict[int, int | None] = field(default_factory=dict)


class _Supervisor:
    def __init__(self, config: ServerConfig, factory: EngineFactory, workdir: Path) -> None:
        self.config = config
        self.factory = factory
        self.workdir = workdir
        self.log = get_logger("detserve.server.workers")
        self.metrics_dir = workdir / "metrics"
        prepare_dir(self.metrics_dir)  # before any child imports prometheus_client
        self.metrics = SupervisorMetrics(self.metrics_dir)
        self.stop = asyncio.Event()
        self.stopping = False
        self.failure: str | None = None
        self.engine: Child | None = None
        self.ready_info: EngineReady | None = None
        self.frontends: dict[int, Child] = {}
        self.started_at: dict[int, float] = {}
        self.backoff_s: dict[int, float] = {}
        self.restarts: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- starting ------------------------------------------------------------------------

    async def start(self, ready: Callable[[WorkersInfo], None] | None) -> None:
        spec = EngineSpec(shares.engine_config(self.config), self.config.workers,
                          str(self.workdir / "engine.sock"),
                          shares.frontend_decode_threads(self.config))
        self.engine = children.spawn("engine", run_engine, spec, self.factory)
        self.ready_info = _expect_ready(await children.first_message(self.engine))
        self.engine.ready = True
        self._watch(self.engine)
        await asyncio.gather(*(self._start_frontend(i) for i in range(self.config.workers)))
        metrics_port = None
        if self.config.metrics_port is not None:
            try:
                metrics_port = self.metrics.start_http(self.config.metrics_port, self.config.host)
            except OSError as exc:
                raise ServerStartError(f"could not serve metrics on {self.config.host}:"
                                       f"{self.config.metrics_port}: {exc}") from exc
        info = WorkersInfo(self.port, metrics_port, self.engine.pid,
                           {i: c.pid for i, c in self.frontends.items()})
        catalog = ModelList(self.ready_info.entries)
        self.log.info("listening", address=f"{self.config.host}:{self.port}",
                      metrics_port=metrics_port, models=sorted(catalog.models),
                      default_model=catalog.default.key, serving=serving_summary(catalog),
                      workers=self.config.workers, engine_pid=info.engine_pid,
                      worker_pids=[info.frontend_pids[i] for i in sorted(info.frontend_pids)])
        if ready is not None:
            ready(info)

    def _frontend_spec(self, index: int) -> FrontendSpec:
        return FrontendSpec(index, shares.frontend_config(self.config, self.port),
                            str(self.workdir / "engine.sock"))

    async def _start_frontend(self, index: int) -> None:
        child = children.spawn(f"worker {index}", run_frontend, self._frontend_spec(index))
        self.frontends[index] = child
        self.started_at[index] = time.monotonic()
        _expect_ready(await children.first_message(child))
        child.ready = True
        self._watch(child)

    # -- watching ------------------------------------------------------------------------

    def _watch(self, child: Child) -> None:
        loop = asyncio.get_running_loop()

        def ended() -> None:
            loop.remove_reader(child.process.sentinel)
            child.process.join()
            child.conn.close()
            if not self.stopping:
                self._died(child)

        loop.add_reader(child.process.sentinel, ended)

    def _died(self, child: Child) -> None:
        code = child.process.exitcode
        if child is self.engine:
            self.failure = (f"the engine process (pid {child.pid}) exited with code {code}; "
                            f"the front ends were stopped")
            self.log.error("engine_died", pid=child.pid, exitcode=code)
            self.stop.set()
            return
        index = next(i for i, c in self.frontends.items() if c is child)
        self.log.warning("worker_died", worker=index, pid=child.pid, exitcode=code)
        task = asyncio.create_task(self._restart(index))
        self.restarts.add(task)
        task.add_done_callback(self.restarts.discard)

    async def _restart(self, index: int) -> None:
        """Start front end `index` again; a crash loop backs off, up to RESTART_BACKOFF_S[1]."""
        first, longest = RESTART_BACKOFF_S
        while not self.stopping:
            served = time.monotonic() - self.started_at.get(index, 0.0)
            wait = first if served > STABLE_S else min(self.backoff_s.get(index, 0.0) * 2 or
                                                       first, longest)
            self.backoff_s[index] = wait
            await asyncio.sleep(wait)  # a backoff, not a synchronisation
            if self.stopping:
                return
            self.metrics.restarted()
            try:
                await self._start_frontend(index)
            except (ChildExited, ServerStartError) as exc:
                self.log.warning("worker_restart_failed", worker=index, error=str(exc))
                continue
            self.log.info("worker_restarted", worker=index, pid=self.frontends[index].pid)
            return

    # -- stopping ------------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Front ends drain first, then the engine process; each stopped once."""
        self.stopping = True
        for task in list(self.restarts):
            task.cancel()
        grace = self.config.drain_grace_s + FINAL_GRACE_S + 5.0
        codes = await asyncio.gather(*(children.stop(c, grace)
                                       for c in self.frontends.values()))
        for index, code in zip(self.frontends, codes, strict=True):
            if code not in (0, None):
                self.log.warning("worker_exit", worker=index, exitcode=code)
        if self.engine is not None:
            was_ready = self.engine.ready
            code = await children.stop(self.engine, ENGINE_STOP_S)
            if code not in (0, None) and self.failure is None and was_ready:
                self.log.warning("engine_exit", exitcode=code)
        for name in self.ready_info.segments if self.ready_info is not None else ():
            remove_segment(name)  # the engine process removes them; this is for one that died
        self.metrics.stop_http()


def _expect_ready(message: tuple[Any, ...]) -> Any:
    """The payload of a child's "ready", or the error its "failed" names."""
    kind = message[0]
    if kind == "ready":
        return message[1]
    _, what, text = message
    if what == "config":
        raise ConfigError(text)
    raise ServerStartError(text)


async def supervise(config: ServerConfig, engine_factory: EngineFactory = default_engine_factory,
                    ready: Callable[[WorkersInfo], None] | None = None) -> None:
    """Serve `config` with `config.workers` front-end processes until SIGTERM/SIGINT, then
    drain every process and return. ConfigError / ServerStartError as one process raises them;
    EngineProcessDied if the engine process ends while serving."""
    workdir = Path(tempfile.mkdtemp(prefix="detserve-workers-"))
    loop = asyncio.get_running_loop()
    try:
        sup = _Supervisor(config, engine_factory, workdir)
        try:
            keep, sup.port = children.reserve_port(config.host, config.port)
        except OSError as exc:
            raise ServerStartError(f"could not bind gRPC address {config.address!r} (port in "
                                   f"use?): {exc}") from exc
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sup.stop.set)
        try:
            await _serve(sup, ready)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await sup.shutdown()
            keep.close()
            sup.log.info("stopped")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if sup.failure is not None:
        raise EngineProcessDied(sup.failure)


async def _serve(sup: _Supervisor, ready: Callable[[WorkersInfo], None] | None) -> None:
    """Start, unless a signal comes first; then serve until one does (or the engine dies)."""
    starting = asyncio.create_task(sup.start(ready))
    stopped = asyncio.create_task(sup.stop.wait())
    try:
        await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return
        starting.result()  # a start failure raises here
        await stopped
        if sup.failure is None:
            sup.log.info("draining", grace_s=sup.config.drain_grace_s)
    finally:
        stopped.cancel()
