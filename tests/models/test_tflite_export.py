"""export-tflite: the parts that run in the test install (arguments, the ONNX split, the runner's
IO conversions, the checks and report on arrays), and the whole export where .venv-tflite is."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from detserve.engines.manifest import load_package
from detserve.models import tflite_runner
from detserve.models.cli import main
from detserve.models.evaluate import evaluate_package
from detserve.models.scenes import write_coco
from detserve.models.tflite_checks import (
    detections,
    metrics,
    raw_diff,
    report_markdown,
    round_like_outputs,
)
from detserve.models.tflite_export import (
    DEFAULT_PYTHON,
    EnvMissingError,
    check_package,
    find_python,
    load_val,
    onnxruntime_outputs,
    run,
)

PACKAGES = Path(__file__).resolve().parents[2] / "models" / "packages"
PKG = PACKAGES / "shapes_320"
VAL_IMAGES = 24  # the first val scenes, rendered here: the checks need no data/sets/val
needs_env = pytest.mark.skipif(
    not DEFAULT_PYTHON.is_file(),
    reason=f"the TFLite environment is absent ({DEFAULT_PYTHON}); bash models/tflite_env.sh")


@pytest.fixture(scope="module")
def val(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The val split's first scenes as a COCO folder, as `detserve-model make-dataset` writes."""
    return write_coco(tmp_path_factory.mktemp("sets"), "val", VAL_IMAGES).parent


