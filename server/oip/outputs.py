"""The output tensors of one Open Inference Protocol call, laid out as TensorRT's EfficientNMS
pads them: K rows per image (the call's max_detections), the first num_detections real, the
rest zeros. Boxes are x1, y1, x2, y2 in the caller's pixels, as detserve.v1 returns them.

`detection_labels` (BYTES [B, K], the class names; empty strings pad) is sent only when asked
for by name; the four EfficientNMS outputs are sent when a request names none.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detserve.protos import detection_pb2 as pb
from detserve.server.errors import invalid

NUM_DETECTIONS = "num_detections"
BOXES = "detection_boxes"
SCORES = "detection_scores"
CLASSES = "detection_classes"
LABELS = "detection_labels"
DEFAULT_OUTPUTS = (NUM_DETECTIONS, BOXES, SCORES, CLASSES)
DATATYPES = {NUM_DETECTIONS: "INT32", BOXES: "FP32", SCORES: "FP32", CLASSES: "INT32",
             LABELS: "BYTES"}
NUMPY_TYPES = {"INT32": np.dtype("<i4"), "FP32": np.dtype("<f4")}


@dataclass(frozen=True)
class OutputTensor:
    """`array` for numeric outputs, `elements` (flattened row-major) for BYTES."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    array: npt.NDArray[np.generic] | None = None
    elements: tuple[bytes, ...] = ()


def dims(name: str) -> tuple[int, ...]:
    """An output's shape per image (without the batch dimension); -1: K, the call's
    max_detections."""
    return {NUM_DETECTIONS: (1,), BOXES: (-1, 4)}.get(name, (-1,))


def requested(names: Sequence[str]) -> tuple[str, ...]:
    """The outputs to send, in the order asked; every EfficientNMS output when none is named."""
    if not names:
        return DEFAULT_OUTPUTS
    unknown = sorted({n for n in names if n not in DATATYPES})
    if unknown:
        raise invalid(f"unknown output(s) {unknown}; the model's outputs are "
                      f"{list(DATATYPES)}")
    if len(set(names)) != len(names):
        raise invalid(f"output(s) asked for twice: {list(names)}")
    return tuple(names)


def build_outputs(responses: Sequence[pb.DetectResponse], k: int,
                  names: Sequence[str]) -> list[OutputTensor]:
    """The `names` outputs of B detserve.v1 responses (one per image), padded to K rows."""
    b = len(responses)
    count = np.zeros((b, 1), np.dtype("<i4"))
    boxes = np.zeros((b, k, 4), np.dtype("<f4"))
    scores = np.zeros((b, k), np.dtype("<f4"))
    classes = np.zeros((b, k), np.dtype("<i4"))
    labels = [[b""] * k for _ in range(b)]
    for i, response in enumerate(responses):
        dets = response.detections[:k]
        count[i, 0] = len(dets)
        for j, det in enumerate(dets):
            boxes[i, j] = (det.box.x1, det.box.y1, det.box.x2, det.box.y2)
            scores[i, j] = det.score
            classes[i, j] = det.class_id
            labels[i][j] = det.label.encode()
    arrays: dict[str, npt.NDArray[np.generic]] = {
        NUM_DETECTIONS: count, BOXES: boxes, SCORES: scores, CLASSES: classes}
    out = []
    for name in names:
        if name == LABELS:
            flat = tuple(e for row in labels for e in row)
            out.append(OutputTensor(name, "BYTES", (b, k), elements=flat))
        else:
            array = arrays[name]
            out.append(OutputTensor(name, DATATYPES[name], tuple(array.shape), array=array))
    return out
