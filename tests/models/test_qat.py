"""QAT (models/qat.py, qat_export.py, cli_qat.py): a real 3-step NNCF fake-quant fine-tune of the
committed default model on a 4-scene train pool, exported as ORT QDQ and OpenVINO IR packages
that run in the real engines."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from detserve.engines.factory import create_engine
from detserve.engines.manifest import load_package
from detserve.engines.preprocess import prepare
from detserve.models.cli import main
from detserve.models.qat import QatRun, finetune, step_indices
from detserve.models.qat_config import QatConfig
from detserve.models.qat_export import write_qat_package
from detserve.models.quantize import CALIB_SEED_START, CalibrationSource
from detserve.models.scenes import render_scene, split_seeds

REPO = Path(__file__).resolve().parents[2]
FP32 = REPO / "models" / "packages" / "shapes_320"
INT8 = REPO / "models" / "packages" / "shapes_320_int8"
CFG = QatConfig(steps=3, batch_size=2, lr=1e-4, warmup_steps=1, train_scenes=4, save_every=2)
CALIB = CalibrationSource("synthetic", 4)


def _finetune(work: Path, cfg: QatConfig = CFG, resume: bool = False,
              max_steps: int | None = None) -> QatRun:
    return finetune(FP32, cfg, CALIB, work, resume, max_steps, cache_dir=None, progress=False,
                    log=lambda _: None)  # fmt: skip


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("qat_work")


@pytest.fixture(scope="module")
def run(work: Path) -> QatRun:
    return _finetune(work)


FLAGS = ["--steps", "3", "--batch-size", "2", "--lr", "1e-4", "--warmup-steps", "1",
         "--train-scenes", "4", "--n", "4", "--no-progress"]


@pytest.fixture(scope="module")
def cli_line(run: QatRun, work: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The OpenVINO package, written by the command reusing the fixture's fine-tune."""
    out, stdout = tmp_path_factory.mktemp("qat_cli") / "openvino", io.StringIO()
    with contextlib.redirect_stdout(stdout):
        code = main(["quantize-qat", str(FP32), "--engine", "openvino", "--out", str(out),
                     "--work-dir", str(work), *FLAGS])  # fmt: skip
    assert code == 0
    return stdout.getvalue().strip().splitlines()[-1]


@pytest.fixture(scope="module")
def packages(run: QatRun, cli_line: str, tmp_path_factory: pytest.TempPathFactory
             ) -> dict[str, Path]:  # fmt: skip
    ort = write_qat_package(run, tmp_path_factory.mktemp("qat_ort") / "ort", "onnxruntime")
    return {"onnxruntime": ort.package, "openvino": Path(json.loads(cli_line)["package"])}


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    # A val scene: never trained or calibrated on.
    image = render_scene(split_seeds("val", 1)[0], 640, 480).image
    return prepare(image, load_package(FP32).manifest).tensor[None]


def _infer(package: Path, engine: str, batch: np.ndarray) -> np.ndarray:
    eng = create_engine(load_package(package), engine, None)
    try:
        return np.asarray(eng.infer(batch)[0])
    finally:
        eng.close()


def test_fine_tune_runs_its_steps_on_train_scenes_only(run: QatRun, work: Path) -> None:
    assert run.steps == 3 and not run.reused
    assert len(run.losses) == 3 and all(math.isfinite(v) and v > 0 for v in run.losses)
    ck = torch.load(work / "qat_last.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == 3 and ck["losses"] == run.losses and ck["settings"] == CFG.settings()
    # Batches index the train pool (split_seeds("train", 4)), in epoch-wise permutations.
    drawn = [step_indices(CFG, s).tolist() for s in range(3)]
    assert sorted(drawn[0] + drawn[1]) == [0, 1, 2, 3] and len(drawn[2]) == 2


def test_packages_record_how_they_were_made(packages: dict[str, Path]) -> None:
    for root in packages.values():
        m = load_package(root).manifest
        assert m.precision == "int8" and m.metadata["derived_from"]["precision"] == "fp32"
        qat = m.metadata["qat"]
        assert (qat["steps"], qat["batch_size"], qat["lr"], qat["seed"]) == (3, 2, 1e-4, 0)
        assert "split_seeds('train', 4)" in qat["train_data"]
        cal = m.metadata["calibration"]
        assert cal["seeds"] == f"[{CALIB_SEED_START}, {CALIB_SEED_START + 4})"
        assert cal["split"] == "calib"
        assert "quantization-aware" in m.metadata["quantization"]["tool"]
        assert "torch_checkpoint" not in m.metadata  # the package holds no float weights
    qdq = onnx.load(str(packages["onnxruntime"] / "model.onnx")).graph
    count = load_package(packages["onnxruntime"]).manifest.metadata["quantization"]["quantize_ops"]
    assert count == sum(n.op_type == "QuantizeLinear" for n in qdq.node) > 50
    assert load_package(packages["openvino"]).manifest.model_file == "model.xml"
    assert load_package(packages["openvino"]).manifest.metadata["quantization"][
        "quantize_ops"] > 50


def test_packages_run_in_the_real_engines_and_agree(packages: dict[str, Path],
                                                    scene: np.ndarray) -> None:
    fp32 = _infer(FP32, "onnxruntime", scene)
    ort_q = _infer(packages["onnxruntime"], "onnxruntime", scene)
    ov_q = _infer(packages["openvino"], "openvino", np.repeat(scene, 2, 0))  # dynamic batch
    assert ort_q.shape == fp32.shape == (1, 10, 2100) and ov_q.shape == (2, 10, 2100)
    # Both exports are the same fake-quant model: they agree closely on the scores...
    assert np.abs(ort_q[0, 4:] - ov_q[0, 4:]).max() < 0.05
    # ...and 3 small steps keep it near FP32: the same confident anchors, boxes within 2 px.
    top = np.argsort(fp32[0, 4:].max(0))[-20:]
    assert np.abs(ort_q[0, 4:, top] - fp32[0, 4:, top]).max() < 0.1
    assert np.abs(ort_q[0, :4, top] - fp32[0, :4, top]).max() < 2.0


def test_finished_fine_tune_is_reused_and_settings_are_checked(run: QatRun, work: Path) -> None:
    again = _finetune(work)
    assert again.reused and again.steps == 3 and again.losses == run.losses
    with pytest.raises(ValueError, match="other settings"):
        _finetune(work, QatConfig(**{**CFG.settings(), "lr": 2e-4}))


def test_resumed_fine_tune_draws_the_same_batches(run: QatRun, tmp_path: Path) -> None:
    first = _finetune(tmp_path, max_steps=1)
    assert first.steps == 1
    with pytest.raises(ValueError, match=r"unfinished fine-tune \(step 1 of 3\).*--resume"):
        _finetune(tmp_path)
    resumed = _finetune(tmp_path, resume=True)
    assert resumed.steps == 3
    np.testing.assert_allclose(resumed.losses, run.losses, rtol=1e-4)


def test_cli_reuses_the_fine_tune_and_errors_in_one_line(
        cli_line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    line = json.loads(cli_line)
    assert line["reused_fine_tune"] is True and line["engine"] == "openvino"
    assert line["steps"] == 3 and line["quantize_ops"] > 50
    out = str(tmp_path / "x")
    assert main(["quantize-qat", str(INT8), "--engine", "openvino", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "fp32" in err[0]
    assert main(["quantize-qat", str(FP32), "--engine", "onnxruntime", "--steps", "0",
                 "--out", out]) == 2  # fmt: skip
    assert capsys.readouterr().err.strip().splitlines() == ["error: --steps must be >= 1, got 0"]
