"""The server's gRPC services, with request parsing that cannot fail the call.

The generated `add_*Servicer_to_server` functions parse requests with `FromString`: bytes that
are not a valid message (a corrupt wire format, a string field that is not UTF-8) raise inside
gRPC, and the caller gets UNKNOWN "Unexpected <class 'DecodeError'>: ...". Here such bytes
become an `Unparsable`, which the servicer answers with INVALID_ARGUMENT (one stream frame's
status, on a stream, which goes on). This module adds the Detector service; the Open Inference
Protocol's (oip/wire.py) uses the same `parser` and `add_service`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from detserve.protos import detection_pb2 as pb
from detserve.server.errors import RequestError, clip, invalid

SERVICE = "detserve.v1.Detector"
M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class Unparsable:
    """A request whose bytes did not parse; the fields the Detector request path reads of any
    request (ids, model) read as unset."""

    type_name: str
    error: str
    request_id: str = ""
    frame_id: int = 0
    model: str = ""

    def refusal(self) -> RequestError:
        return invalid(f"the request is not a valid {self.type_name} message: "
                       f"{clip(self.error, 200)}")


Incoming: TypeAlias = pb.DetectRequest | Unparsable


def parser(message: type[M]) -> Callable[[bytes], M | Unparsable]:
    name = message.DESCRIPTOR.full_name

    def parse(data: bytes) -> M | Unparsable:
        try:
            return message.FromString(data)
        except DecodeError as exc:
            # protobuf's text names the type and what was wrong ("String field had bad UTF-8").
            return Unparsable(name, str(exc).rpartition(": ")[2] or "wire format was corrupt")

    return parse


def add_detector_service(servicer: Any, server: grpc.aio.Server) -> None:
    """`servicer`'s four RPCs on `server`, as the generated function adds them, with `parser`s."""
    handlers = {
        "Detect": grpc.unary_unary_rpc_method_handler(
            servicer.Detect, parser(pb.DetectRequest), pb.DetectResponse.SerializeToString),
        "DetectStream": grpc.stream_stream_rpc_method_handler(
            servicer.DetectStream, parser(pb.DetectRequest),
            pb.DetectResponse.SerializeToString),
        "ListModels": grpc.unary_unary_rpc_method_handler(
            servicer.ListModels, parser(pb.ListModelsRequest),
            pb.ListModelsResponse.SerializeToString),
        "GetModelInfo": grpc.unary_unary_rpc_method_handler(
            servicer.GetModelInfo, parser(pb.GetModelInfoRequest),
            pb.ModelInfo.SerializeToString),
    }
    add_service(server, SERVICE, handlers)


def add_service(server: grpc.aio.Server, service: str,
                handlers: dict[str, grpc.RpcMethodHandler]) -> None:
    """`handlers` (method name -> handler) as `service`'s methods on `server`, registered both
    ways the generated functions register them (generic, and by method for the fast path)."""
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    server.add_registered_method_handlers(service, handlers)
