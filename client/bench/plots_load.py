"""Figures across load levels: throughput and latency against the offered load, throughput
against p99, and the best throughput under the SLO per setting."""

from __future__ import annotations

from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from detserve.client.bench import plotdata as pd
from detserve.client.bench import plots_style as st
from detserve.client.bench.report import Recommendation

LOAD_AXIS = {"closed": "callers in flight (closed loop)",
             "open": "offered rate (req/s, open loop)", "camera": "cameras"}


def _is_rec(p: pd.Point, rec: Recommendation | None) -> bool:
    return rec is not None and p.setting == rec.setting and p.key.level == round(rec.level, 6)


def _mark_problems(ax: Axes, pts: list[pd.Point], y: list[float], text: bool) -> None:
    """A red ring on each point with calls not answered OK in time; its counts beside it."""
    for p, v in zip(pts, y, strict=True):
        if not p.problems:
            continue
        ax.plot([p.key.level], [v], "o", ms=11, mfc="none", mec=st.PROBLEM_COLOR, mew=1.5,
                label="calls not answered OK in time (counts beside)")
        if text:
            ax.annotate(p.problem_text(), (p.key.level, v), xytext=(-8, 4),
                        textcoords="offset points", ha="right", fontsize=7,
                        color=st.PROBLEM_COLOR, bbox={"facecolor": "white", "alpha": 0.8,
                                                      "edgecolor": "none", "pad": 0.5})


def _load_axis(ax: Axes, mode: str, levels: list[float], fps: float) -> None:
    label = LOAD_AXIS[mode] + (f" at {fps:g} fps" if mode == "camera" and fps else "")
    ax.set_xlabel(label)
    if mode == "closed":
        ax.set_xscale("log", base=2)
    if mode in ("closed", "camera"):
        st.integer_ticks(ax, levels)


def _capacity_lines(axes: tuple[Axes, Axes], doc: dict[str, Any], drawn: set[str]) -> None:
    """Open loop: each closed-loop-only setting's best throughput as a vertical reference
    (capacity); with exactly one, a top axis in % of it."""
    caps = [max(pts, key=lambda p: p.throughput_rps)
            for name, pts in pd.series(doc, "closed").items() if name not in drawn]
    for best in caps:
        for ax in axes:
            ax.axvline(best.throughput_rps, color="grey", linestyle=":",
                       label=f"capacity: {best.setting}, {best.throughput_rps:.1f} req/s "
                             f"(closed loop, {best.key.phrase()})")
        axes[0].annotate(f"capacity {best.throughput_rps:.1f} req/s",
                         (best.throughput_rps, 0.02), xycoords=("data", "axes fraction"),
                         rotation=90, ha="right", va="bottom", fontsize=7, color="grey")
    if len(caps) == 1:
        cap = caps[0].throughput_rps

        def to_pct(x: Any) -> Any:  # scalars or arrays, as matplotlib passes them
            return 100 * x / cap

        def from_pct(y: Any) -> Any:
            return y * cap / 100

        top = axes[0].secondary_xaxis("top", functions=(to_pct, from_pct))
        top.set_xlabel("% of closed-loop capacity", fontsize=8)


def _raw_engine_lines(ax: Axes, doc: dict[str, Any], curves: dict[str, list[pd.Point]]) -> None:
    """The raw engine's pipeline rate (no server, one thread) at each plotted setting's
    max_batch_size, where the run measured it: the ceiling "server ÷ raw engine" divides by."""
    raw = {int(r["batch_size"]): float(r["pipeline_images_per_s"])
           for r in doc.get("raw_engine") or []}
    sizes = {int(p.row["max_batch_size"]) for pts in curves.values() for p in pts
             if p.row["max_batch_size"] != ""}
    for b in sorted(sizes & set(raw)):
        ax.axhline(raw[b], color="black", linestyle="-.", lw=0.8,
                   label="raw engine pipeline (no server, one thread), by batch size")
        ax.annotate(f"raw engine, batch {b}: {raw[b]:.1f} img/s", (0.01, raw[b]),
                    xycoords=("axes fraction", "data"), xytext=(0, 2),
                    textcoords="offset points", fontsize=7, va="bottom")


def load_curves(doc: dict[str, Any], mode: str, slo_ms: float,
                rec: Recommendation | None) -> Figure:
    """Throughput (top) and p99 / p50 latency (bottom) against the load, one line per setting,
    sorted by load; a star marks the recommended point."""
    fig = st.figure(8.0, 7.5)
    top, bottom = fig.subplots(2, 1, sharex=True)
    colors = st.colors(pd.setting_names(doc))
    curves = pd.series(doc, mode)
    levels: list[float] = []
    for name, pts in curves.items():
        xs = [p.key.level for p in pts]
        levels += xs
        c = colors[name]
        top.plot(xs, [p.throughput_rps for p in pts], "o-", color=c, label=name)
        bottom.plot(xs, [p.p99_ms for p in pts], "o-", color=c, label=name)
        bottom.plot(xs, [float(p.row["latency_p50_ms"]) for p in pts], "x--", color=c, lw=1,
                    ms=4, alpha=0.7, label="p50 (x, dashed, same colour)")
        _mark_problems(top, pts, [p.throughput_rps for p in pts], text=True)
        _mark_problems(bottom, pts, [p.p99_ms for p in pts], text=False)
        for p in pts:
            if _is_rec(p, rec):
                for ax, v in ((top, p.throughput_rps), (bottom, p.p99_ms)):
                    ax.plot([p.key.level], [v], "*", ms=16, color="gold", mec="black",
                            label="recommended (best throughput with p99 ≤ SLO)")
    _raw_engine_lines(top, doc, curves)
    if mode == "open":
        hi = max(levels, default=1.0)
        top.plot([0, hi], [0, hi], color="grey", lw=0.8, label="answered = offered")
        _capacity_lines((top, bottom), doc, set(curves))
    bottom.axhline(slo_ms, color="grey", linestyle="--", label=f"SLO p99 {slo_ms:g} ms")
    st.log_axis(bottom)
    top.set_ylim(0, top.get_ylim()[1] * 1.06)  # from zero: gaps at their true scale
    top.set_ylabel("throughput (OK req/s)")
    bottom.set_ylabel("latency (ms): p99 solid, p50 dashed")
    _load_axis(bottom, mode, levels, pd.fps_of(doc))
    for ax in (top, bottom):
        ax.grid(alpha=0.3)
    st.title(fig, "Each setting at the same offered loads", doc)
    st.legend_below(fig, list(curves), ncols=2)
    return fig


