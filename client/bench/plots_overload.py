"""The overload run's own figure: goodput per phase against the capacity and its targets."""

from __future__ import annotations

from typing import Any

from matplotlib.figure import Figure

from detserve.client.bench import plots_style as st
from detserve.client.bench.overload import GOODPUT_MIN, GOODPUT_MIN_DEADLINE


def goodput(doc: dict[str, Any]) -> Figure:
    """Per phase: offered rate (outline), goodput (solid) as a multiple of capacity, the
    capacity and the goodput targets (without / with the client deadline) as lines."""
    phases = doc.get("phases", [])
    cap = float((doc.get("capacity") or {}).get("throughput_rps") or 0.0)
    fig = st.figure(8.0, 5.0)
    ax = fig.subplots()
    for i, p in enumerate(phases):
        timed = p.get("deadline_ms") is not None
        ax.bar(i, p["rate_rps"], width=0.6, fill=False, edgecolor="grey", linestyle="--",
               label="offered rate")
        ax.bar(i, p["goodput_rps"], width=0.6, color="#9467bd" if timed else "#2ca02c",
               label="goodput, with the client deadline" if timed else "goodput, no deadline")
        ax.text(i, p["goodput_rps"] / 2, f"{p['goodput_rps']:.1f} req/s\n"
                f"{p['goodput_ratio']:.3f} ×\ncapacity", ha="center", va="center", fontsize=7,
                color="white", fontweight="bold")
        if cap:  # the target this phase is held to, across its bar
            need = GOODPUT_MIN_DEADLINE if timed else GOODPUT_MIN
            ax.hlines(need * cap, i - 0.4, i + 0.4, colors="black", linestyles=":", lw=1.5,
                      label=f"goodput target: {GOODPUT_MIN} × capacity, "
                            f"{GOODPUT_MIN_DEADLINE} × with the deadline")
    if cap:
        ax.axhline(cap, color="black", lw=1, label=f"capacity {cap:.1f} req/s (closed loop)")
    ax.set_xticks(range(len(phases)),
                  [f"{p['name']}\n{p['rate_rps']:.0f} req/s offered" for p in phases],
                  fontsize=8)
    ax.set_ylabel("req/s")
    ax.grid(axis="y", alpha=0.3)
    st.title(fig, "Overload: goodput per phase against the closed-loop capacity", doc)
    st.legend_below(fig, ncols=2)
    return fig
