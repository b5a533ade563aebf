"""The Open Inference Protocol over HTTP/JSON (KServe v2 REST, Triton's extensions), on the
server's event loop (aiohttp), on `rest_port`.

Routes: GET /v2, /v2/health/live, /v2/health/ready, /v2/models/{m}[/versions/{v}] (metadata),
.../ready, .../config, .../stats, /v2/models/stats; POST .../infer. Inference takes the path
gRPC's ModelInfer takes (infer.py): the same admission, batchers and errors, the gRPC status
mapped to an HTTP one, the message in `{"error": ...}`, as tritonclient.http reads it.

Security as on the gRPC port: TLS (and mutual TLS) from the same files, the same tokens in
`Authorization: Bearer <token>`, scopes and rate limits (guard.py); the health routes stay
open, as grpc.health.v1 does, for orchestrators' probes.
"""

from __future__ import annotations

import math
import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import Message

from detserve.protos import inference_pb2 as ip
from detserve.server.admission import Rejected
from detserve.server.config import ServerConfig
from detserve.server.errors import RequestError
from detserve.server.oip import describe
from detserve.server.oip.infer import InferCall, deadline_of, infer, record_refusal, resolve
from detserve.server.oip.rest_tensors import HEADER_LENGTH, encode_response, parse_request
from detserve.server.oip.service import OipParts
from detserve.server.oip.tensors import binary_output, images_of, marks_final, options_of
from detserve.server.tokens import Grant

HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400, grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
# Triton writes these as JSON numbers (protobuf's JSON mapping would quote 64-bit integers).
INT_FIELDS = {"shape", "dims", "count", "ns", "batch_size", "last_inference", "inference_count",
              "execution_count", "max_queue_delay_microseconds", "default_timeout_microseconds"}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _numbers(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _numbers(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v, key) for v in value]
    if key in INT_FIELDS and isinstance(value, str):
        return int(value)
    return value


def as_json(message: Message) -> web.Response:
    doc = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                    always_print_fields_with_no_presence=True)
    return web.json_response(_numbers(doc))


def error_response(exc: RequestError) -> web.Response:
    response = web.json_response({"error": exc.message},
                                 status=HTTP_STATUS.get(exc.code, 500))
    if isinstance(exc, Rejected) and exc.retry_after_s:
        response.headers["Retry-After"] = str(math.ceil(exc.retry_after_s))
    return response


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RequestError as exc:
        return error_response(exc)
    except web.HTTPException as exc:  # aiohttp's own: no such route, a body over the limit
        if exc.status < 400:
            raise
        what = f"no route {request.method} {request.path}" if exc.status in (404, 405) else (
            exc.text or exc.reason)
        return web.json_response({"error": what}, status=exc.status)


def _peer(request: web.Request) -> str:
    host = request.remote or ""
    return f"ipv6:[{host}]" if ":" in host else f"ipv4:{host}"


