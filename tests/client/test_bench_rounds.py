"""The rounds arithmetic on result rows: ratios are paired within a round, the median of the
rounds' ratios is reported, and each level shows its median round (a real row)."""

from __future__ import annotations

from typing import Any

from detserve.client.bench.report import default_vs_no_batching
from detserve.client.bench.rounds import (
    ratios_by_level,
    representative,
    representative_rows,
    saturation_ratios,
)


def _row(setting: str, role: str, level: float, rnd: int, rps: float) -> dict[str, Any]:
    return {"setting": setting, "role": role, "level": level, "round": rnd,
            "throughput_rps": rps, "latency_p99_ms": 10.0 * rps, "ok": 10, "errors": 0}


def _rows() -> list[dict[str, Any]]:
    # Round 1 ran on a slow host: both settings slower; within-round ratios stay near 1.
    served = [(1, 0, 100.0), (1, 1, 60.0), (1, 2, 102.0), (8, 0, 200.0), (8, 1, 120.0),
              (8, 2, 190.0)]
    base = [(1, 0, 98.0), (1, 1, 62.0), (1, 2, 100.0), (8, 0, 150.0), (8, 1, 80.0),
            (8, 2, 150.0)]
    return ([_row("b8", "served_default", lv, r, v) for lv, r, v in served]
            + [_row("b1", "no_batching", lv, r, v) for lv, r, v in base])


def test_ratios_pair_rounds_and_the_median_is_reported() -> None:
    rows = _rows()
    mine = [r for r in rows if r["setting"] == "b8"]
    ref = [r for r in rows if r["setting"] == "b1"]
    ratios = ratios_by_level(mine, ref)
    assert [round(v, 4) for v in ratios[1.0]] == [round(100 / 98, 4), round(60 / 62, 4),
                                                  round(102 / 100, 4)]
    # Pairing across rounds (b8's best round against b1's worst) would give 200 / 80 = 2.5.
    assert [round(v, 3) for v in ratios[8.0]] == [1.333, 1.5, 1.267]
    lines = default_vs_no_batching(rows)
    assert any(line.startswith("| 1 | 100.0 | 98.0 | **1.02** | 1.02 / 0.97 / 1.02 |")
               for line in lines), lines
    assert any("| 8 | 190.0 | 150.0 | **1.33** | 1.33 / 1.50 / 1.27 |" in line for line in lines)
    best = [round(v, 3) for v in saturation_ratios(
        mine, ref, lambda rs: max(rs, key=lambda r: r["throughput_rps"]) if rs else None)]
    assert best == [1.333, 1.5, 1.267]
    assert "**1.33** (rounds: 1.33, 1.50, 1.27)" in lines[-1]


def test_representative_is_each_levels_median_round() -> None:
    shown = representative_rows(_rows())
    assert [(r["setting"], r["level"], r["round"]) for r in shown] == [
        ("b8", 1, 0), ("b8", 8, 2), ("b1", 1, 0), ("b1", 8, 0)]
    doc = {"settings": [{"name": "b8", "levels": [
        {"spec": {"level": lv}, "round": r, "throughput_rps": v}
        for lv, r, v in ((1, 0, 5.0), (1, 1, 3.0), (1, 2, 4.0))]}]}
    (setting,) = representative(doc)["settings"]
    assert [lv["round"] for lv in setting["levels"]] == [2]
    one_round = {"settings": [{"name": "x", "levels": [{"spec": {"level": 1}}]}]}
    assert representative(one_round) is one_round
