"""The memory budget's arithmetic: activation memory per input side and batch size, and whether
doubling the side costs about 4x (the pixels, and so every feature map, grow with side²).

A measurement (`EngineMemory`) is one engine process: its RSS once the runtime is imported
(`base_mb`), once the engine is built and the input batch allocated (`loaded_mb`: ready to run),
and its peak during inference (`peak_mb`, VmHWM reset just before the runs). Activation memory
is `peak - loaded`: what running a batch adds on top of a loaded, idle engine. RSS is in MB
(10^6 bytes), like procstat's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

EXPECTED_SIDE_RATIO = 4.0  # 2x the side: 4x the pixels


@dataclass(frozen=True)
class EngineMemory:
    engine: str  # what ran, e.g. "onnxruntime fp32"
    side: int  # input side length (square inputs)
    batch: int
    base_mb: float
    loaded_mb: float
    peak_mb: float
    input_mb: float  # the float32 input batch itself (part of loaded_mb)

    @property
    def model_mb(self) -> float:
        """What building the engine added to the imported runtime (weights, graphs, plans)."""
        return self.loaded_mb - self.base_mb

    @property
    def activation_mb(self) -> float:
        return self.peak_mb - self.loaded_mb

    @property
    def activation_per_image_mb(self) -> float:
        return self.activation_mb / self.batch

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "model_mb": self.model_mb, "activation_mb": self.activation_mb}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> EngineMemory:
        return cls(str(raw["engine"]), int(raw["side"]), int(raw["batch"]),
                   float(raw["base_mb"]), float(raw["loaded_mb"]), float(raw["peak_mb"]),
                   float(raw["input_mb"]))


def ratio(a: float, b: float) -> float:
    """a ÷ b, nan when b is not a positive amount (an activation below the RSS noise)."""
    return a / b if b > 0 and math.isfinite(a) else float("nan")


def side_ratio(rows: Sequence[EngineMemory], row: EngineMemory) -> float:
    """Activation of `row` ÷ that of the same engine and batch at half the side; nan if absent."""
    for other in rows:
        if (other.engine, other.batch) == (row.engine, row.batch) and other.side * 2 == row.side:
            return ratio(row.activation_mb, other.activation_mb)
    return float("nan")


def _cell(v: float, digits: int = 1) -> str:
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def engine_table(rows: Sequence[EngineMemory]) -> str:
    """Markdown: one row per (engine, side, batch), with ÷ half the side."""
    lines = ["| engine | side | batch | base MB | loaded MB | model MB | input MB | peak MB | "
             "activation MB (peak − loaded) | per image MB | ÷ half the side |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r.engine, r.side, r.batch)):
        x = side_ratio(rows, r)
        lines.append(f"| {r.engine} | {r.side} | {r.batch} | {r.base_mb:.1f} | "
                     f"{r.loaded_mb:.1f} | {r.model_mb:.1f} | {r.input_mb:.1f} | "
                     f"{r.peak_mb:.1f} | {r.activation_mb:.1f} | "
                     f"{r.activation_per_image_mb:.1f} | "
                     f"{'' if math.isnan(x) else f'{x:.2f}×'} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class SideVerdict:
    engine: str
    small: int
    large: int
    ratios: tuple[float, ...]  # one per batch size measured at both sides

    @property
    def mean(self) -> float:
        ok = [r for r in self.ratios if not math.isnan(r)]
        return sum(ok) / len(ok) if ok else float("nan")

    def line(self) -> str:
        each = ", ".join(_cell(r, 2) for r in self.ratios)
        return (f"{self.engine}: {self.small} → {self.large} px, activation × "
                f"{_cell(self.mean, 2)} on average over batch sizes ({each}); expected ≈ "
                f"{EXPECTED_SIDE_RATIO:g}× (pixels × {EXPECTED_SIDE_RATIO:g})")


def side_verdicts(rows: Sequence[EngineMemory]) -> list[SideVerdict]:
    """Per engine and side doubling: the activation ratios over the batch sizes both share."""
    out = []
    for engine in dict.fromkeys(r.engine for r in rows):
        mine = [r for r in rows if r.engine == engine]
        sides = sorted({r.side for r in mine})
        for small in sides:
            if small * 2 not in sides:
                continue
            big = [r for r in mine if r.side == small * 2]
            ratios = tuple(side_ratio(mine, r) for r in sorted(big, key=lambda r: r.batch))
            out.append(SideVerdict(engine, small, small * 2, ratios))
    return out


def batch_slope_mb(rows: Sequence[EngineMemory], engine: str, side: int) -> float:
    """Least-squares activation MB per extra image at one side (nan with under two batches)."""
    pts = [(r.batch, r.activation_mb) for r in rows if r.engine == engine and r.side == side]
    if len(pts) < 2:
        return float("nan")
    n = len(pts)
    mx = sum(b for b, _ in pts) / n
    my = sum(a for _, a in pts) / n
    den = sum((b - mx) ** 2 for b, _ in pts)
    return sum((b - mx) * (a - my) for b, a in pts) / den if den else float("nan")
