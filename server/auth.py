"""The call guard: bearer-token auth, per-model scopes and rate limits, before any servicer runs.

A grpc.aio server interceptor, installed only when auth or a rate limit is configured; without
either, calls reach the servicers untouched.

- `grpc.health.v1.Health` is always open: orchestrators' probes carry no secret. So are the
  Open Inference Protocol's liveness and readiness (`ServerLive`, `ServerReady`): they say
  nothing about models (`ModelReady`, metadata and inference stay authenticated).
- With auth on, every other method (Detector, the protocol's and reflection) needs the call metadata
  `authorization: Bearer <token>`, checked once when the call starts (a stream at its start).
  None, a malformed one or a token not in the list: UNAUTHENTICATED, saying what to send.
- A scoped token (tokens.py) may use only its models: Detect and GetModelInfo naming another
  model, the default included, get PERMISSION_DENIED; a DetectStream frame naming one ends the
  stream with PERMISSION_DENIED after the frames before it are answered; ListModels lists the
  models in scope only.
- Rate limits (rate_limit.py) apply to Detector calls, keyed by the token's fingerprint, or by
  the peer's address when auth is off. A unary call over the limit gets RESOURCE_EXHAUSTED with
  the retry time in the message and in `grpc-retry-pushback-ms`, as admission's refusals do; a
  stream frame waits for its turn instead (backpressure).

Refusals are counted (detserve_auth_refused_total{reason}, detserve_rejected_total{model,
reason="rate_limit"}) and logged as a `refused` line naming the token by its fingerprint only.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from detserve.protos import detection_pb2 as pb
from detserve.protos import inference_pb2 as ip
from detserve.server.admission import PUSHBACK_KEY, Rejected
from detserve.server.catalog import Catalog, ModelView
from detserve.server.errors import RequestError
from detserve.server.metrics import ServerMetrics
from detserve.server.observe import UNKNOWN_MODEL
from detserve.server.rate_limit import RateLimiter
from detserve.server.tokens import Grant, TokenStore, fingerprint

HEALTH_PREFIX = "/grpc.health.v1.Health/"
_OIP_PREFIX = f"/{ip.DESCRIPTOR.services_by_name['GRPCInferenceService'].full_name}/"
PROBES = frozenset({_OIP_PREFIX + "ServerLive", _OIP_PREFIX + "ServerReady"})  # open, as health
DETECTOR_PREFIX = f"/{pb.DESCRIPTOR.services_by_name['Detector'].full_name}/"
DETECT = DETECTOR_PREFIX + "Detect"
DETECT_STREAM = DETECTOR_PREFIX + "DetectStream"
GET_MODEL_INFO = DETECTOR_PREFIX + "GetModelInfo"
LIST_MODELS = DETECTOR_PREFIX + "ListModels"
AUTH_KEY = "authorization"
SHOWN_CHARS = 64  # of a caller's model name echoed in a message (replies stay small)
TOKEN_HELP = ("send the call metadata 'authorization: Bearer <token>' (detserve-client --token "
              "or $DETSERVE_TOKEN; in Python ChannelSecurity(token=...))")

Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def peer_key(peer: str) -> str:
    """A rate-limit key per client host: "ipv4:10.0.0.7:51234" -> "ipv4:10.0.0.7"."""
    kind, _, address = peer.partition(":")
    host, sep, port = address.rpartition(":")
    if kind in ("ipv4", "ipv6") and sep and port.isdigit():
        return f"{kind}:{host}"
    return peer


def _shown(model: str) -> str:
    return repr(model if len(model) <= SHOWN_CHARS else model[:SHOWN_CHARS] + "...")


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def authenticate(tokens: TokenStore,
                 metadata: Sequence[tuple[str, str | bytes]] | None) -> Grant:
    """The caller's grant from its call metadata; Rejected UNAUTHENTICATED when it has none."""
    values = [_text(v) for k, v in metadata or () if k == AUTH_KEY]
    if not values:
        raise Rejected(grpc.StatusCode.UNAUTHENTICATED, "no_token",
                       f"this server requires a token: {TOKEN_HELP}")
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Rejected(grpc.StatusCode.UNAUTHENTICATED, "bad_token",
                       f"the authorization metadata must read 'Bearer <token>': {TOKEN_HELP}")
    grant = tokens.authenticate(token)
    if grant is None:
        raise Rejected(
            grpc.StatusCode.UNAUTHENTICATED, "bad_token",
            f"token {fingerprint(token)} (its fingerprint) is not accepted by this server; "
            f"the server logs the fingerprints it accepts (event auth_tokens_loaded)",
        )
    return grant


