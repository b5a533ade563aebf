"""Shared look of the report's figures: one colour per setting across every figure, panel
grids, legends below the panels (never over data), titles that say what ran."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import (
    FixedLocator,
    FuncFormatter,
    LogLocator,
    NullFormatter,
    NullLocator,
)

from detserve.client.bench import targetinfo

# tab10 without its red, which marks calls that failed (PROBLEM_COLOR) and nothing else.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf")
PROBLEM_COLOR = "#d62728"
DPI = 110


def colors(names: Sequence[str]) -> dict[str, Any]:
    """One colour per setting, in the document's order, the same in every figure."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def figure(width: float = 8.0, height: float = 5.0) -> Figure:
    return plt.figure(figsize=(width, height), layout="constrained")


def panel_grid(n: int, width_per: float = 4.2, height_per: float = 3.3,
               max_cols: int = 3) -> tuple[Figure, list[Axes]]:
    """`n` panels, at most `max_cols` a row; extra grid cells are hidden."""
    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    fig = plt.figure(figsize=(max(8.0, width_per * cols), height_per * rows + 1.4),
                     layout="constrained")
    axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def legend_below(fig: Figure, first: Sequence[str] = (), ncols: int | None = None) -> None:
    """A figure legend under the panels (outside every axes), one entry per label, the labels
    in `first` (the settings) ahead of the rest (markers and reference lines)."""
    found: dict[str, Any] = {}
    for ax in fig.axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            found.setdefault(lab, h)
    labels = [lab for lab in first if lab in found] + [lab for lab in found if lab not in first]
    if not labels:
        return
    fig.legend([found[lab] for lab in labels], labels, loc="outside lower center", fontsize=8,
               ncols=ncols or min(4, len(labels)), frameon=False)


def target_line(doc: dict[str, Any]) -> str:
    """`shapes@320 v1: openvino int8, ...` from GetModelInfo, when every setting recorded the
    same; else the configured engine, labelled as such; "" when neither is known."""
    infos = {targetinfo.describe(s.get("target_info")) for s in doc["settings"]
             if s.get("target_info")}
    if len(infos) == 1:
        return infos.pop()
    if infos:
        return "several targets (see report)"
    engine = configured_engine(doc)
    return f"{engine} (as configured; the server's own account was not recorded)" if engine else ""


def configured_engine(doc: dict[str, Any]) -> str:
    """Engine kind and precision option from the document's config, "" when absent."""
    cfg = doc.get("config") or {}
    model = (cfg.get("served") or {}).get("model") or cfg.get("resolved_model") or {}
    engine = model.get("engine")
    if not engine:
        return ""
    precision = (model.get("engine_options") or {}).get("precision")
    return f"{engine} {precision}" if precision else str(engine)


def title(fig: Figure, text: str, doc: dict[str, Any], extra: str = "") -> None:
    """The title; below it what ran (target, or the configured engine) and `extra`."""
    sub = "\n".join(v for v in (target_line(doc), extra) if v)
    fig.suptitle(f"{text}\n{sub}" if sub else text, fontsize=9)


def log_axis(ax: Axes, axis: str = "y") -> None:
    """Log scale with plain numbers (no 10^k notation): at 1, 2, 3, 5 x 10^k, or at every
    digit where that would leave fewer than three ticks. Call it after plotting."""
    scaled = ax.yaxis if axis == "y" else ax.xaxis
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    lo, hi = ax.get_ylim() if axis == "y" else ax.get_xlim()
    subs: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    if lo > 0:
        k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
        shown = [d * 10.0**k for k in range(k0, k1 + 1) for d in subs if lo <= d * 10.0**k <= hi]
        if len(shown) < 3:
            subs = tuple(float(d) for d in range(1, 10))
    scaled.set_major_locator(LogLocator(base=10, subs=subs))
    scaled.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    scaled.set_minor_formatter(NullFormatter())


def note_box(ax: Axes, lines: Sequence[tuple[str, Any]]) -> None:
    """Coloured text lines at the bottom right of a panel (where rising curves leave room), on
    a white box so a curve that passes stays behind."""
    for i, (text, color) in enumerate(reversed(lines)):
        ax.text(0.98, 0.03 + 0.08 * i, text, transform=ax.transAxes, ha="right", va="bottom",
                fontsize=7,
                color=color, bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none",
                                   "pad": 1.0})


def percentile_axis(ax: Axes, max_x: float) -> None:
    """x = 1 / (1 - percentile) on a log axis, ticks named as percentiles."""
    ax.set_xscale("log")
    ticks = [t for t in (2.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0)
             if t <= max(max_x, 10.0) * 1.0001]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 * (1 - 1 / x):g} %"))
    ax.set_xlim(1.0, max(max_x, 10.0) * 1.3)


def integer_ticks(ax: Axes, values: Sequence[float], axis: str = "x") -> None:
    """Ticks exactly at `values` (batch sizes, callers), written as integers."""
    locator = FixedLocator(sorted(set(values)))
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(locator)
    target.set_minor_locator(NullLocator())
    target.set_major_formatter(fmt)


def save(fig: Figure, path: Path) -> None:
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
