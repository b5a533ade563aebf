from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from detserve.engines.factory import create_engine
from detserve.engines.manifest import load_package
from detserve.engines.pipeline import detect_images
from detserve.models import cli_eval
from detserve.models.cli import main as cli_main
from detserve.models.import_yolo import COCO80, ImportOptions, YoloImportError, import_onnx


def _yolo80_onnx(path: Path, batch: int | str = "batch", size: int | str = 64,
                 metadata: dict[str, str] | None = None) -> Path:
    """An Ultralytics-layout graph: images [B,3,H,W] -> output0 [B, 84, N] (80 classes)."""
    weight = np.random.default_rng(0).normal(0, 0.01, (84, 3, 32, 32)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["images", "w"], ["feat"], strides=[32, 32]),
             helper.make_node("Reshape", ["feat", "shape"], ["output0"])]
    inits = [numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(np.array([0, 84, -1], np.int64), "shape")]
    graph = helper.make_graph(
        nodes, "yolo80",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 84, None])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for k, v in (metadata or {}).items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(path))
    return path


def _with_metadata(src: Path, dst: Path, metadata: dict[str, str]) -> Path:
    model = onnx.load(str(src))
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(dst))
    return dst


def test_coco_names_and_input_size_from_the_graph(tmp_path: Path) -> None:
    src = _yolo80_onnx(tmp_path / "yolov8n.onnx")
    out = import_onnx(src, names="coco")
    assert out == tmp_path / "yolov8n"
    man = load_package(out).manifest
    assert man.classes == COCO80 and len(man.classes) == 80 and man.classes[0] == "person"
    assert (man.input_width, man.input_height, man.input_name) == (64, 64, "images")
    assert man.output_format == "yolov8" and man.max_batch_size == 64
    pre = man.preprocess
    assert (pre.color_order, pre.resize, pre.pad_value) == ("RGB", "letterbox", 114)
    assert pre.scale == pytest.approx(1 / 255)
    engine = create_engine(load_package(out))
    dets = detect_images(engine, [np.zeros((48, 80, 3), np.uint8)])
    assert len(dets) == 1  # the server's path runs the imported graph end to end
    engine.close()


def test_imported_blocks_model_detects_through_the_engine(tiny_package: Path,
                                                          tmp_path: Path) -> None:
    src = _with_metadata(tiny_package / "model.onnx", tmp_path / "blocks.onnx",
                         {"names": "{0: 'red', 1: 'green', 2: 'blue'}", "author": "test"})
    out = import_onnx(src, out=tmp_path / "pkg", name="imported")
    package = load_package(out)
    assert package.manifest.classes == ("red", "green", "blue")
    assert package.manifest.metadata["ultralytics_author"] == "test"
    image = np.zeros((64, 64, 3), np.uint8)
    image[32:64, 0:32] = (0, 0, 255)
    engine = create_engine(package)
    dets = detect_images(engine, [image])[0]
    engine.close()
    best = int(np.argmax(dets.scores))
    assert package.manifest.classes[int(dets.class_ids[best])] == "blue"
    assert dets.boxes[best].tolist() == pytest.approx([0, 32, 32, 64])


def test_names_that_do_not_fit_the_graph_are_refused(tiny_package: Path,
                                                     tmp_path: Path) -> None:
    with pytest.raises(YoloImportError, match=r"80 class names need an output of 84 rows.*7 rows"):
        import_onnx(tiny_package / "model.onnx", names="coco", out=tmp_path / "x")
    with pytest.raises(YoloImportError, match="no 'names' metadata"):
        import_onnx(tiny_package / "model.onnx", out=tmp_path / "y")
    with pytest.raises(YoloImportError, match=r"'nope\.txt'"):
        import_onnx(tiny_package / "model.onnx", names="nope.txt", out=tmp_path / "z")


