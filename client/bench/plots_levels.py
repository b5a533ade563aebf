"""Figures with one panel per load level, every setting that ran that load in the panel: latency
by percentile, batch sizes formed, server time by stage, and what became of the calls."""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from detserve.client.bench import plotdata as pd
from detserve.client.bench import plots_style as st

STAGE_COLORS = {"queue_ms": "#7f7f7f", "preprocess_ms": "#1f77b4", "inference_ms": "#ff7f0e",
                "postprocess_ms": "#2ca02c"}
OUTCOME_COLORS = {"OK": "#2ca02c", "stale": "#f0ad4e", "dropped": "#9e9e9e",
                  "RESOURCE_EXHAUSTED": "#c0392b", "DEADLINE_EXCEEDED": "#8e44ad",
                  "CLIENT_BACKLOG": "#34495e"}
OUTCOME_LABELS = {"OK": "OK in time", "stale": "OK but stale (older than one frame period)",
                  "dropped": "dropped by the server (latest policy)",
                  "RESOURCE_EXHAUSTED": "RESOURCE_EXHAUSTED (refused by the server)",
                  "DEADLINE_EXCEEDED": "DEADLINE_EXCEEDED (past the client deadline)",
                  "CLIENT_BACKLOG": "not sent (client backlog)"}
_OTHER_ERRORS = ("#e67e22", "#16a085", "#d35400", "#2c3e50")


def _panels(doc: dict[str, Any]) -> tuple[Figure, list[tuple[Axes, pd.LevelKey,
                                                             list[pd.Point]]]]:
    keys = pd.level_keys(doc)
    fig, axes = st.panel_grid(len(keys))
    fps = pd.fps_of(doc)
    out = []
    for ax, key in zip(axes, keys, strict=True):
        ax.set_title(key.label(fps), fontsize=9)
        out.append((ax, key, pd.at_level(doc, key)))
    return fig, out


def _short(doc: dict[str, Any]) -> tuple[dict[str, str], str]:
    return pd.short_names(pd.setting_names(doc))


def latency_percentiles(doc: dict[str, Any], slo_ms: float | None) -> Figure:
    """OK latency by percentile (log axis for the tail), one line per setting; the calls that
    were not a timely OK are counted in the panel in the setting's colour. No SLO line where
    `slo_ms` is None (overload runs have none)."""
    fig, panels = _panels(doc)
    colors = st.colors(pd.setting_names(doc))
    for ax, _, pts in panels:
        max_x = 10.0
        notes = []
        for p in pts:
            xs, lat = pd.latency_percentiles(p.level)
            if xs:
                ax.plot(xs, lat, color=colors[p.setting], label=p.setting)
                max_x = max(max_x, xs[-1])
            if p.problems:
                notes.append((f"{p.problem_text()} of {p.row['sent']} sent", colors[p.setting]))
        if slo_ms is not None:
            ax.axhline(slo_ms, color="grey", linestyle="--", lw=0.8, label=f"SLO {slo_ms:g} ms")
        st.log_axis(ax)
        st.percentile_axis(ax, max_x)
        ax.set_xlabel("percentile of OK calls", fontsize=8)
        ax.set_ylabel("latency (ms)", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3, which="both")
        st.note_box(ax, notes)
    st.title(fig, "Latency by percentile, settings compared at the same load", doc)
    st.legend_below(fig, pd.setting_names(doc), ncols=2)
    return fig


