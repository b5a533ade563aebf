"""detserve-server config -> Ray Serve deployment options (no Ray needed)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from detserve.server.batching_config import BatchingConfig
from detserve.server.config import ModelConfig, ServerConfig
from detserve.server.rayserve.context import REPLICA_KEY, AbortedCall, ReplicaContext
from detserve.server.rayserve.deployment import (
    Autoscaling,
    RayServeSettings,
    deployment_options,
    grpc_options,
)


def _config(tmp_path: Path, **fields: object) -> ServerConfig:
    model = ModelConfig(package=tmp_path, batching=BatchingConfig(max_batch_size=6),
                        default=True)
    return replace(ServerConfig(models=(model,)), **fields)  # type: ignore[arg-type]


def test_fixed_replicas_carry_admission_and_drain(tmp_path: Path) -> None:
    config = _config(tmp_path, max_concurrent_rpcs=300, drain_grace_s=12.0)
    options = deployment_options(config, RayServeSettings(num_replicas=3, replica_cpus=2))
    assert options["num_replicas"] == 3
    assert options["max_ongoing_requests"] == 300
    assert options["graceful_shutdown_timeout_s"] == 17.0
    assert options["ray_actor_options"] == {"num_cpus": 2}
    assert "autoscaling_config" not in options


def test_autoscaling_target_defaults_to_the_default_models_batch(tmp_path: Path) -> None:
    options = deployment_options(_config(tmp_path),
                                 RayServeSettings(autoscaling=Autoscaling(1, 4)))
    scaling = options["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 4)
    assert scaling["target_ongoing_requests"] == 6.0
    assert "num_replicas" not in options
    explicit = deployment_options(_config(tmp_path), RayServeSettings(
        autoscaling=Autoscaling(2, 3, target_ongoing_requests=1.5)))
    assert explicit["autoscaling_config"]["target_ongoing_requests"] == 1.5


def test_the_grpc_proxy_listens_on_the_configs_port(tmp_path: Path) -> None:
    options = grpc_options(_config(tmp_path, port=50099), RayServeSettings(request_timeout_s=9))
    assert options == {
        "port": 50099,
        "grpc_servicer_functions": [
            "detserve.protos.detection_pb2_grpc.add_DetectorServicer_to_server"],
        "request_timeout_s": 9,
    }


class _RayLike:
    def __init__(self) -> None:
        self.code: grpc.StatusCode | None = None
        self.details = ""
        self.trailing: list[tuple[str, str]] = []

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return [("detserve-camera-id", "cam-1")]

    def peer(self) -> str:
        return "ipv4:10.0.0.1:5000"

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str]]) -> None:
        self.trailing = trailing_metadata


async def test_replica_context_names_the_replica_and_aborts_with_the_status() -> None:
    ray = _RayLike()
    context = ReplicaContext(ray, "r1", timeout_s=5.0)
    assert ray.trailing == [(REPLICA_KEY, "r1")]
    remaining = context.time_remaining()
    assert remaining is not None and 4.0 < remaining <= 5.0
    assert ReplicaContext(ray, "r1", None).time_remaining() is None
    context.set_trailing_metadata([("grpc-retry-pushback-ms", "20")])
    assert ray.trailing == [(REPLICA_KEY, "r1"), ("grpc-retry-pushback-ms", "20")]
    with pytest.raises(AbortedCall, match="no such model"):
        await context.abort(grpc.StatusCode.NOT_FOUND, "no such model")
    assert (ray.code, ray.details) == (grpc.StatusCode.NOT_FOUND, "no such model")
