"""Open Inference Protocol inputs, protocol-neutral: the IMAGE tensor and the request parameters.

gRPC (service.py) and REST (rest.py) both reduce a request to `Tensor`s and a mapping of plain
parameter values; this module turns them into the images and `InferOptions` of one call, or
raises RequestError INVALID_ARGUMENT saying what to send instead.

IMAGE, the one input:
- BYTES, shape [B] or [B, 1]: B encoded JPEG/PNG files, as elements (gRPC `bytes_contents`,
  JSON base64 strings) or raw (each element its 4-byte little-endian length, then its bytes);
- UINT8, shape [1, N] or [N]: the N bytes of one file (NVIDIA DALI's convention).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from detserve.server.errors import RequestError, invalid

INPUT_NAME = "IMAGE"
INPUT_HELP = (f"send one input {INPUT_NAME!r}: BYTES of shape [B] or [B, 1] (encoded JPEG/PNG "
              f"files), or UINT8 of shape [1, N] (one file's bytes)")
MAX_UINT32 = 2**32 - 1  # the detserve.v1 fields these parameters fill are uint32
ParamValue = bool | int | float | str | list[int]
# Parameters Triton's clients send with their no-op values; anything else is refused.
NO_OP = {"priority": 0, "sequence_id": 0, "sequence_start": False, "sequence_end": False}
# perf_analyzer asks for it on every request: each reply is then marked final (the only reply
# to a request here, as from any model that is not decoupled).
FINAL_RESPONSE = "triton_enable_empty_final_response"
PARAMETERS = ("score_threshold", "iou_threshold", "max_detections", "class_ids", "timeout",
              "priority", "binary_data_output", FINAL_RESPONSE)


@dataclass(frozen=True)
class Tensor:
    """One input as a request carried it: `elements` (typed contents, JSON data) or `raw`."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    elements: Sequence[bytes] | Sequence[int] | None = None
    raw: bytes | None = None


@dataclass(frozen=True)
class InferOptions:
    """The request parameters detserve reads; None: the model's manifest value."""

    score_threshold: float | None = None
    iou_threshold: float | None = None
    max_detections: int | None = None
    class_ids: tuple[int, ...] = ()
    timeout_s: float | None = None  # `timeout`, sent in microseconds; 0: none


def split_bytes(raw: bytes, name: str = INPUT_NAME) -> list[bytes]:
    """BYTES elements from their raw form: each a 4-byte little-endian length, then its bytes."""
    out: list[bytes] = []
    at = 0
    while at < len(raw):
        if len(raw) - at < 4:
            raise invalid(f"raw {name} contents: element {len(out)} starts with "
                          f"{len(raw) - at} bytes, not the 4-byte little-endian length prefix")
        (size,) = struct.unpack_from("<I", raw, at)
        at += 4
        if size > len(raw) - at:
            raise invalid(f"raw {name} contents: element {len(out)} declares {size} bytes, "
                          f"{len(raw) - at} remain")
        out.append(raw[at:at + size])
        at += size
    return out


def join_bytes(elements: Sequence[bytes]) -> bytes:
    """The raw form of BYTES elements (the inverse of split_bytes)."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def _bytes_images(tensor: Tensor) -> list[bytes]:
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise invalid(f"input {INPUT_NAME} BYTES has shape {list(shape)}; expected [B] or "
                      f"[B, 1] with B >= 1 images")
    if tensor.raw is not None:
        images = split_bytes(tensor.raw)
    else:
        images = [e for e in tensor.elements or () if isinstance(e, bytes)]
    if len(images) != shape[0]:
        raise invalid(f"input {INPUT_NAME} has shape {list(shape)} but carries {len(images)} "
                      f"element(s); send one encoded image per batch row")
    return images


def _uint8_image(tensor: Tensor) -> list[bytes]:
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[0] == 1)):
        raise invalid(f"input {INPUT_NAME} UINT8 has shape {list(shape)}; expected [1, N] (one "
                      f"file's N bytes); send several images as BYTES [B, 1]")
    size = shape[-1]
    if tensor.raw is not None:
        data = tensor.raw
    else:
        values = list(tensor.elements or ())
        if any(not isinstance(v, int) or not 0 <= v <= 255 for v in values):
            raise invalid(f"input {INPUT_NAME} UINT8 holds values outside 0..255")
        data = bytes(values)  # type: ignore[arg-type]
    if len(data) != size:
        raise invalid(f"input {INPUT_NAME} UINT8 has shape {list(shape)} but carries "
                      f"{len(data)} bytes")
    return [data]


def images_of(inputs: Sequence[Tensor], max_batch_size: int) -> list[bytes]:
    """The encoded images of a request: B files, B <= the model's max_batch_size."""
    if len(inputs) != 1 or inputs[0].name != INPUT_NAME:
        names = [t.name for t in inputs]
        raise invalid(f"got input(s) {names}; {INPUT_HELP}")
    tensor = inputs[0]
    if any(d < 0 for d in tensor.shape):
        raise invalid(f"input {INPUT_NAME} has shape {list(tensor.shape)}: dimensions must be "
                      f">= 0")
    if tensor.datatype == "BYTES":
        images = _bytes_images(tensor)
    elif tensor.datatype == "UINT8":
        images = _uint8_image(tensor)
    else:
        raise invalid(f"input {INPUT_NAME} has datatype {tensor.datatype!r}; {INPUT_HELP}")
    if len(images) > max_batch_size:
        raise invalid(f"{len(images)} images in one request; the model's max_batch_size is "
                      f"{max_batch_size} (ModelConfig): split the request")
    return images


