"""Sweeps that repeat their ladder (`rounds` > 1): each level runs once per round for every
setting, in turn, the first setting alternating from round to round.

On a host whose speed drifts from one minute to the next, one pass compares two settings at
moments that differ by more than the settings do: two servers on an identical path (batches of
one at one caller) measured 0.95 apart. A ratio is therefore taken within a round, where both
settings ran back to back, and the report gives the median of the rounds' ratios, each round's
ratio beside it. The tables, plots and recommendation use each level's median round (the round
whose throughput is the median for that setting and level), so every row shown is one real
measurement, not a blend of several.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any


def round_of(level: dict[str, Any]) -> int:
    """The round a level entry was measured in (0 for results from before rounds)."""
    return int(level.get("round", 0))


def rounds_in(doc: dict[str, Any]) -> int:
    return 1 + max((round_of(lv) for s in doc["settings"] for lv in s["levels"]), default=0)


def _median_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The entry with the median throughput (the lower middle one for an even count)."""
    ranked = sorted(entries, key=lambda lv: float(lv["throughput_rps"]))
    return ranked[(len(ranked) - 1) // 2]


def representative(doc: dict[str, Any]) -> dict[str, Any]:
    """`doc` with each setting's repeated levels collapsed to their median round, in the order
    the levels first ran; `doc` itself when it has one round."""
    if rounds_in(doc) == 1:
        return doc
    settings = []
    for setting in doc["settings"]:
        by_level: dict[float, list[dict[str, Any]]] = defaultdict(list)
        for lv in setting["levels"]:
            by_level[float(lv["spec"]["level"])].append(lv)
        levels = [_median_entry(entries) for entries in by_level.values()]
        settings.append({**setting, "levels": levels})
    return {**doc, "settings": settings}


Row = dict[str, Any]


def representative_rows(rows: list[Row]) -> list[Row]:
    """The csv rows of `representative`: one per setting and level, its median round."""
    if all(int(r.get("round", 0)) == 0 for r in rows):
        return rows
    groups: dict[tuple[str, float], list[Row]] = defaultdict(list)
    for r in rows:
        groups[(str(r["setting"]), float(r["level"]))].append(r)
    return [_median_entry(entries) for entries in groups.values()]


def ratios_by_level(mine: list[Row], ref: list[Row]) -> dict[float, list[float]]:
    """level -> throughput ratio mine ÷ ref in each round both measured it, in round order."""
    ref_at = {(float(r["level"]), int(r.get("round", 0))): r for r in ref}
    out: dict[float, list[float]] = defaultdict(list)
    for r in sorted(mine, key=lambda r: int(r.get("round", 0))):
        b = ref_at.get((float(r["level"]), int(r.get("round", 0))))
        if b is not None:
            out[float(r["level"])].append(_ratio(r, b))
    return dict(out)


def saturation_ratios(mine: list[Row], ref: list[Row],
                      best: Callable[[list[Row]], Row | None]) -> list[float]:
    """Per round: the highest throughput mine reached ÷ the highest ref reached."""
    out = []
    for k in sorted({int(r.get("round", 0)) for r in mine}):
        top = best([r for r in mine if int(r.get("round", 0)) == k])
        top_ref = best([r for r in ref if int(r.get("round", 0)) == k])
        if top is not None and top_ref is not None:
            out.append(_ratio(top, top_ref))
    return out


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _ratio(r: Row, b: Row) -> float:
    return r["throughput_rps"] / b["throughput_rps"] if b["throughput_rps"] else float("nan")