def test_names_file_static_batch_and_dynamic_size(tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("\n".join(COCO80) + "\n")
    src = _yolo80_onnx(tmp_path / "m.onnx", batch=1, size="hw", metadata={"imgsz": "[96, 128]"})
    man = load_package(import_onnx(src, names=str(names))).manifest
    assert man.max_batch_size == 1
    assert (man.input_width, man.input_height) == (128, 96)
    with pytest.raises(YoloImportError, match="already holds a manifest"):
        import_onnx(src, names=str(names))


def test_cli_import_and_make_dataset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    cli_eval.register(parser.add_subparsers(dest="command", required=True))
    src = _yolo80_onnx(tmp_path / "yolo11n.onnx")
    args = parser.parse_args(["import", str(src), "--names", "coco", "--out", str(tmp_path / "p")])
    assert args.func(args) == 0
    assert "80 classes, input 64x64" in capsys.readouterr().out
    bad = parser.parse_args(["import", str(tmp_path / "missing.onnx")])
    assert bad.func(bad) == 2
    assert "missing.onnx" in capsys.readouterr().err
    ds = parser.parse_args(["make-dataset", str(tmp_path / "d"), "--split", "test", "-n", "2",
                            "--size", "320x240"])
    assert ds.func(ds) == 0
    doc = json.loads((tmp_path / "d/test/annotations.json").read_text())
    assert [(i["width"], i["height"]) for i in doc["images"]] == [(320, 240), (320, 240)]
    assert doc["info"]["split"] == "test"


def test_symbolic_class_rows_are_counted_by_a_dummy_run(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from .detector_packages import export_detector_onnx

    # A 3-class model whose every output dim is symbolic: the shapes cannot say 3 classes.
    src = export_detector_onnx(tmp_path / "dyn.onnx", size=64, dynamic="all",
                               metadata={"names": "{0: 'a', 1: 'b', 2: 'c'}"})
    out = onnx.load(str(src)).graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in out] == ["batch", "rows", "anchors"]
    with pytest.raises(YoloImportError, match=(
            r"80 class names need an output of 84 rows .* the graph's output has 7 rows \(3 "
            r"classes; read from a run of the graph on a dummy input")):  # fmt: skip
        import_onnx(src, names="coco", out=tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    capsys.readouterr()  # the export's own warnings
    assert cli_main(["import", str(src), "--names", "coco", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("detserve-model import: error: 80 class names")
    man = load_package(import_onnx(src, out=tmp_path / "good")).manifest  # its own names fit
    assert man.classes == ("a", "b", "c") and man.max_batch_size == 64
    assert "dummy input" in man.metadata["import"]["class_count_from"]


def test_manifest_tells_version_thresholds_and_source(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    src = _yolo80_onnx(tmp_path / "best.onnx", batch=1,
                       metadata={"version": "8.3.40", "task": "detect", "author": "Ultralytics"})
    args = ["import", str(src), "--names", "coco", "--out", str(tmp_path / "p"), "--version",
            "3", "--score-threshold", "0.4", "--iou-threshold", "0.5", "--max-detections", "50"]
    assert cli_main(args) == 0
    assert "fp32, max batch 1, score >= 0.4, NMS IoU 0.5" in capsys.readouterr().out
    man = load_package(tmp_path / "p").manifest
    assert man.version == "3"  # the package's, not the exporter's
    assert man.metadata["ultralytics_version"] == "8.3.40"
    post = man.postprocess
    assert (post.score_threshold, post.iou_threshold, post.max_detections) == (0.4, 0.5, 50)
    assert man.metadata["import"] == {
        "source": "best.onnx", "batch": "fixed at 1", "weights": "fp32",
        "class_count_from": "the graph's output shape",
        "command": f"detserve-model import {src} --names coco --out {tmp_path / 'p'} --version 3"
                   " --score-threshold 0.4 --iou-threshold 0.5 --max-detections 50"}
    default = load_package(import_onnx(src, names="coco", out=tmp_path / "d")).manifest
    assert default.version == "1" and default.postprocess.score_threshold == 0.25
    bad = ["import", str(src), "--names", "coco", "--out", str(tmp_path / "x"),
           "--iou-threshold", "0"]
    assert cli_main(bad) == 2
    assert "--iou-threshold in (0, 1], got 0.25 and 0.0" in capsys.readouterr().err


def test_fp16_exports_are_labelled_fp16_and_run(tiny_package: Path, tmp_path: Path) -> None:
    from onnxconverter_common import float16

    model = onnx.load(str(tiny_package / "model.onnx"))
    model.metadata_props.add(key="names", value="{0: 'red', 1: 'green', 2: 'blue'}")
    for keep_io, stem in ((False, "half"), (True, "half_io32")):
        half = float16.convert_float_to_float16(model, keep_io_types=keep_io)
        onnx.save(half, str(tmp_path / f"{stem}.onnx"))
        package = load_package(import_onnx(tmp_path / f"{stem}.onnx"))
        assert package.manifest.precision == "fp16"
        image = np.zeros((64, 64, 3), np.uint8)
        image[0:32, 32:64] = (0, 255, 0)
        engine = create_engine(package)
        (dets,) = detect_images(engine, [image])
        engine.close()
        assert package.manifest.classes[int(dets.class_ids[0])] == "green"


def test_card_of_an_imported_model_tells_where_it_came_from(tiny_package: Path,
                                                            tmp_path: Path) -> None:
    from detserve.models.card import write_model_card
    from detserve.models.evaluate import evaluate_package

    from .blocks_coco import write_blocks_set

    src = _with_metadata(tiny_package / "model.onnx", tmp_path / "blocks.onnx",
                         {"names": "{0: 'red', 1: 'green', 2: 'blue'}", "version": "8.3.40"})
    out = import_onnx(src, out=tmp_path / "pkg",
                      options=ImportOptions(command="detserve-model import blocks.onnx"))
    report = evaluate_package(out, write_blocks_set(tmp_path / "set")).to_dict()
    card = write_model_card(out, [report]).read_text()
    assert "trained from scratch" not in card and "None" not in card
    assert "imported by `detserve-model import` from the ONNX export `blocks.onnx` " \
           "(Ultralytics 8.3.40)" in card
    assert "not trained by detserve" in card
    assert "- Command: `detserve-model import blocks.onnx`" in card
    assert "- Weights: fp32; batch: dynamic" in card
    assert "| 64x64 | 3 | 4 | 1.000 |" in card
