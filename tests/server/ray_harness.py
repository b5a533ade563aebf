"""A local Ray instance with Serve's gRPC proxy for the Ray Serve tests, and load helpers.

One Ray instance per test module (starting one costs seconds on 2 cores); each test deploys its
own application over the previous one. Replicas reserve no CPU, so 2 fit in num_cpus=2.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc

from detserve.protos import detection_pb2 as pb
from detserve.protos import detection_pb2_grpc as pb_grpc
from detserve.server.rayserve.context import REPLICA_KEY
from detserve.server.rayserve.deployment import DEPLOYMENT_NAME

RAY_WAIT_S = 90.0  # replicas starting on a busy 2-core host; never reached when green
APP = "detserve"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def running_replicas() -> int:
    from ray import serve

    app = serve.status().applications.get(APP)
    if app is None or DEPLOYMENT_NAME not in app.deployments:
        return 0
    return int(app.deployments[DEPLOYMENT_NAME].replica_states.get("RUNNING", 0))


async def wait_for(predicate: Callable[[], bool], what: str) -> None:
    """Ray's controller state, which has no event to wait on (polls)."""
    deadline = time.monotonic() + RAY_WAIT_S
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {RAY_WAIT_S} s")
        await asyncio.sleep(0.2)


async def detect(
    stub: pb_grpc.DetectorStub, request: pb.DetectRequest
) -> tuple[pb.DetectResponse, str]:
    """One Detect through the proxy: the reply and the replica that answered."""
    call = stub.Detect(request, timeout=30)
    reply = await call
    trailing = dict(await call.trailing_metadata() or ())
    return reply, str(trailing.get(REPLICA_KEY, ""))


@dataclass
class Load:
    """`workers` concurrent callers, each one call at a time, until `stop` is set."""

    stub: pb_grpc.DetectorStub
    request: pb.DetectRequest
    workers: int = 4
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    by_replica: Counter[str] = field(default_factory=Counter)
    failures: list[grpc.StatusCode] = field(default_factory=list)

    async def _caller(self) -> None:
        while not self.stop.is_set():
            try:
                reply, replica = await detect(self.stub, self.request)
            except grpc.aio.AioRpcError as err:
                self.failures.append(err.code())
                continue
            assert len(reply.detections) == 1, reply
            self.by_replica[replica] += 1

    async def run_until(self, done: Callable[[], bool], what: str) -> None:
        callers = [asyncio.create_task(self._caller()) for _ in range(self.workers)]
        try:
            await wait_for(done, what)
        finally:
            self.stop.set()
            await asyncio.gather(*callers)


def kill_replica(replica: str) -> None:
    import ray

    name = f"SERVE_REPLICA::{APP}#{DEPLOYMENT_NAME}#{replica}"
    ray.kill(ray.get_actor(name, namespace="serve"), no_restart=True)
