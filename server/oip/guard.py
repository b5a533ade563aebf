"""The server's token scopes and rate limits, applied to Open Inference Protocol calls.

The gRPC call guard (server/auth.py) already refuses a call without an accepted token on this
port, whatever its service (but for health and the protocol's ServerLive/ServerReady, which are
open to probes); its per-model scopes and rate limits read detserve.v1 requests. This
applies the same rules to the protocol's calls, over gRPC and REST alike: a call naming a model
is refused PERMISSION_DENIED outside its token's scope, and each inference request takes one
token from the caller's bucket (by token, or by peer without auth), refused RESOURCE_EXHAUSTED
with the retry time, as detserve.v1's Detect is. REST calls are authenticated here too, from
their `Authorization: Bearer <token>` header.
"""

from __future__ import annotations

import math
from typing import Any

import grpc

from detserve.server.admission import Rejected
from detserve.server.auth import AUTH_KEY, authenticate, peer_key
from detserve.server.catalog import ModelView
from detserve.server.metrics import ServerMetrics
from detserve.server.observe import UNKNOWN_MODEL
from detserve.server.security import EdgeSecurity
from detserve.server.tokens import Grant


class OipGuard:
    def __init__(self, security: EdgeSecurity, metrics: ServerMetrics,
                 logger: Any | None) -> None:
        self.security = security
        self.metrics = metrics
        self.logger = logger

    @property
    def active(self) -> bool:
        return self.security.tokens is not None or self.security.limiter is not None

    def grant(self, authorization: str | None) -> Grant | None:
        """The caller's grant from its authorization value; None with auth off. Rejected
        UNAUTHENTICATED (counted) when the server needs a token and this is not one."""
        tokens = self.security.tokens
        if tokens is None:
            return None
        metadata = () if authorization is None else ((AUTH_KEY, authorization),)
        try:
            return authenticate(tokens, metadata)
        except Rejected as exc:
            self.metrics.auth_refused.labels(exc.reason).inc()
            raise

    def check_scope(self, grant: Grant | None, model: ModelView, asked: str) -> None:
        if grant is None or grant.allows(model.key, model.name):
            return
        self.metrics.auth_refused.labels("scope").inc()
        what = f"model {asked!r}" if asked else f"the default model ({model.key})"
        raise Rejected(grpc.StatusCode.PERMISSION_DENIED, "scope",
                       f"token {grant.fingerprint} may not use {what}; it may use "
                       f"{sorted(grant.models or ())}")

    def take(self, grant: Grant | None, peer: str, model: ModelView | None) -> None:
        """One request from the caller's rate-limit bucket; Rejected RESOURCE_EXHAUSTED."""
        limiter = self.security.limiter
        if limiter is None:
            return
        key = f"token:{grant.fingerprint}" if grant is not None else peer_key(peer)
        retry_s = limiter.try_take(key)
        if retry_s <= 0:
            return
        label = model.key if model is not None else UNKNOWN_MODEL
        self.metrics.rejected.labels(label, "rate_limit").inc()
        who = f"token {grant.fingerprint}" if grant is not None else f"client {key}"
        raise Rejected(grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit",
                       f"rate limit: {who} is over {limiter.rate:g} requests/s (burst "
                       f"{limiter.burst}); retry in {math.ceil(retry_s * 1e3)} ms",
                       retry_after_s=retry_s)
