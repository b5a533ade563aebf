"""detserve on Ray Serve, for real: a local Ray instance, Serve's gRPC proxy speaking
detserve.v1, replicas running the blocks model's batcher and engine. Skipped without the `ray`
extra (deploy/ray/test.sh installs it and runs these)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve tests need the 'ray' extra "
                                        "(pip install -e '.[ray]'; deploy/ray/test.sh)")

from detserve.protos import detection_pb2 as pb  # noqa: E402
from detserve.protos import detection_pb2_grpc as pb_grpc  # noqa: E402
from detserve.server.config import ServerConfig  # noqa: E402
from detserve.server.rayserve.deployment import (  # noqa: E402
    Autoscaling,
    RayServeSettings,
    start,
)

from .conftest import blocks_image, blocks_model, request_for  # noqa: E402
from .ray_harness import (  # noqa: E402
    Load,
    detect,
    free_port,
    kill_replica,
    running_replicas,
    wait_for,
)

GREEN = request_for(blocks_image(64, 64, [(32, 32, 1)]))
pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def cluster() -> Iterator[int]:
    """A local Ray instance; yields the gRPC proxy's port."""
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    try:
        yield free_port()
    finally:
        serve.shutdown()
        ray.shutdown()


def _config(tiny_package: Path, port: int) -> ServerConfig:
    return ServerConfig(host="127.0.0.1", port=port, metrics_port=None, log_requests=False,
                        drain_grace_s=2.0, models=(replace(blocks_model(tiny_package),
                                                           default=True),))


@pytest.fixture
async def stub(cluster: int) -> AsyncIterator[pb_grpc.DetectorStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster}") as channel:
        yield pb_grpc.DetectorStub(channel)  # type: ignore[no-untyped-call]


def _deploy(tiny_package: Path, port: int, **settings: object) -> None:
    start(_config(tiny_package, port),
          RayServeSettings(replica_cpus=0, http_port=0, **settings))  # type: ignore[arg-type]


async def test_two_replicas_both_answer_through_the_grpc_proxy(
    cluster: int, stub: pb_grpc.DetectorStub, tiny_package: Path
) -> None:
    await asyncio.to_thread(_deploy, tiny_package, cluster, num_replicas=2)
    results = await asyncio.gather(*(detect(stub, GREEN) for _ in range(40)))
    replicas = {replica for _, replica in results}
    assert len(replicas) == 2, replicas
    for reply, _ in results:
        assert [(d.label, [d.box.x1, d.box.y1, d.box.x2, d.box.y2]) for d in reply.detections] \
            == [("green", [32.0, 32.0, 64.0, 64.0])]
    models = await stub.ListModels(pb.ListModelsRequest(), timeout=30)
    assert models.default_model == "blocks@64"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Detect(request_for(blocks_image(64, 64, []), model="nope"), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in (err.value.details() or "")


async def test_detect_stream_through_the_proxy_answers_every_frame_in_order(
    cluster: int, stub: pb_grpc.DetectorStub, tiny_package: Path
) -> None:
    await asyncio.to_thread(_deploy, tiny_package, cluster, num_replicas=1)
    frames = [replace_frame(i) for i in range(6)]
    replies = [r async for r in stub.DetectStream(iter(frames), timeout=30)]
    assert [r.frame_id for r in replies] == list(range(6))
    assert all(len(r.detections) == 1 for r in replies)


def replace_frame(frame_id: int) -> pb.DetectRequest:
    request = pb.DetectRequest()
    request.CopyFrom(GREEN)
    request.frame_id = frame_id
    return request


async def test_killed_replica_comes_back_and_the_other_loses_nothing(
    cluster: int, stub: pb_grpc.DetectorStub, tiny_package: Path
) -> None:
    await asyncio.to_thread(_deploy, tiny_package, cluster, num_replicas=2)
    load = Load(stub, GREEN, workers=4)
    before: list[str] = []  # the two replicas at the kill; the first is killed
    survivor_at_kill = 0

    def step() -> bool:
        nonlocal survivor_at_kill
        seen = [r for r, n in load.by_replica.items() if n >= 5]
        if not before and len(seen) == 2:
            before.extend(seen)
            survivor_at_kill = load.by_replica[seen[1]]
            kill_replica(seen[0])
            return False
        # Done once a replica that was not there before the kill has answered.
        return bool(before) and len(load.by_replica) >= 3

    await load.run_until(step, "a replacement replica answering")
    await wait_for(lambda: running_replicas() == 2, "two running replicas again")
    replacement = set(load.by_replica) - set(before)
    assert len(replacement) == 1, load.by_replica
    assert load.by_replica[before[1]] > survivor_at_kill  # the survivor went on answering
    # Only calls in flight on the killed replica may fail: one per caller at most.
    assert len(load.failures) <= load.workers, load.failures


async def test_autoscaling_adds_a_replica_under_queue_length(
    cluster: int, stub: pb_grpc.DetectorStub, tiny_package: Path
) -> None:
    scaling = Autoscaling(min_replicas=1, max_replicas=2, target_ongoing_requests=1.0,
                          upscale_delay_s=0.5, downscale_delay_s=600.0, metrics_interval_s=0.5)
    await asyncio.to_thread(_deploy, tiny_package, cluster, autoscaling=scaling)
    assert running_replicas() == 1
    load = Load(stub, GREEN, workers=6)
    await load.run_until(lambda: running_replicas() == 2, "autoscaling to two replicas")
    assert not load.failures, load.failures
