"""The soak's report.md and plots, recomputed from the raw records and samples in results.json
(so `detserve-bench report soak/results.json` writes the same report again)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detserve.client.bench import plots_style as st
from detserve.client.bench import targetinfo
from detserve.client.bench.plots_soak import FINE_BUCKET_S, minutes_figure, resources_figure
from detserve.client.bench.recorder import records_from_columns
from detserve.client.bench.report import header
from detserve.client.bench.soak import analyse_document
from detserve.client.bench.soak_stats import (
    BucketStats,
    SoakSummary,
    bucket_stats,
    bucket_word,
)


def _f(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.{digits}f}"


def summary_lines(s: SoakSummary, buckets: Sequence[BucketStats]) -> list[str]:
    """The soak's headline figures, one markdown bullet each (also printed at the end)."""
    worst, slow = buckets[s.worst_bucket], buckets[s.slowest_bucket]
    unit = bucket_word(s.bucket_s)
    lines = [
        f"- overall: {s.ok} replies in {s.duration_s:.1f} s, {_f(s.throughput_rps)} req/s, "
        f"p50 {_f(s.p50_ms)} / p95 {_f(s.p95_ms)} / p99 {_f(s.p99_ms)} / max "
        f"{_f(s.max_ms)} ms, {s.errors} errors",
        f"- worst {unit} (highest p99): {unit} {worst.index + 1}, p99 {_f(worst.p99_ms)} ms "
        f"(p50 {_f(worst.p50_ms)} ms, {_f(worst.throughput_rps)} req/s)",
        f"- slowest {unit}: {unit} {slow.index + 1}, {_f(slow.throughput_rps)} req/s",
        f"- last {unit}: {_f(buckets[-1].throughput_rps)} req/s, p99 "
        f"{_f(buckets[-1].p99_ms)} ms",
        f"- first {unit} ÷ last {unit}: throughput {_f(s.first_over_last_throughput, 3)}, "
        f"p50 {_f(s.first_over_last_p50, 3)}, p99 {_f(s.first_over_last_p99, 3)} "
        "(throughput above 1: slowed down; latency below 1: got slower)",
    ]
    if s.rss_peak_mb is not None:
        growth = (s.rss_last_mb or 0.0) - (s.rss_first_mb or 0.0)
        lines.append(f"- server RSS: {_f(s.rss_first_mb)} MB max in the first {unit}, "
                     f"{_f(s.rss_last_mb)} MB in the last ({growth:+.1f} MB), peak "
                     f"{_f(s.rss_peak_mb)} MB")
    else:
        lines.append("- server RSS and CPU: not traced (give --server-pid with --target)")
    cpu = cpu_line(buckets)
    return [*lines, cpu] if cpu else lines


def _mean(values: Sequence[float | None]) -> float | None:
    got = [v for v in values if v is not None]
    return sum(got) / len(got) if got else None


def cpu_line(buckets: Sequence[BucketStats]) -> str | None:
    """Mean CPU of the server, the load generator, the whole host and the rest (every other
    process: what a noisy neighbour took), over the buckets."""
    server = _mean([b.server_cpu_cores for b in buckets])
    client = _mean([b.client_cpu_cores for b in buckets])
    host = _mean([b.host_busy_cores for b in buckets])
    if server is None or host is None or client is None:
        return None
    others = [h - sv - c for h, sv, c in ((b.host_busy_cores, b.server_cpu_cores,
                                           b.client_cpu_cores) for b in buckets)
              if h is not None and sv is not None and c is not None]
    worst = max(others) if others else float("nan")
    return (f"- CPU, mean per minute: server {server:.2f} cores, load generator {client:.2f}, "
            f"whole host {host:.2f}; other processes {host - server - client:.2f} "
            f"(at most {worst:.2f} in one minute)")


def minutes_table(buckets: Sequence[BucketStats]) -> str:
    rows = ["| minute | replies | errors | req/s | p50 ms | p95 ms | p99 ms | max ms | "
            "mean batch | server RSS max MB | server CPU cores | client CPU cores | "
            "host busy cores |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for b in buckets:
        rows.append(f"| {b.index + 1} | {b.ok} | {sum(b.errors.values())} | "
                    f"{_f(b.throughput_rps)} | {_f(b.p50_ms)} | {_f(b.p95_ms)} | "
                    f"{_f(b.p99_ms)} | {_f(b.max_ms)} | {_f(b.mean_batch_size, 2)} | "
                    f"{_f(b.rss_max_mb)} | {_f(b.server_cpu_cores, 2)} | "
                    f"{_f(b.client_cpu_cores, 2)} | {_f(b.host_busy_cores, 2)} |")
    return "\n".join(rows)


def _saturation(doc: dict[str, Any]) -> list[str]:
    level = doc["settings"][0]["levels"][0]
    if not level.get("client_saturated"):
        return []
    return [f"**Client saturated** ({level.get('saturation_reason')}): the figures may "
            "describe the load generator, not the server.", ""]


def write_soak_report(doc: dict[str, Any], out_dir: Path, slo_ms: float | None = None,
                      results_name: str = "results") -> Path:
    """report.md and the two figures into `out_dir`; returns the report's path."""
    from detserve.client.bench.plots import file_prefix

    plan, buckets, summary, samples = analyse_document(doc)
    records = records_from_columns(doc["settings"][0]["levels"][0]["records"])
    fine = bucket_stats(records, samples, plan.warmup_s, plan.duration_s, FINE_BUCKET_S)
    prefix = file_prefix(results_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{prefix}soak_minutes.png", f"{prefix}soak_resources.png"]
    st.save(minutes_figure(doc, plan, buckets, fine, slo_ms, summary.worst_bucket),
            out_dir / names[0])
    st.save(resources_figure(doc, plan, buckets, samples), out_dir / names[1])
    setting = doc["settings"][0]
    load = (f"closed loop, {plan.concurrency} callers" if plan.mode == "closed"
            else f"open loop, {plan.rate_rps:g} req/s ({plan.arrivals})")
    parts = [*header(doc, "detserve-bench soak"),
             f"Target: {setting['target']} ({setting['role']}); the server's account: "
             f"{targetinfo.describe(setting.get('target_info'))}", "",
             f"Load: {load}, unary Detect, {plan.minutes:g} min measured after a "
             f"{plan.warmup_s:g} s warm-up; statistics per {plan.bucket_s:g} s by completion "
             f"time; RSS and CPU sampled every {plan.sample_s:g} s.", "",
             *_saturation(doc), "## Summary", "", *summary_lines(summary, buckets), "",
             "## Per minute", "", minutes_table(buckets), "",
             "## Plots", "", *(f"![{n}]({n})" for n in names), ""]
    path = out_dir / f"{prefix}report.md"
    path.write_text("\n".join(parts))
    return path
