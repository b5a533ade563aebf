"""detserve-server configuration -> a Ray Serve application and its gRPC proxy.

The mapping (README "Scale-out"):
- `port` is the gRPC proxy's port, so clients keep their target; `host` binds Ray's proxies.
- Each replica serves every model of the config with its own batchers and engines, under the
  config's admission rules; `max_concurrent_rpcs` bounds the calls Ray sends one replica
  (max_ongoing_requests), so refusals come from detserve's admission, with its statuses, not
  from Ray's router.
- Autoscaling on ongoing requests per replica (what is queued in and running on its batchers):
  the default target is one full batch of the default model waiting per replica.
- `drain_grace_s` (+ a margin) is the replica's graceful_shutdown_timeout_s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from detserve.server.config import ServerConfig

SERVICER_FUNCTIONS = ("detserve.protos.detection_pb2_grpc.add_DetectorServicer_to_server",)
SHUTDOWN_MARGIN_S = 5.0  # the batchers and engines close after the drain
DEPLOYMENT_NAME = "DetectorReplica"


@dataclass(frozen=True)
class Autoscaling:
    min_replicas: int = 1
    max_replicas: int = 2
    # Ongoing requests per replica Ray keeps replicas for; None: the default model's batch.
    target_ongoing_requests: float | None = None
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 60.0
    metrics_interval_s: float = 1.0


@dataclass(frozen=True)
class RayServeSettings:
    app_name: str = "detserve"
    num_replicas: int = 1  # ignored with autoscaling
    autoscaling: Autoscaling | None = None
    # Ray's proxy does not pass the client's deadline on; this is the replica's deadline.
    request_timeout_s: float | None = 30.0
    replica_cpus: float = 1.0  # Ray's CPU reservation per replica (0: no reservation)
    http_port: int = 8000  # Ray always starts an HTTP proxy beside the gRPC one


def default_batch(config: ServerConfig) -> int:
    model = next((m for m in config.models if m.default), config.models[0])
    return model.batching.max_batch_size


def deployment_options(config: ServerConfig, settings: RayServeSettings) -> dict[str, Any]:
    """Keyword arguments for `serve.deployment(...).options`."""
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": config.max_concurrent_rpcs,
        "graceful_shutdown_timeout_s": config.drain_grace_s + SHUTDOWN_MARGIN_S,
        "ray_actor_options": {"num_cpus": settings.replica_cpus},
        "health_check_period_s": 5.0,
    }
    scaling = settings.autoscaling
    if scaling is None:
        options["num_replicas"] = settings.num_replicas
        return options
    target = scaling.target_ongoing_requests or float(default_batch(config))
    options["autoscaling_config"] = {
        "min_replicas": scaling.min_replicas,
        "initial_replicas": scaling.min_replicas,
        "max_replicas": scaling.max_replicas,
        "target_ongoing_requests": target,
        "upscale_delay_s": scaling.upscale_delay_s,
        "downscale_delay_s": scaling.downscale_delay_s,
        "metrics_interval_s": scaling.metrics_interval_s,
        "look_back_period_s": max(2.0, 2 * scaling.metrics_interval_s),
    }
    return options


def grpc_options(config: ServerConfig, settings: RayServeSettings) -> dict[str, Any]:
    return {
        "port": config.port,
        "grpc_servicer_functions": list(SERVICER_FUNCTIONS),
        "request_timeout_s": settings.request_timeout_s,
    }


def start(config: ServerConfig, settings: RayServeSettings) -> None:
    """Start Serve's proxies (on the connected Ray cluster) and deploy the application; returns
    once every replica has loaded its models."""
    from ray import serve

    from detserve.server.rayserve.replica import DetectorReplica

    serve.start(
        http_options={"host": config.host, "port": settings.http_port},
        grpc_options=grpc_options(config, settings),
    )
    deployment = serve.deployment(**deployment_options(config, settings))(DetectorReplica)
    app = deployment.bind(config, settings.request_timeout_s)
    serve.run(app, name=settings.app_name)
