"""Request failures as gRPC status codes: one mapping used by unary calls and streams alike."""

from __future__ import annotations

import asyncio

import grpc

from detserve.engines.preprocess import ImageError
from detserve.server.batcher import BatcherClosedError, DeadlineExpiredError, QueueFullError


class RequestError(Exception):
    """A request failed with `code`; `message` is what the caller reads."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def to_request_error(exc: BaseException) -> RequestError:
    """Map any failure of the request path to the status the caller sees.

    Unknown exceptions are engine or server faults: INTERNAL, with the exception's type and text so
    an operator can find it in the logs without the caller learning more than that.
    """
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, ImageError):
        return invalid(str(exc))
    if isinstance(exc, QueueFullError):
        return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {exc}")
    if isinstance(exc, DeadlineExpiredError | asyncio.TimeoutError):
        return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded: {exc}")
    if isinstance(exc, BatcherClosedError):
        return RequestError(grpc.StatusCode.UNAVAILABLE, f"server is shutting down: {exc}")
    return RequestError(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}")


def status_code_number(code: grpc.StatusCode) -> int:
    """The numeric code that google.rpc.Status carries."""
    value = code.value[0]
    return int(value)
