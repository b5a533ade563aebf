"""gRPC channel-arg options that bound a connection's age (README "Scale-out").

A client holds one HTTP/2 connection per resolved address for as long as it lives, so replicas
that join after it resolved get none of its calls. With a maximum age the server sends GOAWAY,
the client re-resolves (a headless Service's DNS, a static list) and reconnects, and calls
already running get the grace period to finish.
"""

from __future__ import annotations

from detserve.server.config import ServerConfig


def connection_age_options(config: ServerConfig) -> list[tuple[str, int]]:
    """`grpc.max_connection_age_ms` and its grace for `config`; none when the age is 0 (off)."""
    if config.max_connection_age_s <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", max(1, round(config.max_connection_age_s * 1000))),
        ("grpc.max_connection_age_grace_ms", round(config.max_connection_age_grace_s * 1000)),
    ]
