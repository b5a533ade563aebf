"""The one mapping from request-path failures to gRPC status codes."""

from __future__ import annotations

import grpc
import pytest

from detserve.engines.preprocess import ImageError, ImageTooLargeError
from detserve.server.batcher import BatcherClosedError, DeadlineExpiredError, QueueFullError
from detserve.server.errors import RequestError, for_caller, status_code_number, to_request_error


@pytest.mark.parametrize(("exc", "code", "text"), [
    (ImageError("PNG image is RGBA"), grpc.StatusCode.INVALID_ARGUMENT, "PNG image is RGBA"),
    (ImageTooLargeError("9x9 too big"), grpc.StatusCode.INVALID_ARGUMENT, "9x9 too big"),
    (QueueFullError("queue is full"), grpc.StatusCode.RESOURCE_EXHAUSTED, "server busy"),
    (DeadlineExpiredError("expired after 3 ms"), grpc.StatusCode.DEADLINE_EXCEEDED,
     "expired after 3 ms"),
    (BatcherClosedError("stopping"), grpc.StatusCode.UNAVAILABLE, "shutting down"),
    (RuntimeError("CUDA out of memory"), grpc.StatusCode.INTERNAL,
     "RuntimeError: CUDA out of memory"),
])
def test_to_request_error(exc: Exception, code: grpc.StatusCode, text: str) -> None:
    error = to_request_error(exc)
    assert error.code == code
    assert text in error.message


def test_request_errors_pass_through_and_codes_are_numbers() -> None:
    original = RequestError(grpc.StatusCode.NOT_FOUND, "unknown model 'x'")
    assert to_request_error(original) is original
    assert [status_code_number(c) for c in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND,
                                            grpc.StatusCode.INTERNAL)] == [0, 5, 13]


def test_a_timeout_from_an_engine_is_a_fault_not_a_deadline() -> None:
    assert to_request_error(TimeoutError("watchdog")).code == grpc.StatusCode.INTERNAL


def test_faults_reach_the_caller_as_the_request_id_only() -> None:
    fault = to_request_error(RuntimeError("CUDA out of memory"))
    shown = for_caller(fault, "req-9")
    assert (shown.code, shown.message) == (grpc.StatusCode.INTERNAL,
                                           "internal error, request id req-9")
    assert shown.detail == "RuntimeError: CUDA out of memory"
    # From the engine process a fault arrives as a RequestError whose message is the detail.
    relayed = for_caller(RequestError(grpc.StatusCode.INTERNAL, "internal error: OSError: x"), "r")
    assert (relayed.message, relayed.detail) == ("internal error, request id r",
                                                 "internal error: OSError: x")
    refusal = RequestError(grpc.StatusCode.NOT_FOUND, "unknown model 'x'")
    assert for_caller(refusal, "r") is refusal
