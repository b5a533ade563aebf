"""NNCF INT8 OpenVINO IR packages of a small real detector with random (but lively) weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detserve.engines.manifest import load_package
from detserve.engines.openvino import OpenVinoEngine
from detserve.engines.preprocess import prepare
from detserve.models.quantize import CALIB_SEED_START, CalibrationSource, quantize_int8
from detserve.models.quantize_openvino import float_tail_ops, predictor_ops, quantize_openvino
from detserve.models.scenes import render_scene, split_seeds

from .detector_packages import write_detector_package

pytest.importorskip("nncf")

SIZE = 96
CALIB = 20


@pytest.fixture(scope="module")
def fp32_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_detector_package(tmp_path_factory.mktemp("det"), size=SIZE)


@pytest.fixture(scope="module")
def int8_package(fp32_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ov-int8")
    result = quantize_openvino(fp32_package, out, CalibrationSource("synthetic", CALIB))
    assert result.package == out and result.subset_size == CALIB
    return out


@pytest.fixture(scope="module")
def test_batch(fp32_package: Path) -> np.ndarray:
    man = load_package(fp32_package).manifest
    # Test-split scenes: never used for calibration, so this measures generalisation.
    images = [render_scene(s, 320, 240).image for s in split_seeds("test", 4)]
    return np.stack([prepare(img, man).tensor for img in images])


def test_package_is_an_int8_ir_with_its_calibration_recorded(int8_package: Path) -> None:
    package = load_package(int8_package)
    m = package.manifest
    assert (m.model_file, m.precision) == ("model.xml", "int8")
    assert (int8_package / "model.bin").stat().st_size > 1000
    cal = m.metadata["calibration"]
    assert cal["seeds"] == f"[{CALIB_SEED_START}, {CALIB_SEED_START + CALIB})"
    assert (cal["images"], cal["subset_size"]) == (CALIB, CALIB)
    q = m.metadata["quantization"]
    assert q["preset"] == "mixed" and q["float_tail_nodes"] > 10 and q["fake_quantize_ops"] > 40
    assert q["float_predictor_convs"] == 6  # box and class predictors of three levels
    assert m.metadata["fp32_val_metrics"] == {"mAP@0.5": 0.5}
    assert "val_metrics" not in m.metadata and "torch_checkpoint" not in m.metadata


def test_decode_tail_stays_float(int8_package: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(int8_package / "model.xml"))
    final = model.get_results()[0].input(0).get_source_output().get_node()
    assert final.get_type_name() == "Concat"
    feeders = [i.get_source_output().get_node() for i in final.inputs()]
    assert "FakeQuantize" not in [f.get_type_name() for f in feeders]
    sigmoid = next(f for f in feeders if f.get_type_name() == "Sigmoid")
    assert sigmoid.input(0).get_source_output().get_node().get_type_name() != "FakeQuantize"


def test_predictor_convolutions_stay_float(int8_package: Path) -> None:
    import openvino as ov

    model = ov.Core().read_model(str(int8_package / "model.xml"))
    predictors = predictor_ops(model, float_tail_ops(model))
    assert len(predictors) == 6
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    for name in predictors:
        data, weights = (i.get_source_output().get_node() for i in ops[name].inputs())
        assert data.get_type_name() != "FakeQuantize"
        assert (weights.get_type_name(), weights.get_element_type().get_type_name()) == (
            "Constant",
            "f32",
        )
    # ... while the convolutions before them are quantized: weights stored as int8.
    convs = [op for op in ops.values() if op.get_type_name() == "Convolution"]
    int8_weights = [
        c for c in convs
        if any(n.get_element_type().get_type_name() == "i8" for n in _weight_chain(c))
    ]  # fmt: skip
    assert len(int8_weights) == len(convs) - 7  # all but the predictors and the DFL conv


def _weight_chain(conv: Any) -> list[Any]:
    """The nodes on the weight input of `conv`, back to its constant."""
    chain, node = [], conv.input(1).get_source_output().get_node()
    while True:
        chain.append(node)
        if node.get_type_name() == "Constant" or not node.inputs():
            return chain
        node = node.input(0).get_source_output().get_node()


def test_int8_engine_tracks_fp32(
    fp32_package: Path, int8_package: Path, test_batch: np.ndarray
) -> None:
    fp32 = OpenVinoEngine(load_package(fp32_package), precision="f32", num_threads=1)
    int8 = OpenVinoEngine(load_package(int8_package), num_threads=1)
    assert int8.precision.effective == "int8" and int8.manifest.precision == "int8"
    want = np.asarray(fp32.infer(test_batch)[0], np.float32)
    got = np.asarray(int8.infer(test_batch)[0], np.float32)
    assert got.shape == want.shape == (4, 7, (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + 9)
    scores = want[:, 4:]
    assert scores.std() > 0.03  # the scores vary, so the comparison means something
    assert np.corrcoef(scores.ravel(), got[:, 4:].ravel())[0, 1] > 0.9
    assert _confident_box_error(want, got) < 0.02 * SIZE
    assert not np.allclose(want, got, atol=1e-4)  # really quantized, not a float copy


def _confident_box_error(want: np.ndarray, got: np.ndarray) -> float:
    best = want[:, 4:].max(axis=1)  # [B, N]
    confident = best > np.quantile(best, 0.9)
    return float(np.median(np.abs(want[:, :4] - got[:, :4]).transpose(0, 2, 1)[confident]))


def test_quantizing_the_tail_too_costs_box_precision(
    fp32_package: Path, int8_package: Path, test_batch: np.ndarray, tmp_path: Path
) -> None:
    naive = quantize_openvino(
        fp32_package, tmp_path / "naive", CalibrationSource("synthetic", CALIB),
        keep_float_tail=False,
    )  # fmt: skip
    assert (naive.float_nodes, naive.float_predictors) == (0, 0)
    assert load_package(naive.package).manifest.metadata["quantization"]["float_tail_nodes"] == 0
    want = OpenVinoEngine(load_package(fp32_package), precision="f32", num_threads=1)
    kept = OpenVinoEngine(load_package(int8_package), num_threads=1)
    wide = OpenVinoEngine(load_package(naive.package), num_threads=1)
    fp32, got_kept, got_naive = (
        np.asarray(e.infer(test_batch)[0], np.float32) for e in (want, kept, wide)
    )
    kept_err = _confident_box_error(fp32, got_kept)
    naive_err = _confident_box_error(fp32, got_naive)
    assert naive_err > 1.5 * kept_err, (naive_err, kept_err)


def test_bad_options_name_the_value(fp32_package: Path, int8_package: Path, tmp_path: Path) -> None:
    source = CalibrationSource("synthetic", 4)
    with pytest.raises(ValueError, match="got 'fast'"):
        quantize_openvino(fp32_package, tmp_path / "a", source, preset="fast")
    with pytest.raises(ValueError, match=r"subset_size must be an integer in \[1, 4\].*got 5"):
        quantize_openvino(fp32_package, tmp_path / "b", source, subset_size=5)
    with pytest.raises(ValueError, match="needs an fp32 package"):
        quantize_openvino(int8_package, tmp_path / "c", source)
    with pytest.raises(ValueError, match="must differ from the source"):
        quantize_openvino(fp32_package, fp32_package, source)


def test_qdq_onnx_int8_package_runs_on_openvino(
    fp32_package: Path, test_batch: np.ndarray, tmp_path: Path
) -> None:
    # The precision ladder's ONNX Runtime INT8 package is the other INT8 source the engine takes.
    qdq = quantize_int8(fp32_package, tmp_path / "qdq", CalibrationSource("synthetic", 8))
    assert qdq.quantized_nodes > 20
    engine = OpenVinoEngine(load_package(qdq.package), num_threads=1)
    assert engine.precision.effective == "int8" and engine.manifest.precision == "int8"
    fp32 = OpenVinoEngine(load_package(fp32_package), precision="f32", num_threads=1)
    want = np.asarray(fp32.infer(test_batch)[0], np.float32)
    got = np.asarray(engine.infer(test_batch)[0], np.float32)
    assert np.corrcoef(want[:, 4:].ravel(), got[:, 4:].ravel())[0, 1] > 0.9
    assert _confident_box_error(want, got) < 0.02 * SIZE
    assert not np.allclose(want, got, atol=1e-4)
