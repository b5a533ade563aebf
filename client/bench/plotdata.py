"""What the plots draw, taken from a results document (no matplotlib here, so tests can check
the data series directly).

Settings are compared at equal load: a "level key" is the load mode and its level (callers,
offered req/s or cameras), and per-level figures put every setting that ran a key in one panel.
Series are sorted by load, so lines never run back along the load axis.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from detserve.client.bench.report import clean_under_slo
from detserve.client.bench.resultsdoc import csv_rows

MODE_ORDER = ("closed", "open", "camera")
# Short words for the outcomes that are not a timely OK (the outcome plots' legends give codes).
PROBLEM_WORDS = {"RESOURCE_EXHAUSTED": "refused", "DEADLINE_EXCEEDED": "past deadline",
                 "CLIENT_BACKLOG": "not sent", "dropped": "dropped", "stale": "stale"}


@dataclass(frozen=True, order=True)
class LevelKey:
    """One load: the mode and its level; sorts closed, open, camera, then by level."""

    rank: int
    level: float
    mode: str

    @classmethod
    def of(cls, spec: dict[str, Any]) -> LevelKey:
        mode = str(spec["mode"])
        rank = MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)
        return cls(rank, round(float(spec["level"]), 6), mode)

    def label(self, fps: float = 0.0) -> str:
        """Panel title: `4 callers`, `61.8 req/s offered`, `8 cameras at 15 fps`."""
        if self.mode == "closed":
            return f"{self.level:g} caller{'' if self.level == 1 else 's'} (closed loop)"
        if self.mode == "open":
            return f"{self.level:.4g} req/s offered (open loop)"
        return f"{self.level:g} cameras" + (f" at {fps:g} fps" if fps else "")

    def phrase(self) -> str:
        """In a sentence: `4 callers`, `79.5 req/s offered`, `8 cameras`."""
        if self.mode == "closed":
            return f"{self.level:g} caller{'' if self.level == 1 else 's'}"
        if self.mode == "open":
            return f"{self.level:.3g} req/s offered"
        return f"{self.level:g} cameras"

    def tag(self) -> str:
        """Point label: `c4`, `61.8/s`, `8 cams`."""
        if self.mode == "closed":
            return f"c{self.level:g}"
        if self.mode == "open":
            return f"{self.level:.3g}/s"
        return f"{self.level:g} cams"


@dataclass(frozen=True)
class Point:
    """One load level of one setting: the results' level entry and its CSV row."""

    setting: str
    key: LevelKey
    level: dict[str, Any]
    row: dict[str, Any]

    @property
    def throughput_rps(self) -> float:
        return float(self.row["throughput_rps"])

    @property
    def p99_ms(self) -> float:
        return float(self.row["latency_p99_ms"])

    @property
    def problems(self) -> dict[str, int]:
        """Calls not answered OK in time, by kind (error codes, dropped, stale); non-zero only."""
        out = {code: int(n) for code, n in self.level["errors"].items() if n}
        for kind in ("dropped", "stale"):
            if self.level.get(kind):
                out[kind] = int(self.level[kind])
        return out

    def problem_text(self) -> str:
        """`7709 refused`, `1058 dropped, 1311 stale`; "" when every call was a timely OK."""
        return ", ".join(f"{n} {PROBLEM_WORDS.get(k, k.lower())}"
                         for k, n in self.problems.items())


def points(doc: dict[str, Any]) -> list[Point]:
    rows = iter(csv_rows(doc))
    return [Point(s["name"], LevelKey.of(lv["spec"]), lv, next(rows))
            for s in doc["settings"] for lv in s["levels"]]


def setting_names(doc: dict[str, Any]) -> list[str]:
    return list(dict.fromkeys(s["name"] for s in doc["settings"]))


def level_keys(doc: dict[str, Any]) -> list[LevelKey]:
    return sorted({p.key for p in points(doc)})


def at_level(doc: dict[str, Any], key: LevelKey) -> list[Point]:
    """Every setting's point at `key`, in the document's setting order (first run of it)."""
    seen: dict[str, Point] = {}
    for p in points(doc):
        if p.key == key and p.setting not in seen:
            seen[p.setting] = p
    return list(seen.values())


def series(doc: dict[str, Any], mode: str) -> dict[str, list[Point]]:
    """Per setting, its points in `mode`, sorted by load (settings without any are left out)."""
    out: dict[str, list[Point]] = {}
    for p in points(doc):
        if p.key.mode == mode:
            out.setdefault(p.setting, []).append(p)
    return {name: sorted(pts, key=lambda p: p.key) for name, pts in out.items()}