class CallGuard(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    def __init__(self, tokens: TokenStore | None, limiter: RateLimiter | None,
                 models: Catalog, metrics: ServerMetrics, logger: Any | None) -> None:
        self.tokens = tokens
        self.limiter = limiter
        self.models = models
        self.metrics = metrics
        self.logger = logger  # None: refusals are counted, not logged (log_requests false)

    async def intercept_service(self, continuation: Continuation,
                                details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = await continuation(details)
        method = _text(details.method)
        if handler is None or method.startswith(HEALTH_PREFIX) or method in PROBES:
            return handler
        grant = None
        if self.tokens is not None:
            try:
                grant = authenticate(self.tokens, details.invocation_metadata)
            except Rejected as exc:
                return _same_kind(handler, self._refusing(exc, method))
        needs_call_checks = self.limiter is not None or (grant is not None and
                                                         grant.models is not None)
        if not method.startswith(DETECTOR_PREFIX) or not needs_call_checks:
            return handler
        if method == DETECT_STREAM:
            return _same_kind(handler, stream=self._stream(handler.stream_stream, grant))
        if handler.request_streaming or handler.response_streaming:
            return handler
        return _same_kind(handler, self._unary(handler.unary_unary, method, grant))

    def _served(self, model: str) -> ModelView | None:
        try:
            return self.models.resolve(model)
        except RequestError:
            return None

    def _check_scope(self, grant: Grant | None, model: str, frame: str = "") -> str:
        """The metrics label of `model`; Rejected PERMISSION_DENIED when out of scope."""
        served = self._served(model)
        label = served.key if served is not None else UNKNOWN_MODEL
        if grant is None or grant.models is None:
            return label
        if served is None or not grant.allows(served.key, served.name):
            asked = f"model {_shown(model)}" if model else f"the default model ({label})"
            raise Rejected(
                grpc.StatusCode.PERMISSION_DENIED, "scope",
                f"{frame}token {grant.fingerprint} may not use {asked}; it may use "
                f"{sorted(grant.models)} (name one in the request's model field)",
            )
        return label

    def _key(self, grant: Grant | None, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        return f"token:{grant.fingerprint}" if grant is not None else peer_key(context.peer())

    def _take(self, key: str) -> None:
        if self.limiter is None:
            return
        retry_s = self.limiter.try_take(key)
        if retry_s > 0:
            who = f"token {key[6:]}" if key.startswith("token:") else f"client {key}"
            raise Rejected(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "rate_limit",
                f"rate limit: {who} is over {self.limiter.rate:g} requests/s (burst "
                f"{self.limiter.burst}); retry in {math.ceil(retry_s * 1e3)} ms",
                retry_after_s=retry_s,
            )

    def _unary(self, inner: Callable[..., Awaitable[Any]], method: str,
               grant: Grant | None) -> Callable[..., Awaitable[Any]]:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            names_model = method in (DETECT, GET_MODEL_INFO)
            label = UNKNOWN_MODEL
            try:
                if names_model:
                    label = self._check_scope(grant, request.model)
                self._take(self._key(grant, context))
            except Rejected as exc:
                await self.refuse(context, exc, method, label)
            response = await inner(request, context)
            if method == LIST_MODELS and grant is not None and grant.models is not None:
                return _in_scope(response, grant)
            return response

        return guarded

    def _stream(self, inner: Callable[..., AsyncGenerator[Any, None]],
                grant: Grant | None) -> Callable[..., AsyncGenerator[Any, None]]:
        async def guarded(requests: AsyncIterator[pb.DetectRequest],
                          context: grpc.aio.ServicerContext[Any, Any]) -> AsyncGenerator[Any, None]:
            key = self._key(grant, context)
            denied: list[Rejected] = []

            async def frames() -> AsyncIterator[pb.DetectRequest]:
                while True:
                    if self.limiter is not None:
                        await self.limiter.wait(key)  # before reading: flow control pushes back
                    frame = await anext(requests, None)
                    if frame is None:
                        return
                    try:
                        self._check_scope(grant, frame.model, f"frame {frame.frame_id}: ")
                    except Rejected as exc:
                        denied.append(exc)  # the frames before it are still answered
                        return
                    yield frame

            replies = inner(frames(), context)
            async with contextlib.aclosing(replies):
                async for reply in replies:
                    yield reply
            if denied:
                await self.refuse(context, denied[0], DETECT_STREAM, UNKNOWN_MODEL)

        return guarded

    def _refusing(self, exc: Rejected, method: str) -> Callable[..., Awaitable[None]]:
        async def refused(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await self.refuse(context, exc, method, UNKNOWN_MODEL)

        return refused

    async def refuse(self, context: grpc.aio.ServicerContext[Any, Any], exc: Rejected,
                     method: str, label: str) -> None:
        """Count, log and end the call with `exc`'s status (context.abort raises)."""
        if exc.reason == "rate_limit":
            self.metrics.rejected.labels(label, exc.reason).inc()
            if method == DETECT:
                self.metrics.observe_error(label, exc.code.name)
        else:
            self.metrics.auth_refused.labels(exc.reason).inc()
        if self.logger is not None:
            self.logger.warning("refused", rpc=method.rpartition("/")[2], status=exc.code.name,
                                reason=exc.reason, message=exc.message, peer=context.peer())
        trailers: tuple[tuple[str, str], ...] = ()
        if exc.retry_after_s:
            trailers = ((PUSHBACK_KEY, str(math.ceil(exc.retry_after_s * 1e3))),)
        await context.abort(exc.code, exc.message, trailing_metadata=trailers)


def _in_scope(response: pb.ListModelsResponse, grant: Grant) -> pb.ListModelsResponse:
    kept = [m for m in response.models if grant.allows(m.name, m.name.partition("@")[0])]
    default = response.default_model if any(m.name == response.default_model
                                             for m in kept) else ""
    return pb.ListModelsResponse(models=kept, default_model=default)


def _same_kind(handler: Any, unary: Callable[..., Any] | None = None,
               stream: Callable[..., Any] | None = None) -> grpc.RpcMethodHandler:
    """A handler like `handler` (same streaming kind and (de)serializers) running `unary`
    (a coroutine, for any kind: a refusal) or `stream` (an async generator, stream-stream)."""
    des, ser = handler.request_deserializer, handler.response_serializer
    behavior = stream if stream is not None else unary
    if handler.request_streaming and handler.response_streaming:
        make = grpc.stream_stream_rpc_method_handler
    elif handler.request_streaming:
        make = grpc.stream_unary_rpc_method_handler
    elif handler.response_streaming:
        make = grpc.unary_stream_rpc_method_handler
    else:
        make = grpc.unary_unary_rpc_method_handler
    made: grpc.RpcMethodHandler = make(behavior, des, ser)
    return made
