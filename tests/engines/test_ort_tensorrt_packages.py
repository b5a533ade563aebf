"""A package whose NMS is a TensorRT plugin (`add-nms --target tensorrt`) is refused by the ONNX
Runtime engine with an error that says which engine it needs, not ORT's graph-load error."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from detserve.engines.manifest import load_package, write_manifest
from detserve.engines.ort import OrtEngine
from detserve.models.nms_graph import Target, add_nms_package, default_config
from detserve.server.app import start_server
from detserve.server.batcher import BatchingConfig
from detserve.server.config import ConfigError, ModelConfig, ServerConfig


def _add_nms(src: Path, out: Path, target: Target) -> Path:
    return add_nms_package(src, out, target, default_config(load_package(src).manifest))


@pytest.fixture(scope="module")
def trt_package(tiny_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _add_nms(tiny_package, tmp_path_factory.mktemp("nms_trt"), "tensorrt")


def test_tensorrt_nms_package_names_the_engine_it_needs(trt_package: Path) -> None:
    with pytest.raises(ValueError) as caught:
        OrtEngine(load_package(trt_package))
    assert str(caught.value) == (
        f"model package {str(trt_package)!r} needs the tensorrt engine: its manifest says "
        "metadata.nms_graph.runs_on: tensorrt (NMS in a TensorRT plugin such as "
        "EfficientNMS_TRT), which ONNX Runtime cannot run. Serve it with engine 'tensorrt', or "
        "make an ONNX Runtime package from its yolov8 source with `detserve-model add-nms "
        "SOURCE --target ort`"
    )


def test_plugin_node_is_found_without_the_metadata(trt_package: Path, tmp_path: Path) -> None:
    """A TensorRT end2end export made elsewhere carries no nms_graph metadata: the graph tells."""
    manifest = load_package(trt_package).manifest
    (tmp_path / "model.onnx").write_bytes((trt_package / "model.onnx").read_bytes())
    write_manifest(dataclasses.replace(manifest, metadata={}), tmp_path)
    with pytest.raises(ValueError, match=(
        r"needs the tensorrt engine: its graph holds TensorRT plugin node\(s\) "
        r"'nms/efficient_nms' \(EfficientNMS_TRT\), which ONNX Runtime cannot run"
    )):  # fmt: skip
        OrtEngine(load_package(tmp_path))


def test_onnxruntime_nms_package_still_runs(tiny_package: Path, tmp_path: Path) -> None:
    package = load_package(_add_nms(tiny_package, tmp_path / "nms_ort", "ort"))
    assert package.manifest.metadata["nms_graph"]["runs_on"] == "onnxruntime"
    batch = np.zeros((1, 3, 64, 64), np.float32)
    batch[0, 1, :32, 32:] = 1.0  # green, top-right cell
    num, boxes, scores, classes = OrtEngine(package, intra_op_threads=1).infer(batch)
    assert int(num[0, 0]) == 1 and int(classes[0, 0]) == 1 and float(scores[0, 0]) == 1.0
    assert boxes[0, 0].tolist() == [32.0, 0.0, 64.0, 32.0]


def test_other_graph_load_errors_are_not_reworded(tiny_package: Path, tmp_path: Path) -> None:
    write_manifest(load_package(tiny_package).manifest, tmp_path)
    (tmp_path / "model.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(Exception, match="INVALID_PROTOBUF") as caught:
        OrtEngine(load_package(tmp_path))
    assert "tensorrt" not in str(caught.value)


async def test_server_refuses_it_at_startup_naming_the_model(trt_package: Path) -> None:
    model = ModelConfig(package=trt_package, engine="onnxruntime",
                        batching=BatchingConfig(max_batch_size=2))
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=None, models=(model,))
    with pytest.raises(ConfigError, match=(
        r"config field 'models\[0\]\.engine' \('onnxruntime'.*could not create an engine: "
        r"model package .* needs the tensorrt engine"
    )):  # fmt: skip
        await start_server(config)


async def test_without_an_engine_the_server_picks_tensorrt_for_it(trt_package: Path) -> None:
    # No engine named: the package's own (its NMS is a TensorRT plugin). Where TensorRT is not
    # installed, the error names that engine, not an ONNX Runtime graph error.
    model = ModelConfig(package=trt_package, batching=BatchingConfig(max_batch_size=2))
    config = ServerConfig(host="127.0.0.1", port=0, metrics_port=None, models=(model,))
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"'models\[0\]\.engine' \('tensorrt'"):
            await start_server(config)
    else:
        server = await start_server(config)
        try:
            assert server.registry.default.engine_kind == "tensorrt"
        finally:
            await server.stop(grace_s=1.0)