def curve_modes(doc: dict[str, Any]) -> list[str]:
    """Modes in which some setting ran two or more levels (a curve to draw)."""
    modes = {p.key.mode for p in points(doc)}
    return [m for m in MODE_ORDER if m in modes
            and any(len(pts) >= 2 for pts in series(doc, m).values())]


def fps_of(doc: dict[str, Any]) -> float:
    fps = {float(lv["spec"]["fps"]) for s in doc["settings"] for lv in s["levels"]
           if lv["spec"]["mode"] == "camera"}
    return fps.pop() if len(fps) == 1 else 0.0


def latency_percentiles(level: dict[str, Any]) -> tuple[list[float], list[float]]:
    """(x, latency ms) of the measured OK calls, x = 1 / (1 - percentile) so that a log axis
    spaces 50 %, 90 %, 99 %, 99.9 % evenly: the i-th fastest of n sits at 1 / (1 - i / n)."""
    from detserve.client.bench.report import ok_latencies

    lat = sorted(ok_latencies(level))
    n = len(lat)
    return [1.0 / (1.0 - i / n) for i in range(n)], lat


def batch_fractions(level: dict[str, Any]) -> dict[int, float]:
    """Share of the OK calls that ran in a batch of each size."""
    counts = {int(k): int(v) for k, v in level["batch_sizes"].items()}
    total = sum(counts.values())
    return {k: v / total for k, v in sorted(counts.items())} if total else {}


def largest_batch(doc: dict[str, Any]) -> int:
    """The batch axis' end: the largest max_batch_size of any setting, or batch formed."""
    sizes = [int(k) for s in doc["settings"] for lv in s["levels"] for k in lv["batch_sizes"]]
    sizes += [int((s.get("batching") or {}).get("max_batch_size") or 1) for s in doc["settings"]]
    return max(sizes, default=1)


STAGES = ("queue_ms", "preprocess_ms", "inference_ms", "postprocess_ms")


def stage_means(level: dict[str, Any]) -> dict[str, float]:
    """Mean server time per stage (ms) of the OK calls; 0 where no call reported it."""
    return {k: 0.0 if math.isnan(v := float(level["server_ms"][k])) else v for k in STAGES}


def outcomes(p: Point) -> dict[str, int]:
    """Measured calls by outcome: OK (in time), stale OK, dropped, then each error code."""
    lv = p.level
    stale = int(lv.get("stale", 0))
    out = {"OK": int(lv["ok"]) - stale, "stale": stale, "dropped": int(lv.get("dropped", 0))}
    out.update({code: int(n) for code, n in sorted(lv["errors"].items())})
    return out


@dataclass(frozen=True)
class SloBar:
    """A setting's best clean level under the SLO (None: none met it) and its best at any
    latency (None: nothing was answered)."""

    setting: str
    under: Point | None
    best: Point | None


def slo_bars(doc: dict[str, Any], slo_ms: float) -> list[SloBar]:
    """Per setting, by report.clean_under_slo (the recommendation's rule)."""
    out = []
    pts = points(doc)
    for name in setting_names(doc):
        mine = [p for p in pts if p.setting == name and p.row["ok"] > 0]
        under = [p for p in mine if clean_under_slo(p.row, slo_ms)]
        out.append(SloBar(name, max(under, key=lambda p: p.throughput_rps, default=None),
                          max(mine, key=lambda p: p.throughput_rps, default=None)))
    return out


_SPLIT = re.compile(r"([_-])")


def short_names(names: Sequence[str]) -> tuple[dict[str, str], str]:
    """Names without the tokens (split at _ and -) that every name shares, and those tokens:
    `b8_d2ms_i1_w400ms_sbs1-8` among siblings -> `b8_d2ms_sbs1-8`, common `i1 w400ms`."""
    split = {n: _SPLIT.split(n)[::2] for n in names}
    common = set.intersection(*(set(t) for t in split.values())) if len(names) > 1 else set()
    out = {}
    for n in split:
        parts = _SPLIT.split(n)
        kept: list[str] = []
        for i in range(0, len(parts), 2):
            if parts[i] in common:
                continue
            if kept:
                kept.append(parts[i - 1])
            kept.append(parts[i])
        out[n] = "".join(kept) or n
    if len(set(out.values())) < len(out):  # shortening made two alike: keep the full names
        return {n: n for n in names}, ""
    shared = [t for t in split[names[0]] if t in common] if names else []
    return out, " ".join(dict.fromkeys(shared))
