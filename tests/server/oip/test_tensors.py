"""The protocol-neutral input rules: BYTES framing, IMAGE shapes, request parameters."""

from __future__ import annotations

import grpc
import pytest

from detserve.server.errors import RequestError
from detserve.server.oip.tensors import (
    InferOptions,
    Tensor,
    images_of,
    join_bytes,
    options_of,
    split_bytes,
)


def test_bytes_framing_round_trips_and_rejects_truncation() -> None:
    elements = [b"", b"a", b"\x00" * 300]
    raw = join_bytes(elements)
    assert raw[:4] == b"\x00\x00\x00\x00" and raw[4:8] == b"\x01\x00\x00\x00"
    assert split_bytes(raw) == elements
    with pytest.raises(RequestError, match="element 1 starts with 2 bytes"):
        split_bytes(join_bytes([b"x"]) + b"\x01\x00")


@pytest.mark.parametrize(("tensor", "count"), [
    (Tensor("IMAGE", "BYTES", (2,), elements=[b"a", b"b"]), 2),
    (Tensor("IMAGE", "BYTES", (2, 1), raw=join_bytes([b"a", b"b"])), 2),
    (Tensor("IMAGE", "UINT8", (1, 3), raw=b"abc"), 1),
    (Tensor("IMAGE", "UINT8", (3,), elements=[97, 98, 99]), 1),
])
def test_accepted_image_tensors(tensor: Tensor, count: int) -> None:
    images = images_of([tensor], max_batch_size=4)
    assert len(images) == count
    assert images[-1] in (b"b", b"abc")


@pytest.mark.parametrize(("tensors", "words"), [
    ([], "got input(s) []"),
    ([Tensor("IMAGE", "BYTES", (1,), elements=[b"a"])] * 2, "send one input"),
    ([Tensor("IMAGE", "BYTES", (1, 2), elements=[b"a", b"b"])], "expected [B] or [B, 1]"),
    ([Tensor("IMAGE", "UINT8", (2, 3), raw=b"abcdef")], "send several images as BYTES"),
    ([Tensor("IMAGE", "UINT8", (1, 4), raw=b"abc")], "carries 3 bytes"),
    ([Tensor("IMAGE", "UINT8", (1, 1), elements=[256])], "outside 0..255"),
    ([Tensor("IMAGE", "BYTES", (-1,), elements=[])], ">= 0"),
    ([Tensor("IMAGE", "BYTES", (5,), elements=[b"x"] * 5)], "max_batch_size is 4"),
])
def test_rejected_image_tensors_say_why(tensors: list[Tensor], words: str) -> None:
    with pytest.raises(RequestError) as info:
        images_of(tensors, max_batch_size=4)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.message


def test_parameters_in_every_form_clients_send() -> None:
    assert options_of({}) == InferOptions()
    got = options_of({"score_threshold": "0.5", "iou_threshold": 0.4, "max_detections": 10,
                      "class_ids": "[0, 2]", "timeout": 250_000, "priority": 0})
    assert got == InferOptions(0.5, 0.4, 10, (0, 2), 0.25)
    assert options_of({"class_ids": "1, 3"}).class_ids == (1, 3)
    assert options_of({"class_ids": [4]}).class_ids == (4,)
    assert options_of({"class_ids": 2}).class_ids == (2,)
    assert options_of({"timeout": 0}).timeout_s is None  # Triton's 0: no timeout


@pytest.mark.parametrize(("params", "words"), [
    ({"score_treshold": 0.5}, "unknown request parameter(s) ['score_treshold']"),
    ({"priority": 3}, "no request priorities"),
    ({"sequence_id": 9}, "no sequences"),
    ({"max_detections": 0}, "max_detections must be >= 1"),
    ({"max_detections": 2.5}, "must be an integer"),
    ({"score_threshold": True}, "must be a number"),
    ({"score_threshold": "nan"}, "finite"),
    ({"class_ids": "[0,"}, "not a list of class ids"),
    ({"class_ids": -1}, "class ids >= 0"),
    ({"timeout": -5}, ">= 0 microseconds"),
])
def test_bad_parameters_are_invalid_argument(params: dict[str, object], words: str) -> None:
    with pytest.raises(RequestError) as info:
        options_of(params)  # type: ignore[arg-type]
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert words in info.value.message
