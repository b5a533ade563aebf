from __future__ import annotations

from pathlib import Path
from typing import cast

import pytest
import torch

from detserve.models.detector import (
    STRIDES,
    DetectorConfig,
    build_detector,
    count_parameters,
    load_checkpoint,
    make_anchors,
    save_checkpoint,
)

TINY = DetectorConfig(num_classes=3, width_mult=0.25, depth_mult=0.34)


def test_output_layout_is_yolov8_shape() -> None:
    model = build_detector(TINY).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 96))
    n = sum((64 // s) * (96 // s) for s in STRIDES)
    assert tuple(out.shape) == (2, 4 + 3, n)
    scores = out[:, 4:]
    assert float(scores.min()) >= 0.0 and float(scores.max()) <= 1.0


def test_parameter_counts_of_default_and_large_variants() -> None:
    default = count_parameters(build_detector(DetectorConfig(6)))
    large = count_parameters(build_detector(DetectorConfig(6, 2.0, 2.0)))
    assert 1_000_000 <= default <= 1_700_000
    assert large > 3 * default


def test_decode_maps_dfl_bins_to_pixel_boxes() -> None:
    """One-hot DFL logits at bin k put every side k strides from the cell centre."""
    model = build_detector(TINY).eval()
    r, nc, k = TINY.reg_max, TINY.num_classes, 3
    raw = []
    for s in STRIDES:
        level = torch.full((1, 4 * r + nc, 64 // s, 64 // s), -50.0)
        level[:, [side * r + k for side in range(4)]] = 50.0
        level[:, 4 * r + 1] = 0.0  # class 1 -> sigmoid(0) = 0.5
        raw.append(level)
    with torch.no_grad():
        out = model.decode(raw)[0]
    points, strides = make_anchors([(64 // s, 64 // s) for s in STRIDES])
    torch.testing.assert_close(out[0], points[:, 0])
    torch.testing.assert_close(out[1], points[:, 1])
    torch.testing.assert_close(out[2], 2 * k * strides[:, 0])
    torch.testing.assert_close(out[3], 2 * k * strides[:, 0])
    torch.testing.assert_close(out[5], torch.full_like(out[5], 0.5))
    assert float(out[4].max()) < 1e-6


def test_make_anchors_first_cells_and_strides() -> None:
    points, strides = make_anchors([(2, 2), (1, 1), (1, 1)])
    assert points[:4].tolist() == [[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]]
    assert points[4].tolist() == [8.0, 8.0] and points[5].tolist() == [16.0, 16.0]
    assert strides[:, 0].tolist() == [8.0] * 4 + [16.0, 32.0]


def _randomise_bn(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            cast(torch.Tensor, m.running_mean).copy_(torch.randn(n, generator=gen) * 0.1)
            cast(torch.Tensor, m.running_var).copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def test_fuse_keeps_outputs() -> None:
    model = build_detector(TINY).eval()
    _randomise_bn(model)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        after = model.fuse()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, atol=1e-4, rtol=1e-4)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    model = build_detector(TINY).eval()
    _randomise_bn(model)
    path = save_checkpoint(model, TINY, tmp_path / "m.pt")
    loaded, cfg = load_checkpoint(path)
    assert cfg == TINY
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_load_checkpoint_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError, match=r"bad\.pt"):
        load_checkpoint(bad)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"num_classes": 0}, "num_classes must be >= 1, got 0"),
     ({"num_classes": 2, "width_mult": 0.0}, "width_mult must be in"),
     ({"num_classes": 2, "depth_mult": 9.0}, "depth_mult must be in .* got 9.0"),
     ({"num_classes": 2, "reg_max": 1}, "reg_max must be in .* got 1")],
)
def test_config_rejects_bad_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DetectorConfig(**kwargs)  # type: ignore[arg-type]
