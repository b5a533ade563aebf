"""The memory budget's arithmetic: activation = peak − loaded, the ratio to half the side, the
verdict per side doubling, the per-image slope, and the table's cells."""

from __future__ import annotations

import math

import pytest

from detserve.client.bench.memory_budget import (
    EngineMemory,
    batch_slope_mb,
    engine_table,
    side_ratio,
    side_verdicts,
)


def _row(side: int, batch: int, activation: float, engine: str = "ort fp32") -> EngineMemory:
    # base 100, engine adds 20 (+ input), peak = loaded + activation
    return EngineMemory(engine, side, batch, 100.0, 120.0 + batch, 120.0 + batch + activation,
                        float(batch))


ROWS = [_row(320, 1, 10.0), _row(320, 2, 20.0), _row(640, 1, 40.0), _row(640, 2, 80.0),
        _row(1280, 1, 150.0), _row(320, 1, 5.0, "ov int8"), _row(640, 1, -1.0, "ov int8")]


def test_activation_is_peak_minus_loaded() -> None:
    r = _row(640, 2, 80.0)
    assert (r.activation_mb, r.activation_per_image_mb, r.model_mb) == (80.0, 40.0, 22.0)
    assert EngineMemory.from_json(r.to_json()) == r
    assert r.to_json()["activation_mb"] == 80.0


def test_ratio_to_half_the_side() -> None:
    assert side_ratio(ROWS, ROWS[2]) == 4.0 and side_ratio(ROWS, ROWS[3]) == 4.0
    assert side_ratio(ROWS, ROWS[4]) == 3.75  # 1280 batch 1 ÷ 640 batch 1
    assert math.isnan(side_ratio(ROWS, ROWS[0]))  # no 160 measured
    # A half-side activation at or below zero (under the RSS noise) gives no ratio.
    assert math.isnan(side_ratio(ROWS, _row(1280, 1, 50.0, "ov int8")))


def test_side_verdicts_average_over_the_shared_batch_sizes() -> None:
    verdicts = side_verdicts(ROWS)
    got = {(v.engine, v.small, v.large): v for v in verdicts}
    assert set(got) == {("ort fp32", 320, 640), ("ort fp32", 640, 1280), ("ov int8", 320, 640)}
    assert got[("ort fp32", 320, 640)].ratios == (4.0, 4.0)
    assert got[("ort fp32", 640, 1280)].mean == 3.75
    ov = got[("ov int8", 320, 640)]
    assert ov.ratios == (pytest.approx(-0.2),) and ov.mean == pytest.approx(-0.2)
    assert got[("ort fp32", 320, 640)].line() == (
        "ort fp32: 320 → 640 px, activation × 4.00 on average over batch sizes (4.00, 4.00); "
        "expected ≈ 4× (pixels × 4)")


def test_batch_slope_and_table() -> None:
    assert batch_slope_mb(ROWS, "ort fp32", 320) == pytest.approx(10.0)
    assert batch_slope_mb(ROWS, "ort fp32", 640) == pytest.approx(40.0)
    assert math.isnan(batch_slope_mb(ROWS, "ort fp32", 1280))  # one batch size only
    table = engine_table(ROWS).splitlines()
    assert len(table) == 2 + len(ROWS)
    row_640_2 = next(line for line in table if line.startswith("| ort fp32 | 640 | 2 |"))
    cells = [c.strip() for c in row_640_2.strip("|").split("|")]
    assert cells[3:] == ["100.0", "122.0", "22.0", "2.0", "202.0", "80.0", "40.0", "4.00×"]
    row_320_1 = next(line for line in table if line.startswith("| ort fp32 | 320 | 1 |"))
    assert row_320_1.rstrip().endswith("|  |")  # no half side: the ratio cell stays empty
