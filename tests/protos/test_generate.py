"""The committed stubs must be exactly what grpcio-tools generates from detection.proto."""

from __future__ import annotations

from pathlib import Path

import pytest

from detserve.protos import generate


def test_regenerating_stubs_changes_nothing(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools", reason="grpcio-tools comes with the dev extra")
    written = generate.generate(tmp_path)
    assert sorted(p.name for p in written) == sorted(generate.GENERATED)
    for path in written:
        committed = generate.HERE / path.name
        assert committed.read_text() == path.read_text(), (
            f"{committed.name} is stale: run `python -m detserve.protos.generate` and commit"
        )


def test_stubs_import_and_describe_the_service() -> None:
    from detserve.protos import detection_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Detector"]
    assert [m.name for m in service.methods] == [
        "Detect",
        "DetectStream",
        "ListModels",
        "GetModelInfo",
    ]
    assert pb.DESCRIPTOR.package == "detserve.v1"


def test_inference_stubs_live_in_their_own_descriptor_pool() -> None:
    from google.protobuf import descriptor_pool

    from detserve.protos import inference_pb2

    assert inference_pb2.DESCRIPTOR.package == "inference"
    assert inference_pb2.DESCRIPTOR.pool is not descriptor_pool.Default()
    assert "GRPCInferenceService" in inference_pb2.DESCRIPTOR.services_by_name
