"""How one server's configuration splits over its processes.

The server-wide bounds stay server-wide: admission, the pixel budget and the batchers live in
the engine process alone. What each front end runs itself is split evenly, so the totals stay
what the config says: `decode_threads` (null: the CPUs the server may use) is the whole
server's, `stream_max_frames_held` bounds the frames held across every front end's streams.
Each front end binds the reserved port, and none serves /metrics (the supervisor does).
`max_concurrent_rpcs`, gRPC's own backstop, applies per front end.
"""

from __future__ import annotations

import math
from dataclasses import replace

from detserve.server.config import ServerConfig


def frontend_decode_threads(config: ServerConfig) -> int:
    return max(1, math.ceil(config.decode_thread_count / config.workers))


def engine_config(config: ServerConfig) -> ServerConfig:
    """Admission estimates the decode backlog from every front end's decode threads."""
    total = frontend_decode_threads(config) * config.workers
    return replace(config, metrics_port=None, decode_threads=total)


def frontend_config(config: ServerConfig, port: int) -> ServerConfig:
    frames = max(1, config.stream_max_frames_held // config.workers)
    return replace(config, port=port, metrics_port=None,
                   decode_threads=frontend_decode_threads(config),
                   stream_max_frames_held=frames)