def _number(name: str, value: ParamValue) -> float:
    if isinstance(value, bool | list):
        raise invalid(f"parameter {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise invalid(f"parameter {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise invalid(f"parameter {name} must be a finite number, got {value!r}")
    return number


def _integer(name: str, value: ParamValue) -> int:
    number = _number(name, value)
    if number != int(number):
        raise invalid(f"parameter {name} must be an integer, got {value!r}")
    return int(number)


def _class_ids(value: ParamValue) -> tuple[int, ...]:
    """An integer, a list of them, or text: "0,2" or "[0, 2]"."""
    items: list[ParamValue]
    if isinstance(value, list):
        items = list(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            parsed = json.loads(text) if text.startswith("[") else text.split(",")
        except json.JSONDecodeError:
            raise invalid(f"parameter class_ids {value!r} is not a list of class ids such as "
                          f"'0,2' or '[0, 2]'") from None
        items = [p.strip() if isinstance(p, str) else p for p in parsed if p != ""]
    else:
        items = [value]
    ids = tuple(_integer("class_ids", v) for v in items)
    if any(not 0 <= i <= MAX_UINT32 for i in ids):
        raise invalid(f"parameter class_ids must be class ids >= 0, got {value!r}")
    return ids


def options_of(params: Mapping[str, ParamValue]) -> InferOptions:
    """The request's parameters, checked; ranges against the model are checked later, by the
    path detserve.v1 requests take (detect.decode_params)."""
    unknown = sorted(k for k in params if k not in PARAMETERS and k not in NO_OP)
    if unknown:
        raise invalid(f"unknown request parameter(s) {unknown}; detserve reads "
                      f"{sorted(PARAMETERS)}")
    for name, neutral in NO_OP.items():
        if name in params and params[name] != neutral:
            what = "request priorities" if name == "priority" else "sequences"
            raise invalid(f"parameter {name}={params[name]!r}: detserve has no {what}; omit it")
    get = params.get
    timeout = get("timeout")
    timeout_us = None if timeout is None else _integer("timeout", timeout)
    if timeout_us is not None and timeout_us < 0:
        raise invalid(f"parameter timeout must be >= 0 microseconds, got {timeout!r}")
    top_raw = get("max_detections")
    top = None if top_raw is None else _integer("max_detections", top_raw)
    if top is not None and not 1 <= top <= MAX_UINT32:
        raise invalid(f"parameter max_detections must be >= 1, got {top}")
    score, iou, classes = get("score_threshold"), get("iou_threshold"), get("class_ids")
    return InferOptions(
        score_threshold=None if score is None else _number("score_threshold", score),
        iou_threshold=None if iou is None else _number("iou_threshold", iou),
        max_detections=top,
        class_ids=() if classes is None else _class_ids(classes),
        timeout_s=timeout_us / 1e6 if timeout_us else None,
    )


def marks_final(params: Mapping[str, ParamValue]) -> bool:
    """The caller asked for `triton_final_response` on its reply."""
    value = params.get(FINAL_RESPONSE, False)
    if not isinstance(value, bool):
        raise invalid(f"parameter {FINAL_RESPONSE} must be true or false, got {value!r}")
    return value


def binary_output(params: Mapping[str, ParamValue], default: bool) -> bool:
    value = params.get("binary_data_output", default)
    if not isinstance(value, bool):
        raise invalid(f"parameter binary_data_output must be true or false, got {value!r}")
    return value


__all__ = ["InferOptions", "RequestError", "Tensor", "images_of", "join_bytes", "options_of",
           "split_bytes"]