class RestRoutes:
    def __init__(self, parts: OipParts) -> None:
        self.parts = parts

    def app(self, max_body: int) -> web.Application:
        app = web.Application(middlewares=[_errors], client_max_size=max_body)
        add = app.router.add_get
        add("/v2", self.server_metadata)
        add("/v2/health/live", self.live)
        add("/v2/health/ready", self.ready)
        add("/v2/models/stats", self.statistics)
        for base in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
            add(base, self.model_metadata)
            add(base + "/ready", self.model_ready)
            add(base + "/config", self.model_config)
            add(base + "/stats", self.statistics)
            app.router.add_post(base + "/infer", self.infer)
        return app

    def _grant(self, request: web.Request) -> Grant | None:
        if self.parts.detector.draining:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is shutting down (draining)")
        return self.parts.guard.grant(request.headers.get("Authorization"))

    def _model(self, request: web.Request) -> tuple[str, Any, Grant | None]:
        grant = self._grant(request)
        name = request.match_info["name"]
        model = resolve(self.parts.catalog, name, request.match_info.get("version", ""))
        self.parts.guard.check_scope(grant, model, name)
        return name, model, grant

    async def live(self, request: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, request: web.Request) -> web.Response:
        ready = not self.parts.detector.draining
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, request: web.Request) -> web.Response:
        self._grant(request)
        return as_json(describe.server_metadata())

    async def model_metadata(self, request: web.Request) -> web.Response:
        name, model, _ = self._model(request)
        return as_json(describe.model_metadata(name, model))

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self._model(request)
        except Rejected:
            raise
        except RequestError as exc:
            return web.json_response({"ready": False, "error": exc.message}, status=400)
        return web.json_response({"ready": True})

    async def model_config(self, request: web.Request) -> web.Response:
        name, model, _ = self._model(request)
        return as_json(describe.model_config(name, model))

    async def statistics(self, request: web.Request) -> web.Response:
        stats = self.parts.statistics
        if "name" in request.match_info:
            name, model, _ = self._model(request)
            pairs = [(name, model)]
        else:
            grant = self._grant(request)
            pairs = [(m.key, m) for m in self.parts.catalog.models.values()
                     if grant is None or grant.allows(m.key, m.name)]
        return as_json(ip.ModelStatisticsResponse(model_stats=[
            describe.model_statistics(n, m, stats.of(m.key)) for n, m in pairs]))

    async def infer(self, request: web.Request) -> web.Response:
        label, request_id = request.match_info["name"], ""
        try:
            name, model, grant = self._model(request)
            label = model.key
            self.parts.guard.take(grant, _peer(request), model)
            body = parse_request(await request.read(), request.headers.get(HEADER_LENGTH))
            request_id = body.request_id
            options = options_of(body.parameters)
            images = images_of(body.inputs, model.config.batching.max_batch_size)
            names = [n for n, _ in body.outputs]
            every = binary_output(body.parameters, default=False)
            call = InferCall(model, body.request_id, images, options, names)
            tensors = await infer(self.parts.core, call, deadline_of(None, options),
                                  _peer(request))
        except RequestError as exc:
            record_refusal(self.parts.core, exc, request_id, label, _peer(request))
            raise
        asked = dict(body.outputs)
        binary = {t.name: every if asked.get(t.name) is None else bool(asked[t.name])
                  for t in tensors}
        params: dict[str, Any] = {"served_as": model.key}
        if marks_final(body.parameters):
            params["triton_final_response"] = True
        head = {"model_name": name, "model_version": model.manifest.version,
                "id": body.request_id, "parameters": params}
        data, header_length = encode_response(head, tensors, binary)
        response = web.Response(body=data, content_type=(
            "application/json" if header_length is None else "application/octet-stream"))
        if header_length is not None:
            response.headers[HEADER_LENGTH] = str(header_length)
        return response


def ssl_context(config: ServerConfig) -> ssl.SSLContext | None:
    """TLS from the gRPC port's files (checked at start by security.load_security)."""
    if config.tls_cert_file is None or config.tls_key_file is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    if config.tls_client_ca_file is not None:
        context.load_verify_locations(cafile=config.tls_client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


class RestEndpoint:
    """The REST port: `start` binds it (0: a free port) and returns the port."""

    def __init__(self, parts: OipParts, config: ServerConfig) -> None:
        self.config = config
        self.runner = web.AppRunner(RestRoutes(parts).app(config.max_message_bytes),
                                    access_log=None, shutdown_timeout=config.drain_grace_s)
        self.port: int | None = None

    async def start(self, port: int, reuse_port: bool = False) -> int:
        host = self.config.host.removeprefix("[").removesuffix("]")
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, reuse_port=reuse_port)
        await self.runner.setup()
        site = web.SockSite(self.runner, sock, ssl_context=ssl_context(self.config))
        await site.start()
        self.port = int(sock.getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop accepting; requests in flight finish (up to drain_grace_s)."""
        await self.runner.cleanup()
