"""What the worker-process tests run in other processes, so it must import by this module's name
(the tests put this folder on sys.path; spawned children inherit it).

`GatedFactory` builds real OrtEngines behind a gate shared across processes: the engine process
reports each batch it enters (`entered`) and waits for `gate` before running it, so a test
decides when batches finish without sleeping. `run_supervisor` runs the supervisor as the main
code of its own process, as `detserve-server --workers N` does.
"""

from __future__ import annotations

import asyncio
import multiprocessing.queues
import multiprocessing.synchronize
import os
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detserve.engines.base import Engine
from detserve.engines.manifest import Manifest, ModelPackage
from detserve.engines.ort import OrtEngine
from detserve.engines.warmup import warm_up
from detserve.server.app import ServerStartError
from detserve.server.config import ServerConfig
from detserve.server.logs import configure_logging
from detserve.server.registry import EngineFactory, default_engine_factory
from detserve.server.workers.supervisor import WorkersInfo, supervise

GATE_WAIT_S = 60.0  # a gate never opened fails the batch; never reached when green


@dataclass
class GatedOrt:
    inner: OrtEngine
    gate: multiprocessing.synchronize.Event
    entered: multiprocessing.queues.Queue[int]

    def warm_up(self, batch_sizes: Sequence[int]) -> tuple[int, ...]:
        return warm_up(self.inner, batch_sizes)  # before serving: not gated

    @property
    def manifest(self) -> Manifest:
        return self.inner.manifest

    @property
    def kind(self) -> str:
        return self.inner.kind

    def infer(self, batch: npt.NDArray[np.float32]) -> Sequence[npt.NDArray[np.generic]]:
        self.entered.put(int(batch.shape[0]))
        if not self.gate.wait(GATE_WAIT_S):
            raise TimeoutError("test gate never opened")
        return self.inner.infer(batch)

    def close(self) -> None:
        self.inner.close()


@dataclass
class GatedFactory:
    """`hold_start`: building an engine reports the engine process's pid on `entered` (as a
    negative number), then hangs: a server stuck loading its models. (Not on `gate`: a process
    killed while it waits on a multiprocessing Event leaves that Event unusable.)"""

    gate: multiprocessing.synchronize.Event
    entered: multiprocessing.queues.Queue[int]
    hold_start: bool = False

    def __call__(self, package: ModelPackage, kind: str, options: Mapping[str, Any]) -> Engine:
        if self.hold_start:
            self.entered.put(-os.getpid())
            threading.Event().wait(GATE_WAIT_S)
        return GatedOrt(OrtEngine(package, intra_op_threads=1), self.gate, self.entered)


def run_supervisor(config: ServerConfig, factory: EngineFactory | None,
                   info: multiprocessing.queues.Queue[WorkersInfo]) -> None:
    """A process's target: serve until SIGTERM, exit 0 (1 if the server failed)."""
    configure_logging(config.log_level)
    try:
        asyncio.run(supervise(config, factory or default_engine_factory, info.put))
    except ServerStartError as exc:
        print(f"supervisor: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(0)


async def stop_supervisor(process: Any, channels: Sequence[Any], wait_s: float) -> None:
    """Tear down a supervisor a test started: close its channels, SIGTERM it and wait up to
    `wait_s` for it to drain, kill it past that."""
    for channel in channels:
        await channel.close()
    if process.is_alive():
        os.kill(process.pid, signal.SIGTERM)
        await asyncio.to_thread(process.join, wait_s)
    if process.is_alive():
        process.kill()
