"""Distillation (`detserve-model train --teacher`): real few-step runs against the shipped
shapes_320 package as the teacher, and the CLI's one-line errors for a bad --teacher."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from detserve.models.detector import DetectorConfig, build_detector, save_checkpoint
from detserve.models.distill import (
    DistillConfig,
    Distiller,
    TeacherError,
    distill_loss,
    load_teacher,
    make_distiller,
)
from detserve.models.scenes import CLASSES
from detserve.models.train import TrainConfig, train
from detserve.models.train_data import AugmentConfig, Sample, make_batch, render_pool

TEACHER = Path(__file__).resolve().parents[2] / "models" / "packages" / "shapes_320"
STUDENT = DetectorConfig(len(CLASSES), width_mult=0.25, depth_mult=0.34)
SIZE = 160
NO_AUG = AugmentConfig(size=SIZE, jitter_prob=0.0, flip_prob=0.0)
STEPS = 12


@pytest.fixture(scope="module")
def pool() -> list[Sample]:
    return render_pool("train", 4, [(320, 320)], None, None, progress=False)


def _cfg(out: Path) -> TrainConfig:
    # Batch 4 of a 4-scene pool without augmentation: every step sees the same batch, so the
    # distillation terms measure how far the student still is from the teacher on it.
    return TrainConfig(out_dir=str(out), epochs=STEPS, batch_size=4, input_size=SIZE, lr=4e-3,
                       warmup_steps=1, eval_every=0, save_every=1000, augment=NO_AUG, threads=1)


def _run(pool: list[Sample], out: Path, cfg: DistillConfig) -> Distiller:
    distiller = make_distiller(TEACHER, cfg)
    result = train(STUDENT, _cfg(out), pool, [], CLASSES, progress=False, distill=distiller)
    assert result.steps == STEPS
    assert all(math.isfinite(v) for v in result.losses)
    assert {"distill_cls", "distill_box"} <= result.metrics[-1].keys()
    return distiller


def test_distillation_pulls_the_student_toward_the_teacher(pool: list[Sample],
                                                           tmp_path: Path) -> None:
    taught = _run(pool, tmp_path / "taught", DistillConfig(cls_weight=1.0, box_weight=1.0))
    # The same run with the teacher's terms weighted ~0: they are still recorded, so it shows
    # how far training on the labels alone gets toward the teacher in the same steps.
    alone = _run(pool, tmp_path / "alone", DistillConfig(cls_weight=1e-9, box_weight=1e-9))
    for history in (taught.cls_history, taught.box_history, alone.cls_history):
        assert len(history) == STEPS
        assert all(math.isfinite(v) and v > 0 for v in history), history
    assert np.mean(taught.cls_history[-3:]) < 0.95 * np.mean(taught.cls_history[:3])
    assert np.mean(taught.box_history[-3:]) < 0.9 * np.mean(taught.box_history[:3])
    # Step 1 is the same untrained student in both runs; after it, only distillation closes in.
    assert taught.cls_history[0] == pytest.approx(alone.cls_history[0], rel=1e-5)
    assert taught.cls_history[-1] < 0.95 * alone.cls_history[-1]
    assert taught.box_history[-1] < alone.box_history[-1]


def test_terms_vanish_for_the_teacher_itself_and_scale_with_the_weights(
        pool: list[Sample]) -> None:
    teacher = load_teacher(TEACHER)
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.dtype == torch.float32 for p in teacher.parameters())
    images = make_batch(pool[:2], NO_AUG, np.random.default_rng(0)).images
    with torch.no_grad():
        t_raw = teacher.raw(images)
        same = distill_loss(teacher, t_raw, t_raw, DistillConfig())
        student = build_detector(STUDENT).eval()
        s_raw = student.raw(images)
        one = distill_loss(student, s_raw, t_raw, DistillConfig(temperature=1.0))
        box_only = distill_loss(student, s_raw, t_raw,
                                DistillConfig(cls_weight=0.0, box_weight=3.0, temperature=1.0))
    assert abs(same.cls) < 1e-5 and abs(same.box) < 1e-5
    assert one.cls > 0.1 and one.box > 0.1
    assert float(one.total) == pytest.approx(one.cls + one.box, rel=1e-5)
    assert float(box_only.total) == pytest.approx(3.0 * one.box, rel=1e-5)


def test_teacher_sources_that_cannot_teach_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TeacherError, match="no package or checkpoint at"):
        load_teacher(tmp_path / "missing")
    with pytest.raises(TeacherError, match="has no torch checkpoint"):
        load_teacher(tmp_path)
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint\n")
    with pytest.raises(TeacherError, match="is not a detserve detector checkpoint"):
        load_teacher(junk)
    other = save_checkpoint(build_detector(DetectorConfig(3)), DetectorConfig(3),
                            tmp_path / "three.pt")
    distiller = make_distiller(other, DistillConfig())
    with pytest.raises(TeacherError, match="has 3 classes and reg_max 16; the student has 6"):
        distiller.prepare(STUDENT, "cpu")
    with pytest.raises(ValueError, match="both 0"):
        DistillConfig(cls_weight=0.0, box_weight=0.0)


@pytest.mark.parametrize("teacher", ["missing_dir", "junk.pt"])
def test_cli_bad_teacher_is_one_line(tmp_path: Path, teacher: str) -> None:
    (tmp_path / "junk.pt").write_bytes(b"\x00\x01 not torch")
    path = tmp_path / teacher
    done = subprocess.run(
        [sys.executable, "-m", "detserve.models.cli", "train", "--teacher", str(path),
         "--out-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"),
         "--no-progress"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("detserve-model train: error: --teacher: ")
    assert str(path) in lines[0]
    assert not (tmp_path / "cache").exists()  # refused before rendering anything
