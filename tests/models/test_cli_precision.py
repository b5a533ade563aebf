"""`detserve-model add-nms | quantize` end to end through the real command-line parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detserve.engines.manifest import load_package
from detserve.models.cli import main


def test_add_nms_writes_an_end2end_package(
    tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e2e"
    code = main(["add-nms", str(tiny_package), "--target", "ort", "--out", str(out),
                 "--iou-threshold", "0.4", "--max-detections", "7"])  # fmt: skip
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["iou_threshold"] == 0.4 and printed["max_output_boxes"] == 7
    # The score threshold was not given, so the source manifest's (0.6) is used.
    m = load_package(out).manifest
    assert (m.output_format, m.postprocess.score_threshold, m.postprocess.max_detections) == (
        "end2end", 0.6, 7
    )  # fmt: skip


def test_add_nms_default_out_dir_and_errors(
    tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["add-nms", str(tiny_package), "--target", "tensorrt"]) == 0
    default = tiny_package.parent / f"{tiny_package.name}_nms_tensorrt"
    assert load_package(default).manifest.metadata["nms_graph"]["runs_on"] == "tensorrt"
    code = main(["add-nms", str(tmp_path / "missing"), "--target", "ort"])
    assert code == 2 and "no manifest.yaml in model package directory" in capsys.readouterr().err
    code = main(["add-nms", str(tiny_package), "--target", "ort", "--iou-threshold", "0"])
    assert code == 2 and "iou_threshold must be in (0, 1], got 0.0" in capsys.readouterr().err


def test_quantize_int8_and_fp16(
    tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    q = tmp_path / "int8"
    assert main(["quantize", str(tiny_package), "--int8", "--n", "2", "--out", str(q)]) == 0
    assert json.loads(capsys.readouterr().out)["precision"] == "int8"
    assert load_package(q).manifest.metadata["calibration"]["images"] == 2
    h = tmp_path / "fp16"
    assert main(["quantize", str(tiny_package), "--fp16", "--out", str(h)]) == 0
    assert load_package(h).manifest.precision == "fp16"
    code = main(["quantize", str(tiny_package), "--int8", "--n", "0", "--out", str(q)])
    assert code == 2 and "--n must be in [1, 10000], got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", str(tiny_package), "--int8", "--fp16"])


def test_quantize_int8_engine_openvino_writes_an_nncf_ir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("nncf")
    from .detector_packages import write_detector_package

    src = write_detector_package(tmp_path / "fp32", size=96)
    out = tmp_path / "ov"
    code = main(["quantize", str(src), "--int8", "--engine", "openvino", "--calib", "synthetic",
                 "--n", "6", "--out", str(out)])  # fmt: skip
    assert code == 0
    # The command runs NNCF with stdout sent to stderr, but NNCF's log handler keeps the stdout
    # of its first import (here: this test module's), so its lines come before the JSON one.
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (printed["package"], printed["engine"], printed["subset_size"]) == (str(out),
                                                                             "openvino", 6)
    assert printed["fake_quantize_ops"] > 0 and printed["float_tail_nodes"] > 0
    m = load_package(out).manifest
    assert (m.name, m.model_file, m.precision) == ("tiny", "model.xml", "int8")
    assert m.metadata["calibration"]["images"] == 6
    assert m.metadata["calibration"]["split"] == "calib"
    assert (out / "model.bin").stat().st_size > 1000
    # The same flags without --engine still make the ONNX Runtime QDQ package.
    assert main(["quantize", str(src), "--int8", "--n", "2", "--out", str(tmp_path / "ort")]) == 0
    assert load_package(tmp_path / "ort").manifest.model_file == "model.onnx"


def test_quantize_engine_openvino_refuses_onnxruntime_only_flags(
    tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "ov")
    code = main(["quantize", str(tiny_package), "--fp16", "--engine", "openvino", "--out", out])
    assert code == 2
    assert "['--fp16'] apply to --engine onnxruntime only" in capsys.readouterr().err
    code = main(["quantize", str(tiny_package), "--int8", "--engine", "openvino",
                 "--method", "entropy", "--float-head", "--out", out])  # fmt: skip
    assert code == 2
    assert "['--method', '--float-head'] apply to" in capsys.readouterr().err
    code = main(["quantize", str(tiny_package), "--int8", "--engine", "openvino", "--n", "0",
                 "--out", out])  # fmt: skip
    assert code == 2 and "--n must be in [1, 10000], got 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["quantize", str(tiny_package), "--int8", "--engine", "tensorrt"])
    assert not (tmp_path / "ov").exists()
