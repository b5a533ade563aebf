"""Result conversion from real protobuf replies, and request building from each input kind."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
import pytest
from google.rpc import status_pb2

from detserve.client.client import DetectOptions, build_request
from detserve.client.images import encode_rgb, image_from_array, to_image
from detserve.client.results import (
    DetectError,
    model_info_from_proto,
    result_from_proto,
    status_code_from_int,
)
from detserve.protos import detection_pb2 as pb


def _reply(**extra: Any) -> pb.DetectResponse:
    return pb.DetectResponse(
        request_id="r1",
        frame_id=7,
        detections=[
            pb.Detection(class_id=2, label="blue", score=0.75,
                         box=pb.Box(x1=1.5, y1=2.0, x2=30.0, y2=40.25)),
            pb.Detection(class_id=0, label="red", score=0.5, box=pb.Box(x1=0, y1=0, x2=8, y2=9)),
        ],
        timing=pb.Timing(queue_ms=1.25, preprocess_ms=0.5, inference_ms=3.0,
                         postprocess_ms=0.25, total_ms=5.5),
        batch_size=4,
        model="blocks@64",
        model_version="1",
        image_width=64,
        image_height=48,
        nms="host",
        **extra,
    )


def test_result_from_proto_copies_every_field() -> None:
    r = result_from_proto(_reply(), latency_ms=12.5)
    assert r.ok
    assert [d.label for d in r.detections] == ["blue", "red"]
    assert r.detections[0].class_id == 2
    assert r.detections[0].score == pytest.approx(0.75)
    assert r.detections[0].bbox == pytest.approx((1.5, 2.0, 30.0, 40.25))
    assert r.timing.queue_ms == pytest.approx(1.25)
    assert r.timing.total_ms == pytest.approx(5.5)
    assert (r.batch_size, r.model, r.model_version) == (4, "blocks@64", "1")
    assert (r.request_id, r.frame_id, r.image_width, r.image_height) == ("r1", 7, 64, 48)
    assert r.latency_ms == 12.5 and r.nms == "host"


def test_to_json_has_the_seed_lesson_shape() -> None:
    out = result_from_proto(_reply(), latency_ms=28.0).to_json()
    assert out["latency_ms"] == 28.0
    assert out["detections"][0] == {"label": "blue", "class_id": 2, "score": 0.75,
                                    "bbox": [1.5, 2.0, 30.0, 40.25]}
    assert out["batch_size"] == 4 and out["model"] == "blocks@64"
    assert "error" not in out


def test_stream_frame_status_becomes_error() -> None:
    msg = _reply(status=status_pb2.Status(code=3, message="not an image"), dropped_frames=2)
    r = result_from_proto(msg, latency_ms=1.0)
    assert not r.ok and r.error is not None
    assert r.error.code is grpc.StatusCode.INVALID_ARGUMENT
    assert r.error.frame_id == 7
    assert str(r.error) == "INVALID_ARGUMENT (frame 7): not an image"
    assert r.dropped_frames == 2
    assert r.to_json()["error"] == {"code": "INVALID_ARGUMENT", "message": "not an image"}


def test_ok_status_is_not_an_error() -> None:
    assert result_from_proto(_reply(status=status_pb2.Status(code=0)), 1.0).ok


def test_status_code_from_int() -> None:
    assert status_code_from_int(5) is grpc.StatusCode.NOT_FOUND
    assert status_code_from_int(8) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status_code_from_int(999) is grpc.StatusCode.UNKNOWN


def test_detect_error_message_names_code() -> None:
    err = DetectError(grpc.StatusCode.NOT_FOUND, "unknown model 'nope'")
    assert str(err) == "NOT_FOUND: unknown model 'nope'"
    assert err.code is grpc.StatusCode.NOT_FOUND


def test_model_info_from_proto() -> None:
    msg = pb.ModelInfo(
        name="shapes@320", version="3", classes=["a", "b"], input_width=320, input_height=320,
        output_format="yolov8", precision="fp32", engine="onnxruntime", score_threshold=0.25,
        iou_threshold=0.5, max_detections=100, is_default=True, nms="host",
        batching=pb.BatchingSettings(max_batch_size=8, max_queue_delay_ms=2.0,
                                     preferred_batch_sizes=[4, 8], max_queue_size=256,
                                     instances=2),
        metadata={"map50": "0.9"},
    )
    info = model_info_from_proto(msg)
    assert info.classes == ("a", "b") and info.is_default
    assert info.batching.preferred_batch_sizes == (4, 8)
    assert info.batching.instances == 2
    assert info.to_json()["input_size"] == [320, 320]
    assert info.metadata == {"map50": "0.9"}


def test_build_request_sets_optional_fields_only_when_given() -> None:
    frame = np.zeros((4, 6, 3), np.uint8)
    req = build_request(frame, DetectOptions(model="m@1", score_threshold=0.3, class_ids=(1, 2)),
                        request_id="x", frame_id=3)
    assert req.HasField("score_threshold") and req.score_threshold == pytest.approx(0.3)
    assert not req.HasField("iou_threshold") and not req.HasField("max_detections")
    assert list(req.class_ids) == [1, 2]
    assert (req.model, req.request_id, req.frame_id) == ("m@1", "x", 3)
    assert (req.image.raw.height, req.image.raw.width) == (4, 6)
    assert req.image.raw.pixel_format == pb.PIXEL_FORMAT_BGR8  # numpy frames: OpenCV's order
    assert len(req.image.raw.data) == 4 * 6 * 3


def test_image_inputs(tmp_path: Path) -> None:
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 255
    data = encode_rgb(rgb, "png")
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert to_image(path).encoded == data
    assert to_image(str(path)).encoded == data
    assert to_image(data).encoded == data
    gray = image_from_array(np.full((5, 7), 9, np.uint8), "GRAY8")
    assert gray.raw.pixel_format == pb.PIXEL_FORMAT_GRAY8 and gray.raw.data == bytes([9]) * 35


def test_bad_inputs_name_the_value(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="float32"):
        image_from_array(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(4, 4, 3\)"):
        image_from_array(np.zeros((4, 4, 3), np.uint8), "GRAY8")
    with pytest.raises(ValueError, match=r"\(4, 4, 2\)"):
        image_from_array(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(ValueError, match="'YUV'"):
        image_from_array(np.zeros((4, 4, 3), np.uint8), cast(Any, "YUV"))
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        to_image(tmp_path / "missing.jpg")
    with pytest.raises(TypeError, match="int"):
        to_image(cast(Any, 5))
