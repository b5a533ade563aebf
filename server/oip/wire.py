"""The protocol's gRPC service on a server, with request parsing that cannot fail the call.

Requests are parsed by server/wire.py's `parser`, as the Detector's are: bytes that are not a
valid message become an `Unparsable`; a unary call is answered INVALID_ARGUMENT, a stream
request gets its in-band error and the stream goes on (service.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from detserve.protos import inference_pb2 as ip
from detserve.server.wire import Unparsable, add_service, parser

SERVICE = ip.DESCRIPTOR.services_by_name["GRPCInferenceService"]


def _refusing(method: Callable[[Any, Any], Awaitable[Any]]
              ) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Unparsable):
            error = request.refusal()
            await context.abort(error.code, error.message)
        return await method(request, context)

    return call


def add_inference_service(servicer: Any, server: grpc.aio.Server) -> None:
    """`servicer`'s RPCs on `server`, as the generated function adds them, with `parser`s."""
    handlers = {}
    for method in SERVICE.methods:
        request = getattr(ip, method.input_type.name)
        reply = getattr(ip, method.output_type.name)
        behaviour = getattr(servicer, method.name)
        if method.client_streaming:  # ModelStreamInfer: Unparsable items reach the servicer
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour, parser(request), reply.SerializeToString)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _refusing(behaviour), parser(request), reply.SerializeToString)
    add_service(server, SERVICE.full_name, handlers)
