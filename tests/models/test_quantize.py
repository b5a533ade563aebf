"""INT8 (static PTQ, QDQ) and FP16 packages of a small real detector with random weights."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from detserve.engines.manifest import load_package
from detserve.engines.preprocess import prepare
from detserve.models.quantize import (
    CALIB_SEED_START,
    CalibrationSource,
    calib_seeds,
    convert_fp16,
    float_tail_nodes,
    quantize_int8,
)
from detserve.models.scenes import render_scene, split_seeds

from .detector_packages import write_detector_package


@pytest.fixture(scope="module")
def detector_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_detector_package(tmp_path_factory.mktemp("det64"))


@pytest.fixture(scope="module")
def scene_batch(detector_package: Path) -> np.ndarray:
    man = load_package(detector_package).manifest
    # Test-split scenes: never used for calibration, so this measures generalisation.
    images = [render_scene(s, 320, 320).image for s in split_seeds("test", 4)]
    return np.stack([prepare(img, man).tensor for img in images])


def _run(root: Path, batch: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    out: np.ndarray = sess.run(None, {"images": batch})[0]
    return out


@pytest.fixture(scope="module")
def int8_package(detector_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("int8")
    quantize_int8(detector_package, out, CalibrationSource("synthetic", 16), "minmax")
    return out


def test_int8_package_manifest_records_calibration(int8_package: Path) -> None:
    m = load_package(int8_package).manifest
    assert m.precision == "int8"
    cal = m.metadata["calibration"]
    assert cal["seeds"] == f"[{CALIB_SEED_START}, {CALIB_SEED_START + 16})"
    assert cal["images"] == 16
    q = m.metadata["quantization"]
    assert (q["format"], q["method"]) == ("QDQ", "minmax") and q["float_tail_nodes"] > 0
    # FP32 metrics are kept under a name that says so; the checkpoint is not copied along.
    assert m.metadata["fp32_val_metrics"] == {"mAP@0.5": 0.5}
    assert "val_metrics" not in m.metadata and "torch_checkpoint" not in m.metadata


def test_int8_weights_are_per_channel_qdq(int8_package: Path) -> None:
    model = onnx.load(str(int8_package / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight_dq = [
        n for n in model.graph.node
        if n.op_type == "DequantizeLinear" and inits.get(n.input[0], np.zeros(0)).ndim == 4
    ]  # fmt: skip
    assert len(weight_dq) >= 20
    for node in weight_dq:
        w, scale = inits[node.input[0]], inits[node.input[1]]
        assert w.dtype == np.int8 and scale.shape == (w.shape[0],)


def test_int8_keeps_the_decode_tail_float(int8_package: Path) -> None:
    model = onnx.load(str(int8_package / "model.onnx"))
    producers = {o: n for n in model.graph.node for o in n.output}
    # Walk up from the output until the first dequantized tensors: that is the float tail.
    seen: dict[str, onnx.NodeProto] = {}
    stack = ["output0"]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type == "DequantizeLinear":
            continue
        seen[node.name] = node
        stack += list(node.input)
    ops = [n.op_type for n in seen.values()]
    assert {"Concat", "Sigmoid", "Softmax"} <= set(ops)
    assert ops.count("Conv") == 1 and ops.count("QuantizeLinear") == 0  # the DFL conv only
    dfl = next(n for n in seen.values() if n.op_type == "Conv")
    inits = {i.name: i for i in model.graph.initializer}
    assert inits[dfl.input[1]].data_type == TensorProto.FLOAT


def test_int8_outputs_track_fp32(
    detector_package: Path, int8_package: Path, scene_batch: np.ndarray
) -> None:
    fp32, int8 = _run(detector_package, scene_batch), _run(int8_package, scene_batch)
    assert fp32[:, 4:].std() > 0.03  # the scores vary, so the comparison means something
    box_err = np.abs(fp32[:, :4] - int8[:, :4])
    score_err = np.abs(fp32[:, 4:] - int8[:, 4:])
    assert float(box_err.mean()) < 0.5 and float(score_err.max()) < 0.05


def test_quantizing_the_tail_wrecks_scores(
    detector_package: Path, int8_package: Path, scene_batch: np.ndarray, tmp_path: Path
) -> None:
    naive = quantize_int8(
        detector_package, tmp_path / "naive", CalibrationSource("synthetic", 16),
        keep_float_tail=False,
    )  # fmt: skip
    assert naive.float_nodes == 0
    fp32 = _run(detector_package, scene_batch)[:, 4:]
    err_tail = np.abs(_run(int8_package, scene_batch)[:, 4:] - fp32).max()
    err_naive = np.abs(_run(tmp_path / "naive", scene_batch)[:, 4:] - fp32).max()
    assert err_naive > 10 * err_tail


def test_tensorrt_target_uses_symmetric_int8_activations(
    detector_package: Path, scene_batch: np.ndarray, tmp_path: Path
) -> None:
    out = quantize_int8(
        detector_package, tmp_path / "trt", CalibrationSource("synthetic", 8), target="tensorrt"
    ).package
    model = onnx.load(str(out / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert load_package(out).manifest.metadata["quantization"]["target"] == "tensorrt"
    err = np.abs(_run(out, scene_batch)[:, 4:] - _run(detector_package, scene_batch)[:, 4:])
    assert float(err.max()) < 0.05


def test_float_tail_stops_at_learned_convs_but_takes_the_dfl_conv() -> None:
    f = TensorProto.FLOAT
    w = numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), "w")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["head"], name="head_conv"),
        helper.make_node("Softmax", ["head"], ["prob"], name="softmax", axis=1),
        helper.make_node("Conv", ["prob", "w"], ["dist"], name="dfl_conv"),
        helper.make_node("Sigmoid", ["head"], ["cls"], name="sigmoid"),
        helper.make_node("Concat", ["dist", "cls"], ["y"], name="concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", f, [1, 4, 2, 2])],
        [helper.make_tensor_value_info("y", f, [1, 8, 2, 2])], [w],
    )  # fmt: skip
    tail = float_tail_nodes(helper.make_model(graph))
    assert sorted(tail) == ["concat", "dfl_conv", "sigmoid", "softmax"]
    with_head = float_tail_nodes(helper.make_model(graph), include_head=True)
    assert sorted(with_head) == ["concat", "dfl_conv", "head_conv", "sigmoid", "softmax"]


def test_float_head_keeps_the_head_output_convs_float(
    detector_package: Path, int8_package: Path, tmp_path: Path
) -> None:
    out = quantize_int8(
        detector_package, tmp_path / "fh", CalibrationSource("synthetic", 8), float_head=True
    )
    assert load_package(out.package).manifest.metadata["quantization"]["float_head"] is True
    model = onnx.load(str(out.package / "model.onnx"))
    inits = {i.name: i for i in model.graph.initializer}
    float_convs = [
        n for n in model.graph.node
        if n.op_type == "Conv" and n.input[1] in inits
        and inits[n.input[1]].data_type == TensorProto.FLOAT
    ]  # fmt: skip
    # The DFL conv plus one box and one class output conv per stride (8, 16, 32).
    assert len(float_convs) == 7
    baseline = onnx.load(str(int8_package / "model.onnx"))
    dq = [sum(n.op_type == "DequantizeLinear" for n in m.graph.node) for m in (model, baseline)]
    assert dq[0] < dq[1]


def test_calibration_seeds_are_the_calib_split() -> None:
    # The split ranges' disjointness is tested with the scenes (test_scenes.py).
    assert calib_seeds(3) == split_seeds("calib", 3) == [30_000_000, 30_000_001, 30_000_002]
    assert CALIB_SEED_START == 30_000_000
    assert not set(calib_seeds(500)) & set(split_seeds("test", 500) + split_seeds("val", 500))


def test_calibration_from_a_folder(detector_package: Path, tmp_path: Path) -> None:
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), render_scene(i, 160, 120).image[:, :, ::-1])
    out = quantize_int8(
        detector_package, tmp_path / "q", CalibrationSource(str(folder), 3), "entropy"
    )
    m = load_package(out.package).manifest
    assert m.metadata["calibration"] == {"source": str(folder.resolve()), "images": 3}
    assert m.metadata["quantization"]["method"] == "entropy"
    with pytest.raises(ValueError, match="has 3 images, --n asks for 5"):
        quantize_int8(detector_package, tmp_path / "q5", CalibrationSource(str(folder), 5))


def test_val_folder_is_refused_for_calibration(detector_package: Path, tmp_path: Path) -> None:
    folder = tmp_path / "val"
    folder.mkdir()
    (folder / "annotations.json").write_text(json.dumps({"info": {"split": "val"}}))
    with pytest.raises(ValueError, match="is the val split"):
        quantize_int8(detector_package, tmp_path / "q", CalibrationSource(str(folder), 1))
    (folder / "images").mkdir()
    with pytest.raises(ValueError, match="images' is the val split"):
        quantize_int8(
            detector_package, tmp_path / "q", CalibrationSource(str(folder / "images"), 1)
        )


def test_bad_arguments_name_the_value(detector_package: Path, int8_package: Path) -> None:
    with pytest.raises(ValueError, match=r"--n must be in \[1, 10000\], got 0"):
        CalibrationSource("synthetic", 0)
    src = CalibrationSource("synthetic", 1)
    with pytest.raises(ValueError, match=r"--method must be one of .* got 'kl'"):
        quantize_int8(detector_package, detector_package.parent / "x", src, "kl")
    with pytest.raises(ValueError, match=r"--for must be one of .* got 'gpu'"):
        quantize_int8(detector_package, detector_package.parent / "w", src, target="gpu")
    with pytest.raises(ValueError, match="--out must differ"):
        quantize_int8(detector_package, detector_package, src)
    with pytest.raises(ValueError, match="has precision 'int8'"):
        quantize_int8(int8_package, int8_package.parent / "y", src)
    with pytest.raises(
        ValueError, match="--calib must be 'synthetic' or a folder of images, got 'nope'"
    ):
        quantize_int8(detector_package, detector_package.parent / "z", CalibrationSource("nope", 1))


def test_fp16_package(detector_package: Path, scene_batch: np.ndarray, tmp_path: Path) -> None:
    out = convert_fp16(detector_package, tmp_path / "fp16")
    assert load_package(out).manifest.precision == "fp16"
    model = onnx.load(str(out / "model.onnx"))
    conv_w = {n.input[1] for n in model.graph.node if n.op_type == "Conv"}
    dtypes = {i.data_type for i in model.graph.initializer if i.name in conv_w}
    assert dtypes == {TensorProto.FLOAT16}
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    fp32, fp16 = _run(detector_package, scene_batch), _run(out, scene_batch)
    np.testing.assert_allclose(fp16[:, 4:], fp32[:, 4:], atol=0.01)
    np.testing.assert_allclose(fp16[:, :4], fp32[:, :4], atol=1.0)
