"""Request failures as gRPC status codes: one mapping used by unary calls and streams alike.

Internals never reach a caller: a server or engine fault leaves as INTERNAL "internal error,
request id X" (`internal_error`), and its detail (exception type and text) goes to the request's
log line, where the operator finds it by that id. Text a caller sent is echoed only clipped
(`clip`), so an error about a 16 KB model name stays a short, deliverable message.
"""

from __future__ import annotations

import grpc

from detserve.engines.preprocess import ImageError
from detserve.server.batcher import (
    BatcherClosedError,
    BatcherFailedError,
    DeadlineExpiredError,
    QueueFullError,
)
from detserve.server.text import clip

# Codes that mean a fault on the server side: their messages are replaced by `internal_error`.
FAULT_CODES = frozenset({grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
                         grpc.StatusCode.DATA_LOSS})


class RequestError(Exception):
    """A request failed with `code`; `message` is what the caller reads, `detail` (faults
    only) what the log line adds to it."""

    def __init__(self, code: grpc.StatusCode, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.detail = detail


def invalid(message: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def internal_error(request_id: str, detail: str) -> RequestError:
    """The INTERNAL a caller sees for a fault: the request id only; `detail` is for the log."""
    return RequestError(grpc.StatusCode.INTERNAL, f"internal error, request id {request_id}",
                        detail)


def fault_detail(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def to_request_error(exc: BaseException) -> RequestError:
    """Map any failure of the request path to the status the caller sees.

    Unknown exceptions are engine or server faults: INTERNAL, with the exception's type and text
    as the detail. DEADLINE_EXCEEDED comes only from the deadline checks (DeadlineExpiredError):
    a TimeoutError raised inside an engine is a fault like any other.
    """
    if isinstance(exc, RequestError):
        return exc
    if isinstance(exc, ImageError):
        return invalid(str(exc))
    if isinstance(exc, QueueFullError):
        return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {exc}")
    if isinstance(exc, DeadlineExpiredError):
        return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded: {exc}")
    if isinstance(exc, BatcherFailedError):
        return RequestError(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, BatcherClosedError):
        return RequestError(grpc.StatusCode.UNAVAILABLE, f"server is shutting down: {exc}")
    detail = fault_detail(exc)
    return RequestError(grpc.StatusCode.INTERNAL, f"internal error: {detail}", detail)


def for_caller(error: RequestError, request_id: str) -> RequestError:
    """`error` as the caller may see it: a fault becomes `internal_error` (its message, e.g. one
    sent over from the engine process, kept as the detail); anything else is unchanged."""
    if error.code not in FAULT_CODES:
        return error
    return internal_error(request_id, error.detail or error.message)


def status_code_number(code: grpc.StatusCode) -> int:
    """The numeric code that google.rpc.Status carries."""
    value = code.value[0]
    return int(value)


__all__ = ["FAULT_CODES", "RequestError", "clip", "for_caller", "internal_error", "invalid",
           "status_code_number", "to_request_error"]
