"""The soak's figures: per-minute throughput and latency; server RSS and CPU over time.

Time runs in minutes from the end of the warm-up (the warm-up is the grey band left of 0), so a
minute's bar sits over the minute it describes and the resource curves line up with it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from detserve.client.bench import plots_style as st
from detserve.client.bench.proctrace import ProcSample
from detserve.client.bench.soak import SoakPlan
from detserve.client.bench.soak_stats import BucketStats, bucket_word

FINE_BUCKET_S = 10.0  # the thin p99 curve under the per-minute markers
_PCT = (("p50", "p50_ms", st.PALETTE[0]), ("p95", "p95_ms", st.PALETTE[1]),
        ("p99", "p99_ms", st.PALETTE[3]))
_WARMUP = {"color": "#e6e6e6", "zorder": 0}


def _what_ran(plan: SoakPlan, doc: dict[str, Any]) -> str:
    load = (f"closed loop, {plan.concurrency} callers" if plan.mode == "closed"
            else f"open loop, {plan.rate_rps:g} req/s {plan.arrivals}")
    inputs = doc.get("inputs") or {}
    size = f", {inputs.get('width')}x{inputs.get('height')} {inputs.get('format')}" \
        if inputs.get("source") == "synthetic" else ""
    return f"{load}, {plan.minutes:g} min after {plan.warmup_s:g} s warm-up{size}"


def _minute_axis(ax: Any, n: int, bucket_s: float, warmup_s: float) -> None:
    span = n * bucket_s / 60.0
    ax.axvspan(-warmup_s / 60.0, 0.0, **_WARMUP)
    ax.set_xlim(-warmup_s / 60.0, span)
    step = max(1, math.ceil(span / 10))
    ax.set_xticks(list(range(0, math.floor(span) + 1, step)))
    ax.grid(True, alpha=0.3)


def minutes_figure(doc: dict[str, Any], plan: SoakPlan, buckets: Sequence[BucketStats],
                   fine: Sequence[BucketStats], slo_ms: float | None,
                   worst: int) -> Figure:
    """Throughput per bucket (bars) above p50/p95/p99 per bucket, with p99 per 10 s."""
    fig = st.figure(9.0, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(1, 1.4))
    width = plan.bucket_s / 60.0
    mids = [(b.start_s + b.end_s) / 120.0 for b in buckets]
    rates = [b.throughput_rps for b in buckets]
    top.bar(mids, rates, width=width * 0.85, color=st.PALETTE[0], alpha=0.8,
            label=f"replies/s per {plan.bucket_s:g} s")
    for x, r in zip(mids, rates, strict=True):
        top.text(x, r, f"{r:.1f}", ha="center", va="bottom", fontsize=7)
    top.set_ylabel("throughput (req/s)")
    top.set_ylim(0, max([*rates, 1.0]) * 1.18)
    fx = [(b.start_s + b.end_s) / 120.0 for b in fine if b.ok]
    bottom.plot(fx, [b.p99_ms for b in fine if b.ok], color="#999999", lw=0.8,
                label=f"p99 per {FINE_BUCKET_S:g} s")
    for name, attr, color in _PCT:
        bottom.plot(mids, [getattr(b, attr) for b in buckets], marker="o", color=color,
                    label=f"{name} per {plan.bucket_s:g} s")
    w = buckets[worst]
    bottom.annotate(f"worst: p99 {w.p99_ms:.1f} ms", ((w.start_s + w.end_s) / 120.0, w.p99_ms),
                    xytext=(0, 10), textcoords="offset points", ha="center", fontsize=7,
                    color=st.PALETTE[3])
    if slo_ms:
        bottom.axhline(slo_ms, color=st.PROBLEM_COLOR, ls="--", lw=1,
                       label=f"SLO p99 {slo_ms:g} ms")
    bottom.set_ylabel("latency (ms)")
    bottom.set_xlabel("minutes after warm-up (grey: warm-up)")
    bottom.set_ylim(0, None)
    for ax in (top, bottom):
        _minute_axis(ax, len(buckets), plan.bucket_s, plan.warmup_s)
    st.legend_below(fig, ncols=3)
    st.title(fig, "Soak: throughput and latency per minute", doc, _what_ran(plan, doc))
    return fig


def _rates(samples: Sequence[ProcSample], attr: str,
           smooth_s: float) -> tuple[list[float], list[float]]:
    """CPU cores over windows of about `smooth_s` between consecutive usable samples."""
    pts = [(s.t_s, getattr(s, attr)) for s in samples if getattr(s, attr) is not None]
    if len(pts) < 2:
        return [], []
    t = np.array([p[0] for p in pts])
    c = np.array([p[1] for p in pts], float)
    step = max(1, round(smooth_s / max(float(np.median(np.diff(t))), 1e-6)))
    idx = list(range(0, len(t), step))
    if idx[-1] != len(t) - 1:
        idx.append(len(t) - 1)
    xs, ys = [], []
    for a, b in itertools.pairwise(idx):
        if t[b] > t[a]:
            xs.append(float((t[a] + t[b]) / 2))
            ys.append(float((c[b] - c[a]) / (t[b] - t[a])))
    return xs, ys


def resources_figure(doc: dict[str, Any], plan: SoakPlan, buckets: Sequence[BucketStats],
                     samples: Sequence[ProcSample]) -> Figure:
    """Server RSS (samples and per-bucket max) above server and client CPU cores."""
    fig = st.figure(9.0, 6.0)
    top, bottom = fig.subplots(2, 1, sharex=True)
    origin = plan.warmup_s

    def minutes(t: float) -> float:
        return (t - origin) / 60.0

    rss = [(minutes(s.t_s), s.rss_mb) for s in samples if s.rss_mb is not None]
    if rss:
        top.plot([p[0] for p in rss], [p[1] for p in rss], color=st.PALETTE[2], lw=1,
                 label=f"server RSS (every {plan.sample_s:g} s)")
        peaks = [(b, b.rss_max_mb) for b in buckets if b.rss_max_mb is not None]
        top.hlines([p for _, p in peaks], [b.start_s / 60 for b, _ in peaks],
                   [b.end_s / 60 for b, _ in peaks], color=st.PALETTE[4], lw=2,
                   label=f"max per {bucket_word(plan.bucket_s)}")
        lo, hi = min(p[1] for p in rss), max(p[1] for p in rss)
        pad = max((hi - lo) * 0.3, 2.0)
        top.set_ylim(lo - pad, hi + pad)
    else:
        top.text(0.5, 0.5, "server RSS not traced (no --server-pid)", ha="center",
                 transform=top.transAxes, fontsize=9)
    top.set_ylabel("RSS (MB)")
    smooth = max(5.0, plan.sample_s * 5)
    for attr, label, color in (("host_busy_s", "whole host (every process)", "#7f7f7f"),
                               ("cpu_s", "server", st.PALETTE[0]),
                               ("client_cpu_s", "load generator", st.PALETTE[1])):
        xs, ys = _rates(samples, attr, smooth)
        if xs:
            bottom.plot([minutes(x) for x in xs], ys, color=color, lw=1,
                        label=f"{label} CPU (per {smooth:g} s)")
    cores = (doc.get("host") or {}).get("cpu_count")
    if cores:
        bottom.axhline(cores, color="#555555", ls=":", lw=1, label=f"host CPUs ({cores})")
    bottom.set_ylabel("CPU (cores)")
    bottom.set_ylim(0, None)
    bottom.set_xlabel("minutes after warm-up (grey: warm-up)")
    for ax in (top, bottom):
        _minute_axis(ax, len(buckets), plan.bucket_s, plan.warmup_s)
    st.legend_below(fig, ncols=3)
    st.title(fig, "Soak: server memory and CPU over time", doc, _what_ran(plan, doc))
    return fig
