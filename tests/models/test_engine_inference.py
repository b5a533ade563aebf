"""eval and compare-precision take the engine from each package (the committed OpenVINO IR
packages run on OpenVINO without --engine), and warn when a graph hides detections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detserve.engines.manifest import default_engine_kind, load_package
from detserve.models.cli import main

from .blocks_coco import write_blocks_set

PACKAGES = Path(__file__).resolve().parents[2] / "models" / "packages"

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def val3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detserve.models.scenes import write_coco

    return write_coco(tmp_path_factory.mktemp("val3"), "val", 3)


def test_the_package_says_its_engine() -> None:
    kinds = {d: default_engine_kind(load_package(PACKAGES / d).manifest)
             for d in ("shapes_320", "shapes_320_int8", "shapes_640_int8")}
    assert kinds == {"shapes_320": "onnxruntime", "shapes_320_int8": "openvino",
                     "shapes_640_int8": "openvino"}


def test_eval_runs_the_committed_ir_package_without_engine(
    val3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["eval", str(PACKAGES / "shapes_320_int8"), "--data", str(val3), "--out",
                 str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    assert "Engine openvino, input 320x320" in capsys.readouterr().out
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["engine"] == "openvino" and report["metrics"]["n_images"] == 3
    assert report["metrics"]["map50"] > 0.5  # the real model on real scenes
    assert report["warnings"] == []


def test_wrong_engine_named_is_one_line(val3: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["eval", str(PACKAGES / "shapes_320_int8"), "--data", str(val3), "--engine",
                 "onnxruntime"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "holds an OpenVINO IR (model.xml), which ONNX Runtime cannot load" in err[0]


def test_compare_precision_runs_one_engine_per_side(
    val3: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, other = str(PACKAGES / "shapes_320"), str(PACKAGES / "shapes_320_int8")
    assert main(["compare-precision", base, other, "--data", str(val3), "--out",
                 str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| group | metric | fp32 (onnxruntime) | int8 (openvino) |")
    doc = json.loads((tmp_path / "precision.json").read_text())
    assert doc["engines"] == ["onnxruntime", "openvino"] and doc["warnings"] == []
    # A per-side override: both on OpenVINO.
    assert main(["compare-precision", base, other, "--data", str(val3), "--base-engine",
                 "openvino"]) == 0
    assert capsys.readouterr().out.startswith("| group | metric | fp32 | int8 |")


def test_a_graph_threshold_above_evals_is_warned(
    tiny_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    e2e = tmp_path / "e2e"
    # add-nms bakes the manifest's score threshold (0.6) into the graph.
    assert main(["add-nms", str(tiny_package), "--target", "ort", "--out", str(e2e)]) == 0
    data = write_blocks_set(tmp_path / "set")
    capsys.readouterr()
    assert main(["compare-precision", str(tiny_package), str(e2e), "--data", str(data), "--out",
                 str(tmp_path / "cmp")]) == 0
    warning = ("WARNING: e2e's graph applies its own NMS settings (metadata.nms_graph) and hides "
               "scores below 0.6 (eval counts from 0.001)")
    printed = [ln for ln in capsys.readouterr().out.splitlines() if "WARNING" in ln]
    assert len(printed) == 1 and printed[0].startswith(warning)
    assert "add-nms --score-threshold 0.001 --max-detections 100" in printed[0]
    doc = json.loads((tmp_path / "cmp/precision.json").read_text())
    assert doc["warnings"] == printed
    assert (tmp_path / "cmp/precision.md").read_text().count("WARNING") == 1
    assert main(["eval", str(e2e), "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev/eval.json").read_text())["warnings"] == printed
    assert sum("WARNING" in ln for ln in capsys.readouterr().out.splitlines()) == 1
    # The host-NMS source has nothing baked in: no warning.
    assert main(["eval", str(tiny_package), "--data", str(data)]) == 0
    assert "WARNING" not in capsys.readouterr().out
