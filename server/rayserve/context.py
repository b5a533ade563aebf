"""The gRPC servicer context the detserve request path expects, over Ray Serve's.

Ray's proxy hands a replica a `RayServegRPCContext`: metadata, peer, code, details and trailing
metadata, but no deadline and no `abort`. The client's deadline stays at the proxy (it cancels
the replica's call when the client gives up), so the request path's deadline here is the proxy's
`request_timeout_s`; `abort` sets the status and raises, which Ray turns into that status.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, NoReturn, Protocol

import grpc

REPLICA_KEY = "detserve-replica"  # trailing metadata: the replica that answered


class RayContext(Protocol):
    """What detserve uses of ray.serve.grpc_util.RayServegRPCContext."""

    def invocation_metadata(self) -> list[tuple[str, str]]: ...

    def peer(self) -> str: ...

    def set_code(self, code: grpc.StatusCode) -> None: ...

    def set_details(self, details: str) -> None: ...

    def set_trailing_metadata(self, trailing_metadata: list[tuple[str, str]]) -> None: ...


class AbortedCall(Exception):
    """Raised by `abort`: the status is already on the context, Ray's proxy sends it."""


class ReplicaContext:
    """A grpc.aio.ServicerContext look-alike for DetectorService inside a Ray replica."""

    def __init__(self, ray_context: RayContext, replica: str, timeout_s: float | None) -> None:
        self._ray = ray_context
        self._replica = replica
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s
        self._ray.set_trailing_metadata([(REPLICA_KEY, replica)])

    def invocation_metadata(self) -> list[tuple[str, str]]:
        return self._ray.invocation_metadata()

    def peer(self) -> str:
        return self._ray.peer()

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(self._deadline - time.monotonic(), 0.0)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._ray.set_code(code)

    def set_details(self, details: str) -> None:
        self._ray.set_details(details)

    def set_trailing_metadata(self, metadata: Sequence[tuple[str, Any]]) -> None:
        pairs = [(str(k), str(v)) for k, v in metadata]
        self._ray.set_trailing_metadata([(REPLICA_KEY, self._replica), *pairs])

    async def abort(self, code: grpc.StatusCode, details: str = "") -> NoReturn:
        self._ray.set_code(code)
        self._ray.set_details(details)
        raise AbortedCall(details)