def batch_sizes(doc: dict[str, Any]) -> Figure:
    """Share of OK calls per batch size, a bar per setting at each size."""
    fig, panels = _panels(doc)
    colors = st.colors(pd.setting_names(doc))
    largest = pd.largest_batch(doc)
    for ax, _, pts in panels:
        width = 0.8 / max(len(pts), 1)
        for i, p in enumerate(pts):
            frac = pd.batch_fractions(p.level)
            xs = [b + (i - (len(pts) - 1) / 2) * width for b in frac]
            ax.bar(xs, list(frac.values()), width=width, color=colors[p.setting],
                   label=p.setting)
        st.integer_ticks(ax, list(range(1, largest + 1)))
        ax.set_xlim(0.5, largest + 0.5)
        ax.set_ylim(0, 1.05)
        ax.set_xlabel("batch size the call ran in", fontsize=8)
        ax.set_ylabel("share of OK calls", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    st.title(fig, "Batch sizes formed, settings compared at the same load", doc)
    st.legend_below(fig, pd.setting_names(doc), ncols=2)
    return fig


def queue_vs_compute(doc: dict[str, Any]) -> Figure:
    """Mean server time per call by stage, a stacked bar per setting."""
    fig, panels = _panels(doc)
    short, common = _short(doc)
    for ax, _, pts in panels:
        bottom = np.zeros(len(pts))
        for stage in pd.STAGES:
            vals = np.array([pd.stage_means(p.level)[stage] for p in pts])
            ax.bar(range(len(pts)), vals, bottom=bottom, color=STAGE_COLORS[stage],
                   label=stage.removesuffix("_ms"))
            bottom += vals
        xs = np.arange(len(pts))
        ax.hlines([float(p.row["latency_mean_ms"]) for p in pts], xs - 0.4, xs + 0.4,
                  colors="black", lw=2, label="client-measured mean latency")
        ax.set_xticks(range(len(pts)), [short[p.setting] for p in pts], rotation=25,
                      ha="right", fontsize=7)
        ax.set_ylabel("mean ms per OK call", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    st.title(fig, "Server time by stage, settings compared at the same load", doc,
             f"names without the shared {common}" if common else "")
    st.legend_below(fig, [s.removesuffix("_ms") for s in pd.STAGES], ncols=5)
    return fig


def _outcome_color(kind: str, seen: list[str]) -> Any:
    if kind in OUTCOME_COLORS:
        return OUTCOME_COLORS[kind]
    if kind not in seen:
        seen.append(kind)
    return _OTHER_ERRORS[seen.index(kind) % len(_OTHER_ERRORS)]


def outcomes(doc: dict[str, Any]) -> Figure:
    """Measured calls by outcome (OK, stale, dropped, each error code) as shares, a stacked bar
    per setting; above each bar the count of every outcome that is not a timely OK."""
    fig, panels = _panels(doc)
    short, common = _short(doc)
    seen: list[str] = []
    for ax, _, pts in panels:
        for i, p in enumerate(pts):
            counts = pd.outcomes(p)
            total = sum(counts.values()) or 1
            bottom = 0.0
            for kind, n in counts.items():
                if n <= 0:
                    continue
                share = 100.0 * n / total
                ax.bar(i, share, bottom=bottom, color=_outcome_color(kind, seen), width=0.6,
                       label=OUTCOME_LABELS.get(kind, kind))
                bottom += share
            text = "\n".join(f"{n} {pd.PROBLEM_WORDS.get(k, k)}" for k, n in counts.items()
                             if k != "OK" and n > 0) or "all OK"
            ax.text(i, 101, f"{text}\nof {total}", ha="center", va="bottom", fontsize=7,
                    color=st.PROBLEM_COLOR if text != "all OK" else "black")
        ax.set_xticks(range(len(pts)), [short[p.setting] for p in pts], rotation=25,
                      ha="right", fontsize=7)
        ax.set_xlim(-0.6, len(pts) - 0.4)
        ax.set_ylim(0, 135)  # room above 100 % for the counts
        ax.set_yticks([0, 25, 50, 75, 100])
        ax.set_ylabel("% of measured calls", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    st.title(fig, "What became of the calls, settings compared at the same load", doc,
             f"names without the shared {common}" if common else "")
    st.legend_below(fig, [OUTCOME_LABELS["OK"]])
    return fig
