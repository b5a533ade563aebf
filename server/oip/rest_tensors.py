"""The protocol's HTTP/JSON bodies, with Triton's binary tensor extension.

A request body is JSON, or, with the header `Inference-Header-Content-Length: N`, N bytes of
JSON followed by the binary data of the inputs whose parameters give `binary_data_size`, in
input order (BYTES in the raw form: each element its 4-byte little-endian length, then its
bytes). In JSON, BYTES elements are base64 strings (encoded image files are not text).

An output is sent binary (after the JSON, its size in `binary_data_size`) when its request asks
for it (`binary_data: true`) or the request's `binary_data_output` is true, else as JSON `data`;
the labels output stays text in JSON.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from detserve.server.errors import invalid
from detserve.server.oip.outputs import OutputTensor
from detserve.server.oip.tensors import ParamValue, Tensor, join_bytes

HEADER_LENGTH = "Inference-Header-Content-Length"
SHOWN = 200  # characters of a bad body quoted back


@dataclass(frozen=True)
class RestRequest:
    request_id: str
    parameters: dict[str, ParamValue]
    inputs: list[Tensor]
    outputs: list[tuple[str, bool | None]]  # (name, binary_data if the request said)


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        return [x for item in data for x in _flat(item)]
    return [data]


def _b64(value: Any, index: int) -> bytes:
    if not isinstance(value, str):
        raise invalid(f"input IMAGE element {index}: a JSON BYTES element must be a base64 "
                      f"string, got {type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise invalid(f"input IMAGE element {index} is not valid base64 (encode the image "
                      f"file's bytes, e.g. `base64 -w0 image.jpg`)") from None


def _parameters(raw: Any, where: str) -> dict[str, ParamValue]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise invalid(f"{where} parameters must be a JSON object, got {raw!r}"[:SHOWN])
    return dict(raw)


def _shape(raw: Any, name: str) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                            for d in raw):
        raise invalid(f"input {name}: shape must be a list of integers, got {raw!r}"[:SHOWN])
    return tuple(raw)


def _input(raw: Any, binary: memoryview, at: int) -> tuple[Tensor, int]:
    """One input tensor, and the offset into the binary data after it."""
    if not isinstance(raw, dict):
        raise invalid(f"each input must be a JSON object, got {raw!r}"[:SHOWN])
    name, datatype = raw.get("name"), raw.get("datatype")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise invalid("each input needs a string 'name' and 'datatype'")
    shape = _shape(raw.get("shape"), name)
    size = _parameters(raw.get("parameters"), f"input {name}").get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise invalid(f"input {name}: binary_data_size must be an integer >= 0")
        if at + size > len(binary):
            raise invalid(f"input {name}: binary_data_size {size} but {len(binary) - at} "
                          f"binary bytes remain after the JSON header")
        return Tensor(name, datatype, shape, raw=bytes(binary[at:at + size])), at + size
    if "data" not in raw:
        raise invalid(f"input {name} has neither 'data' nor parameters.binary_data_size")
    values = _flat(raw["data"])
    if datatype == "BYTES":
        return Tensor(name, datatype, shape, elements=[_b64(v, i) for i, v in
                                                       enumerate(values)]), at
    return Tensor(name, datatype, shape, elements=values), at


def _output(raw: Any) -> tuple[str, bool | None]:
    if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
        raise invalid(f"each requested output must be an object with a 'name', got {raw!r}"
                      [:SHOWN])
    flag = _parameters(raw.get("parameters"), f"output {raw['name']}").get("binary_data")
    if flag is not None and not isinstance(flag, bool):
        raise invalid(f"output {raw['name']}: binary_data must be true or false")
    return raw["name"], flag


def parse_request(body: bytes, header_length: str | None) -> RestRequest:
    """The request in `body`; INVALID_ARGUMENT naming what is wrong."""
    if header_length is not None:
        try:
            split = int(header_length)
        except ValueError:
            raise invalid(f"{HEADER_LENGTH} must be an integer, got {header_length!r}") from None
        if not 0 <= split <= len(body):
            raise invalid(f"{HEADER_LENGTH} is {split}, the body has {len(body)} bytes")
    else:
        split = len(body)
    try:
        doc = json.loads(body[:split])
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"the request body is not JSON: {exc}"[:SHOWN]) from None
    if not isinstance(doc, dict):
        raise invalid("the request body must be a JSON object with 'inputs'")
    inputs_raw = doc.get("inputs")
    if not isinstance(inputs_raw, list):
        raise invalid("the request needs 'inputs', a list of tensors")
    binary = memoryview(body)[split:]
    at = 0
    inputs = []
    for raw in inputs_raw:
        tensor, at = _input(raw, binary, at)
        inputs.append(tensor)
    outputs_raw = doc.get("outputs") or []
    if not isinstance(outputs_raw, list):
        raise invalid("'outputs' must be a list of {'name': ...} objects")
    request_id = doc.get("id", "")
    if not isinstance(request_id, str):
        raise invalid(f"'id' must be a string, got {request_id!r}"[:SHOWN])
    return RestRequest(request_id, _parameters(doc.get("parameters"), "request"), inputs,
                       [_output(o) for o in outputs_raw])


def _json_data(tensor: OutputTensor) -> list[Any]:
    if tensor.array is not None:
        data: list[Any] = tensor.array.ravel().tolist()
        return data
    return [e.decode() for e in tensor.elements]


def encode_response(head: Mapping[str, Any], tensors: Sequence[OutputTensor],
                    binary: Mapping[str, bool]) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary data follows it."""
    outputs = []
    blobs = []
    for tensor in tensors:
        entry: dict[str, Any] = {"name": tensor.name, "datatype": tensor.datatype,
                                 "shape": list(tensor.shape)}
        if binary.get(tensor.name, False):
            blob = tensor.array.tobytes() if tensor.array is not None else join_bytes(
                tensor.elements)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = _json_data(tensor)
        outputs.append(entry)
    text = json.dumps({**head, "outputs": outputs}).encode()
    if not blobs:
        return text, None
    return text + b"".join(blobs), len(text)