def test_env_missing_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    rc = main(["export-tflite", str(PKG), "--out", str(tmp_path / "o"),
               "--python", str(tmp_path / "no-python")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "bash models/tflite_env.sh" in err and str(tmp_path / "no-python") in err
    assert not (tmp_path / "o").exists()


def test_find_python_prefers_explicit_then_environment(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    exe = tmp_path / "python"
    exe.write_text("")
    assert find_python(str(exe)) == exe
    monkeypatch.setenv("DETSERVE_TFLITE_PYTHON", str(exe))
    assert find_python() == exe
    monkeypatch.setenv("DETSERVE_TFLITE_PYTHON", str(tmp_path / "gone"))
    with pytest.raises(EnvMissingError, match="gone not found"):
        find_python()


@pytest.mark.parametrize(("extra", "message"), [
    (["--int8", "--n", "0"], "--n must be in [1, 10000], got 0"),
    (["--limit", "0"], "--limit must be >= 1, got 0"),
    (["--runs", "0"], "--runs must be >= 1, got 0"),
])  # fmt: skip
def test_bad_arguments_are_one_line(extra: list[str], message: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["export-tflite", str(PKG), "--out", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and message in err


def test_refuses_int8_and_missing_packages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs an fp32 package.*'int8'"):
        check_package(load_package(PACKAGES / "shapes_320_int8"))
    exe = tmp_path / "python"
    exe.write_text("")
    with pytest.raises(ValueError):
        run(tmp_path / "nowhere", tmp_path / "o", False, 1, tmp_path, python=str(exe))


def test_raw_diff_separates_boxes_and_scores() -> None:
    ref = np.zeros((2, 10, 5), np.float32)
    ref[1, 6, 3] = 0.9  # image 1, anchor 3: the one confident anchor
    got = ref.copy()
    got[1, 2, 3] = 1.5  # a box row of the confident anchor
    got[0, 1, 4] = 7.0  # a box row of a background anchor
    got[0, 7, 0] = -0.25  # a score row
    d = raw_diff(ref, got, score_threshold=0.5)
    assert d["max_abs_diff_boxes_px"] == 7.0 and d["max_abs_diff_scores"] == 0.25
    assert d["mean_abs_diff_boxes_px"] == pytest.approx(8.5 / (2 * 4 * 5))
    assert d["mean_abs_diff_scores"] == pytest.approx(0.25 / (2 * 6 * 5))
    assert d["confident"] == {"score_threshold": 0.5, "anchors": 1,
                              "max_abs_diff_boxes_px": 1.5, "mean_abs_diff_boxes_px": 1.5 / 4,
                              "max_abs_diff_scores": 0.0}  # fmt: skip
    assert raw_diff(ref, got, score_threshold=0.95)["confident"]["anchors"] == 0
    with pytest.raises(ValueError, match="share one"):
        raw_diff(ref, got[:1], 0.5)


def test_round_like_outputs_uses_each_outputs_scale() -> None:
    raw = np.zeros((1, 10, 3), np.float32)
    raw[0, 0] = [0.4, 1.6, 400.0]  # a box row: step 1, zero point 0, clipped at 127
    raw[0, 4] = [0.30, 0.301, 0.9]  # a score row: step 0.1
    outputs = [{"shape": [1, 4, 3], "quantization": {"scale": 1.0, "zero_point": 0}},
               {"shape": [1, 6, 3], "quantization": {"scale": 0.1, "zero_point": -128}}]
    out = round_like_outputs(raw, outputs)
    np.testing.assert_allclose(out[0, 0], [0.0, 2.0, 127.0])
    np.testing.assert_allclose(out[0, 4], [0.3, 0.3, 0.9], atol=1e-6)
    np.testing.assert_allclose(raw[0, 0], [0.4, 1.6, 400.0], rtol=1e-6)  # not in place
    float_out = [{"shape": [1, 10, 3], "quantization": None}]
    np.testing.assert_array_equal(round_like_outputs(raw, float_out), raw)


def test_runner_quantizes_input_and_joins_split_outputs() -> None:
    pixels = np.arange(256, dtype=np.float32).repeat(4).reshape(1, 1, 32, 32).repeat(3, 1)
    x = pixels / np.float32(255)  # what prepare() feeds: pixel * (1/255)
    int8_in = {"shape": np.array([1, 32, 32, 3]), "dtype": np.int8,
               "quantization": (1 / 255, -128)}  # fmt: skip
    q = tflite_runner.to_input(x, int8_in)
    assert q.dtype == np.int8 and q.shape == (1, 32, 32, 3)
    np.testing.assert_array_equal(q.astype(np.int32), pixels.transpose(0, 2, 3, 1) - 128)
    boxes = np.array([[[10, 20], [0, 5], [1, 1], [2, 2]]], np.int8)  # [1, 4, N=2]
    scores = np.array([[[3, 4], [5, 6], [7, 8], [9, 10], [11, 12], [13, 14]]], np.int8)
    details = [{"quantization": (0.01, -128)}, {"quantization": (2.0, 1)}]
    joined = tflite_runner.from_outputs([scores, boxes], details, rows=10)
    assert joined.shape == (1, 10, 2)
    np.testing.assert_allclose(joined[0, 0], [18.0, 38.0])  # (q - 1) * 2
    np.testing.assert_allclose(joined[0, 4], [1.31, 1.32])  # (q + 128) * 0.01
    channels_last = np.arange(20, dtype=np.float32).reshape(1, 2, 10)  # [1, N, 4 + nc]
    back = tflite_runner.from_outputs([channels_last], [{"quantization": (0.0, 0)}], rows=10)
    np.testing.assert_array_equal(back[0, :, 1], np.arange(10, 20))
    with pytest.raises(ValueError, match="do not make"):
        tflite_runner.from_outputs([boxes], details[1:], rows=10)


def test_checks_match_detserve_eval_on_val(val: Path) -> None:
    """The export's decode + metrics path gives what `detserve-model eval` gives."""
    package = load_package(PKG)
    vals = load_val(val, package, limit=VAL_IMAGES)
    ref, bench = onnxruntime_outputs(package, vals.tensors, runs=5)
    assert ref.shape == (VAL_IMAGES, 10, 2100) and bench["runs"] == 5 and bench["ms_median"] > 0
    ours = metrics(vals.gt, detections(ref, package.manifest, vals.letterboxes, vals.image_ids),
                   package.manifest.classes)
    theirs = evaluate_package(package, val, "onnxruntime", limit=VAL_IMAGES).metrics
    assert ours["mAP@0.5"] == pytest.approx(theirs.map50, abs=1e-4)
    assert ours["mAP@0.5:0.95"] == pytest.approx(theirs.map, abs=1e-4)
    assert ours["mAP@0.5"] > 0.8
    noisy = ref.copy()
    noisy[:, 4:] = 0.0  # no scores: no detections, AP 0
    none = metrics(vals.gt, detections(noisy, package.manifest, vals.letterboxes,
                                       vals.image_ids), package.manifest.classes)
    assert none["mAP@0.5"] <= 0.0


def _results(variants: dict[str, object]) -> dict[str, object]:
    m = {"mAP@0.5": 0.9683, "mAP@0.5:0.95": 0.8508, "AP_small@0.5:0.95": None}
    return {
        "package": "pkg", "command": "detserve-model export-tflite pkg --out o",
        "machine": {"cpu": "Some CPU", "logical_cpus": 2},
        "val": {"dataset": "val.json", "images": 3},
        "onnxruntime": {"bytes": 100, "bench": {"ms_median": 9.5, "ms_p90": 10.0}, "metrics": m},
        "variants": variants, "notes": ["a note"], "versions": {"onnx2tf": "1.0"},
    }


def test_report_markdown_lists_each_model() -> None:
    io = {"inputs": [{"name": "images", "shape": [1, 320, 320, 3], "dtype": "int8",
                      "quantization": {"scale": 1 / 255, "zero_point": -128}}],
          "outputs": [{"name": "scores", "shape": [1, 6, 2100], "dtype": "float32",
                       "quantization": None}]}  # fmt: skip
    v = {"file": "model_int8.tflite", "bytes": 1234, "io": io, "bench": {"ms_median": 3.25,
         "ms_p90": 4.0}, "diff_vs_onnxruntime": {"max_abs_diff_boxes_px": 0.5,
         "max_abs_diff_scores": 2e-5, "confident": {"max_abs_diff_boxes_px": 0.25,
         "mean_abs_diff_boxes_px": 0.125, "max_abs_diff_scores": 1e-5}},
         "metrics": {"mAP@0.5": 0.95, "mAP@0.5:0.95": 0.8, "AP_small@0.5:0.95": 0.7123}}
    md = report_markdown(_results({"int8": v}))
    assert "| int8 | 1234 | 3.25, 4.0 | 0.5 (0.25, 0.125) | 2e-05 (1e-05) | 0.95 | 0.8 | " \
           "0.7123 |" in md
    assert "| ONNX (onnxruntime) | 100 | 9.5, 10.0 | (reference) | (reference) | 0.9683 | " \
           "0.8508 | n/a |" in md
    assert "`images` int8 [1, 320, 320, 3], scale 0.00392157, zero point -128" in md
    assert "Some CPU, 2 logical CPUs" in md and "- a note" in md


@needs_env
@pytest.mark.timeout(1500)  # two onnx2tf conversions: 2.5 min on an idle 2-core host, more shared
def test_export_in_the_tflite_env(tmp_path: Path, val: Path) -> None:
    """The whole command on 8 val images, INT8 calibrated on 8 scenes."""
    rc = main(["export-tflite", str(PKG), "--out", str(tmp_path), "--int8", "--n", "8",
               "--data", str(val), "--limit", "8", "--runs", "5"])
    assert rc == 0
    checks = json.loads((tmp_path / "checks.json").read_text())
    fp32, int8 = checks["variants"]["fp32"], checks["variants"]["int8"]
    assert fp32["io"]["inputs"][0]["shape"] == [1, 320, 320, 3]
    assert fp32["io"]["outputs"][0]["shape"] == [1, 10, 2100]
    assert fp32["diff_vs_onnxruntime"]["max_abs_diff_boxes_px"] < 1e-2
    assert fp32["diff_vs_onnxruntime"]["max_abs_diff_scores"] < 1e-3
    assert fp32["metrics"] == checks["onnxruntime"]["metrics"]
    assert [t["dtype"] for t in int8["io"]["inputs"]] == ["int8"]
    # The head convs' logits, NHWC: box distributions (64) and classes (6) at 3 levels.
    assert sorted(t["shape"] for t in int8["io"]["outputs"]) == sorted(
        [1, s, s, c] for s in (40, 20, 10) for c in (64, 6))
    assert all(t["dtype"] == "int8" for t in int8["io"]["outputs"])
    assert len(int8["body_outputs"]) == 6 and int8["float_tail"]["nodes"] == 25
    assert all(b["mean_abs_diff"] < 10 * b["int8_scale"] for b in int8["body_outputs"].values())
    assert 0 < int8["bench"]["tail_ms_median"] < int8["bench"]["ms_median"]
    assert int8["metrics"]["mAP@0.5"] > fp32["metrics"]["mAP@0.5"] - 0.1
    assert int8["bytes"] < fp32["bytes"] / 2
    assert (tmp_path / "model_int8_tail.onnx").is_file() and (tmp_path / "report.md").is_file()
