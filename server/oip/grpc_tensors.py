"""Tensors and parameters between the protocol's protobuf messages and tensors.py/outputs.py.

Inputs come as typed `contents` or, for every input at once, as `raw_input_contents`; outputs
leave as `raw_output_contents` (Triton's own default) or, when asked, as typed contents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from detserve.protos import inference_pb2 as ip
from detserve.server.catalog import ModelView
from detserve.server.errors import invalid
from detserve.server.oip.outputs import OutputTensor
from detserve.server.oip.tensors import ParamValue, Tensor, join_bytes

ELEMENTS = {"BYTES": "bytes_contents", "UINT8": "uint_contents"}


def parameter_value(param: ip.InferParameter) -> ParamValue:
    choice = param.WhichOneof("parameter_choice")
    if choice is None:
        raise invalid("a parameter has no value set")
    value: ParamValue = getattr(param, choice)
    return value


def parameters_of(params: Mapping[str, ip.InferParameter], where: str) -> dict[str, ParamValue]:
    try:
        return {k: parameter_value(v) for k, v in params.items()}
    except Exception as exc:
        raise invalid(f"{where} parameters: {exc}") from None


def tensors_of(request: ip.ModelInferRequest) -> list[Tensor]:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise invalid(f"raw_input_contents holds {len(raw)} entries for {len(request.inputs)} "
                      f"input(s): send one per input, in input order")
    tensors = []
    for index, t in enumerate(request.inputs):
        shape = tuple(int(d) for d in t.shape)
        if raw:
            if t.HasField("contents"):
                raise invalid(f"input {t.name} has contents and raw_input_contents; send one")
            tensors.append(Tensor(t.name, t.datatype, shape, raw=raw[index]))
            continue
        field = ELEMENTS.get(t.datatype)
        elements: Sequence[bytes] | Sequence[int] = (
            list(getattr(t.contents, field)) if field is not None else [])
        tensors.append(Tensor(t.name, t.datatype, shape, elements=elements))
    return tensors


def _raw(tensor: OutputTensor) -> bytes:
    if tensor.array is not None:
        return tensor.array.tobytes()
    return join_bytes(tensor.elements)


def _typed(out: ip.ModelInferResponse.InferOutputTensor, tensor: OutputTensor) -> None:
    if tensor.array is None:
        out.contents.bytes_contents.extend(tensor.elements)
    elif tensor.datatype == "FP32":
        out.contents.fp32_contents.extend(tensor.array.ravel().tolist())
    else:
        out.contents.int_contents.extend(tensor.array.ravel().tolist())


def infer_response(request: ip.ModelInferRequest, model: ModelView,
                   tensors: Sequence[OutputTensor], raw: bool) -> ip.ModelInferResponse:
    response = ip.ModelInferResponse(
        model_name=request.model_name or model.key, model_version=model.manifest.version,
        id=request.id)
    response.parameters["served_as"].string_param = model.key
    for tensor in tensors:
        out = response.outputs.add(name=tensor.name, datatype=tensor.datatype,
                                   shape=list(tensor.shape))
        if raw:
            response.raw_output_contents.append(_raw(tensor))
        else:
            _typed(out, tensor)
    return response
