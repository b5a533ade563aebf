"""inference.proto must be wire-compatible with Triton's own schema: every message, field, enum
value and method we declare exists in tritonclient's copy with the same number and type."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

from detserve.protos import inference_pb2 as ours


def _theirs() -> tuple[FileDescriptor, FileDescriptor]:
    with warnings.catch_warnings():  # its gencode is one protobuf major older: a warning only
        warnings.simplefilter("ignore")
        service = pytest.importorskip("tritonclient.grpc.service_pb2")
        config = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return service.DESCRIPTOR, config.DESCRIPTOR


def _find(name: str, files: tuple[FileDescriptor, ...]) -> Any:
    for file in files:
        for table in (file.message_types_by_name, file.enum_types_by_name):
            if name in table:
                return table[name]
    raise AssertionError(f"Triton's schema has no {name}")


def _type_name(field: Any) -> str:
    if field.message_type is not None:
        return str(field.message_type.full_name)
    if field.enum_type is not None:
        return str(field.enum_type.full_name)
    return ""


def _same_enum(mine: EnumDescriptor, theirs: EnumDescriptor) -> None:
    for value in mine.values:
        assert theirs.values_by_name[value.name].number == value.number, value.name


def _same_message(mine: Descriptor, theirs: Descriptor) -> int:
    checked = 0
    for field in mine.fields:
        other = theirs.fields_by_name.get(field.name)
        assert other is not None, f"{theirs.full_name} has no field {field.name}"
        where = f"{mine.full_name}.{field.name}"
        assert (other.number, other.type, other.is_repeated) == (
            field.number, field.type, field.is_repeated), where
        assert _type_name(other) == _type_name(field), where
        checked += 1
    for nested in mine.nested_types:
        checked += _same_message(nested, theirs.nested_types_by_name[nested.name])
    for enum in mine.enum_types:
        _same_enum(enum, theirs.enum_types_by_name[enum.name])
    return checked


def test_every_message_and_field_matches_tritons_schema() -> None:
    files = _theirs()
    assert ours.DESCRIPTOR.package == "inference"
    checked = 0
    for name, message in ours.DESCRIPTOR.message_types_by_name.items():
        checked += _same_message(message, _find(name, files))
    for name, enum in ours.DESCRIPTOR.enum_types_by_name.items():
        _same_enum(enum, _find(name, files))
    assert checked > 100  # the comparison ran over the whole file


def test_every_method_matches_tritons_service() -> None:
    service_file, _ = _theirs()
    mine = ours.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    theirs = service_file.services_by_name["GRPCInferenceService"]
    assert mine.full_name == "inference.GRPCInferenceService"
    for method in mine.methods:
        other = theirs.methods_by_name[method.name]
        assert other.input_type.full_name == method.input_type.full_name
        assert other.output_type.full_name == method.output_type.full_name
        assert (other.client_streaming, other.server_streaming) == (
            method.client_streaming, method.server_streaming)
    assert [m.name for m in mine.methods] == [
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata",
        "ModelInfer", "ModelStreamInfer", "ModelConfig", "ModelStatistics",
    ]


def test_a_request_built_by_tritonclient_reads_the_same_here() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        service = pytest.importorskip("tritonclient.grpc.service_pb2")
    theirs = service.ModelInferRequest(model_name="shapes", id="r1")
    tensor = theirs.inputs.add(name="IMAGE", datatype="BYTES", shape=[2, 1])
    tensor.contents.bytes_contents.extend([b"a", b"bc"])
    theirs.parameters["score_threshold"].double_param = 0.25
    theirs.raw_input_contents.append(b"\x01\x00\x00\x00z")
    mine = ours.ModelInferRequest.FromString(theirs.SerializeToString())
    assert (mine.model_name, mine.id) == ("shapes", "r1")
    assert list(mine.inputs[0].shape) == [2, 1]
    assert list(mine.inputs[0].contents.bytes_contents) == [b"a", b"bc"]
    assert mine.parameters["score_threshold"].double_param == 0.25
    assert list(mine.raw_input_contents) == [b"\x01\x00\x00\x00z"]
