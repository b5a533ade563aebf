from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from detserve.models.detector import DetectorConfig, load_checkpoint
from detserve.models.scenes import CLASSES
from detserve.models.train import TrainConfig, lr_at, train
from detserve.models.train_data import (
    AugmentConfig,
    Sample,
    augment,
    letterbox_fit,
    render_pool,
)

TINY = DetectorConfig(len(CLASSES), width_mult=0.25, depth_mult=0.34)
NO_AUG = AugmentConfig(size=128, jitter_prob=0.0, flip_prob=0.0)


@pytest.fixture(scope="module")
def pool() -> list[Sample]:
    return render_pool("train", 4, [(128, 128)], None, None, progress=False)


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(out_dir=str(out), epochs=1, batch_size=4, input_size=128,
                                   lr=4e-3, warmup_steps=1, eval_every=0, save_every=100,
                                   augment=NO_AUG, threads=1)
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_loss_falls_when_fitting_four_scenes(pool: list[Sample], tmp_path: Path) -> None:
    result = train(TINY, _cfg(tmp_path, epochs=30), pool, [], CLASSES, progress=False)
    assert result.steps == 30
    first, last = np.mean(result.losses[:3]), np.mean(result.losses[-3:])
    assert last < 0.7 * first, (first, last)
    _, cfg = load_checkpoint(result.checkpoint)
    assert cfg == TINY


def test_resume_reproduces_the_uninterrupted_run(pool: list[Sample], tmp_path: Path) -> None:
    # Augmentation on, so resuming must also replay the random draws exactly.
    aug = AugmentConfig(size=128)
    full = train(TINY, _cfg(tmp_path / "a", epochs=4, augment=aug), pool * 2, [], CLASSES,
                 progress=False)
    part = _cfg(tmp_path / "b", epochs=4, augment=aug, max_steps=3)
    first = train(TINY, part, pool * 2, [], CLASSES, progress=False)
    assert first.steps == 3
    rest = train(TINY, _cfg(tmp_path / "b", epochs=4, augment=aug), pool * 2, [], CLASSES,
                 resume=first.checkpoint, progress=False)
    assert rest.steps == full.steps == 8
    np.testing.assert_allclose(rest.losses, full.losses[3:], rtol=1e-4, atol=1e-5)
    a, _ = load_checkpoint(full.checkpoint)
    b, _ = load_checkpoint(rest.checkpoint)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(pa, pb, atol=1e-5, rtol=1e-4, msg=name)


def test_resume_refuses_another_architecture(pool: list[Sample], tmp_path: Path) -> None:
    first = train(TINY, _cfg(tmp_path, max_steps=1), pool, [], CLASSES, progress=False)
    other = DetectorConfig(len(CLASSES), width_mult=0.5, depth_mult=0.34)
    with pytest.raises(ValueError, match=r"width_mult=0\.5"):
        train(other, _cfg(tmp_path), pool, [], CLASSES, resume=first.checkpoint, progress=False)


def test_augment_keeps_boxes_on_the_objects(pool: list[Sample]) -> None:
    rng = np.random.default_rng(3)
    sample = pool[0]
    for _ in range(5):
        img, boxes, classes = augment(sample, AugmentConfig(size=160), rng)
        assert img.shape == (160, 160, 3)
        assert len(boxes) == len(classes)
        assert float(boxes.min(initial=0)) >= 0 and float(boxes.max(initial=0)) <= 160
    img, boxes, classes = augment(sample, AugmentConfig(size=256, jitter_prob=0.0,
                                                        flip_prob=0.0), rng)
    # Exact letterbox of a 128x128 scene into 256: scale 2, no pad.
    np.testing.assert_allclose(boxes, sample.boxes * 2, atol=1e-4)
    assert classes.tolist() == sample.classes.tolist()


def test_letterbox_fit_matches_ultralytics_rounding() -> None:
    fit = letterbox_fit(640, 480, 320)
    assert (fit.new_w, fit.new_h, fit.pad_x, fit.pad_y) == (320, 240, 0, 40)
    fit = letterbox_fit(641, 100, 320)
    assert (fit.new_w, fit.new_h, fit.pad_x, fit.pad_y) == (320, 50, 0, 135)


def test_lr_schedule_warms_up_then_decays_to_floor(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path, warmup_steps=10, lr=1e-3, final_lr_frac=0.1)
    assert lr_at(0, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(9, 100, cfg) == pytest.approx(1e-3)
    assert lr_at(100, 100, cfg) == pytest.approx(1e-4)
    assert lr_at(55, 100, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))


def test_train_config_rejects_bad_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="input_size must be a multiple of 32, got 100"):
        _cfg(tmp_path, input_size=100)
    with pytest.raises(ValueError, match="max_steps must be >= 1 or None, got 0"):
        _cfg(tmp_path, max_steps=0)


def test_cli_lists_subcommands_and_skips_only_missing_modules(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from detserve.models import cli

    args = cli.build_parser().parse_args(["train", "--epochs", "3", "--resume"])
    assert (args.command, args.epochs, args.resume) == ("train", 3, True)
    (tmp_path / "broken_cli_mod.py").write_text("import no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES",
                        ("detserve.models.cli_train", "detserve.models.cli_not_written_yet"))
    assert "package" in cli.build_parser().format_help()
    # A subcommand module that exists but fails to import is a bug, never skipped.
    monkeypatch.setattr(cli, "SUBCOMMAND_MODULES", ("broken_cli_mod",))
    with pytest.raises(ModuleNotFoundError, match="no_such_dependency_xyz"):
        cli.build_parser()