def throughput_vs_p99(doc: dict[str, Any], slo_ms: float, rec: Recommendation | None) -> Figure:
    """Every level as a point labelled with its load; no lines: throughput need not grow with
    the load, and a line in load order would double back."""
    fig = st.figure(8.0, 5.5)
    ax = fig.subplots()
    colors = st.colors(pd.setting_names(doc))
    for p in pd.points(doc):
        if p.row["ok"] == 0:
            continue
        ax.plot([p.throughput_rps], [p.p99_ms], "o", color=colors[p.setting], label=p.setting)
        ax.annotate(p.key.tag(), (p.throughput_rps, p.p99_ms), xytext=(4, 3),
                    textcoords="offset points", fontsize=7)
        if p.problems:
            ax.plot([p.throughput_rps], [p.p99_ms], "o", ms=11, mfc="none",
                    mec=st.PROBLEM_COLOR, mew=1.5, label="calls not answered OK in time")
        if _is_rec(p, rec):
            ax.plot([p.throughput_rps], [p.p99_ms], "*", ms=16, color="gold", mec="black",
                    label="recommended")
    ax.axhline(slo_ms, color="grey", linestyle="--", label=f"SLO p99 {slo_ms:g} ms")
    st.log_axis(ax)
    ax.set_xlim(0, ax.get_xlim()[1] * 1.05)  # from zero: gaps at their true scale
    ax.set_xlabel("throughput (OK req/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.grid(alpha=0.3)
    st.title(fig, "Throughput against p99 (labels: the load of each point)", doc)
    st.legend_below(fig, pd.setting_names(doc), ncols=2)
    return fig


def slo_throughput(doc: dict[str, Any], slo_ms: float, rec: Recommendation | None) -> Figure:
    """Per setting: the highest throughput of a clean level with p99 ≤ SLO (solid), the highest
    at any latency (outline), and the recommended one starred."""
    bars = pd.slo_bars(doc, slo_ms)
    fig = st.figure(8.5, 1.6 + 0.55 * len(bars))
    ax = fig.subplots()
    colors = st.colors(pd.setting_names(doc))
    for i, b in enumerate(bars):
        y = len(bars) - 1 - i
        if b.best is not None:
            ax.barh(y, b.best.throughput_rps, height=0.7, fill=False, edgecolor="grey",
                    linestyle="--", label="highest at any p99 (errors allowed)")
        recd = rec is not None and rec.setting == b.setting
        if b.under is not None:
            ax.barh(y, b.under.throughput_rps, height=0.7, color=colors[b.setting],
                    edgecolor="black" if recd else "none", linewidth=2 if recd else 0)
        ax.text(max(b.best.throughput_rps if b.best else 0.0,
                    b.under.throughput_rps if b.under else 0.0), y, _slo_note(b, slo_ms, recd),
                va="center", fontsize=7.5, linespacing=1.3)
    ax.set_yticks(range(len(bars)), [b.setting for b in reversed(bars)], fontsize=8)
    top = max((b.best.throughput_rps for b in bars if b.best), default=1.0)
    ax.set_xlim(0, top * 1.9)  # room for the labels right of the bars
    ax.set_xlabel("throughput (OK req/s)")
    ax.grid(axis="x", alpha=0.3)
    st.title(fig, f"Highest throughput with p99 ≤ {slo_ms:g} ms, no errors and the client "
                  "not saturated", doc)
    st.legend_below(fig)
    return fig


def _slo_note(b: pd.SloBar, slo_ms: float, recd: bool) -> str:
    """Two lines: the best clean level under the SLO, then the best at any latency."""
    first = (f"  no clean level with p99 ≤ {slo_ms:g} ms" if b.under is None else
             f"  {b.under.throughput_rps:.1f} req/s at {b.under.key.phrase()}, p99 "
             f"{b.under.p99_ms:.1f} ms" + ("  ★ recommended" if recd else ""))
    if b.best is None:
        return first
    extra = f", {b.best.problem_text()}" if b.best.problems else ""
    return (f"{first}\n  any p99: {b.best.throughput_rps:.1f} req/s at {b.best.key.phrase()}, "
            f"p99 {b.best.p99_ms:.0f} ms{extra}")
