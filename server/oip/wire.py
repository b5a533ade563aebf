"""The protocol's gRPC service on a server, with request parsing that cannot fail the call.

The generated `add_GRPCInferenceServiceServicer_to_server` parses with `FromString`: bytes that
are not a valid message raise inside gRPC, and the caller gets UNKNOWN "Unexpected <class
'DecodeError'>". Here they become an `Unparsed`: a unary call is answered INVALID_ARGUMENT, a
stream request gets its in-band error and the stream goes on (service.py).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from detserve.protos import inference_pb2 as ip
from detserve.server.errors import RequestError, invalid

SERVICE = ip.DESCRIPTOR.services_by_name["GRPCInferenceService"]
SHOWN = 200  # characters of protobuf's complaint passed on
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Unparsed:
    type_name: str
    error: str

    def refusal(self) -> RequestError:
        return invalid(f"the request is not a valid {self.type_name} message: "
                       f"{self.error[:SHOWN]}")


def parser(message: type[M]) -> Callable[[bytes], M | Unparsed]:
    name = message.DESCRIPTOR.full_name

    def parse(data: bytes) -> M | Unparsed:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            return Unparsed(name, str(exc).rpartition(": ")[2] or "wire format was corrupt")

    return parse


def _refusing(method: Callable[[Any, Any], Awaitable[Any]]
              ) -> Callable[[Any, Any], Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Unparsed):
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
        if method.client_streaming:  # ModelStreamInfer: Unparsed items reach the servicer
            handlers[method.name] = grpc.stream_stream_rpc_method_handler(
                behaviour, parser(request), reply.SerializeToString)
        else:
            handlers[method.name] = grpc.unary_unary_rpc_method_handler(
                _refusing(behaviour), parser(request), reply.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name,
                                                                          handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)
