"""Request parsing that cannot fail a call (server/wire.py), shared by the Detector service and
the Open Inference Protocol's (server/oip/wire.py): bytes that are not a message become one
`Unparsable`, refused INVALID_ARGUMENT naming the message type."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf.message import Message

from detserve.protos import detection_pb2 as pb
from detserve.protos import inference_pb2 as ip
from detserve.server.wire import Unparsable, parser

BAD_UTF8 = b"\x0a\x02\xff\xfe"  # field 1 (a string in both messages), two bytes not UTF-8


@pytest.mark.parametrize(("message", "type_name"), [
    (pb.DetectRequest, "detserve.v1.DetectRequest"),
    (ip.ModelInferRequest, "inference.ModelInferRequest"),
])
def test_bytes_that_are_not_the_message_are_refused_invalid_argument(
        message: type[Message], type_name: str) -> None:
    parsed = parser(message)(BAD_UTF8)
    assert isinstance(parsed, Unparsable) and parsed.type_name == type_name
    error = parsed.refusal()
    assert error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert error.message.startswith(f"the request is not a valid {type_name} message: ")
    assert "UTF-8" in error.message


def test_a_valid_message_parses_to_itself() -> None:
    request = ip.ModelInferRequest(model_name="blocks", id="r1")
    assert parser(ip.ModelInferRequest)(request.SerializeToString()) == request


def test_a_corrupt_wire_format_says_so() -> None:
    parsed = parser(pb.DetectRequest)(b"\x0a\x05ab")  # length 5, two bytes follow
    assert isinstance(parsed, Unparsable)
    assert parsed.refusal().message.endswith(parsed.error) and parsed.error
