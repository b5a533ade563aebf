"""Overload results as files: one CSV row per phase, and report.md (a table with one row per
phase, the PASS/FAIL lines, notes, then the usual per-level table)."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from detserve.client.bench.overload import PhaseStats, ServerObservations, TargetCheck
from detserve.client.bench.procstat import RssStats
from detserve.client.bench.report import (
    header,
    markdown_table,
    plots_section,
    report_name,
    target_note,
)
from detserve.client.bench.resultsdoc import csv_rows

STATUS_COLUMNS = ("OK", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED", "CANCELLED", "UNAVAILABLE")
# The reasons of detserve_rejected_total (server/admission.py REASONS; the client may not import
# the server). Any other reason a server reports still gets a column.
REJECT_REASONS = ("queue_full", "queue_wait", "deadline", "pixel_budget")
_BASE_COLUMNS = (
    "phase", "factor", "rate_rps", "deadline_ms", "timeout_s", "capacity_rps", "measured", "ok",
    "goodput_rps", "goodput_ratio", "ok_p50_ms", "ok_p99_ms", "rejections", "rejection_p50_ms",
    "rejection_p99_ms", "rejection_sent_p50_ms", "rejection_sent_p99_ms",
    "server_rejection_p99_ms", "batch_compute_ms", "batch_size_mean",
    "executed_batch_size_mean",
    "rss_before_mb", "rss_peak_mb", "rss_after_mb", "decoded_after_deadline", "decodes",
    "rejected_total", "expired_before_decode", "client_cpu_cores", "send_lag_p99_ms",
    "client_saturated", "saturation_reason",
)


def _extra(names: Sequence[str], seen: Sequence[str]) -> list[str]:
    return [*names, *sorted(set(seen) - set(names))]


def phase_columns(phases: Sequence[PhaseStats]) -> list[str]:
    """Fixed columns, a share per status code (the common ones always) and a count per
    rejection reason (the known ones always, plus any other the server reports)."""
    codes = _extra(STATUS_COLUMNS, [c for p in phases for c in p.codes])
    reasons = _extra(REJECT_REASONS, [r for p in phases if p.server and p.server.rejected_by_reason
                                      for r in p.server.rejected_by_reason])
    return [*_BASE_COLUMNS, *(f"share_{c}" for c in codes), *(f"rejected_{r}" for r in reasons)]


def phase_row(p: PhaseStats, columns: Sequence[str] = ()) -> dict[str, Any]:
    """One CSV row; share and rejection columns in `columns` that the phase lacks read 0 (or
    empty, for rejection counts the server does not expose)."""
    srv, rss = p.server, p.server.rss if p.server else None
    row: dict[str, Any] = {
        "phase": p.name, "factor": p.factor, "rate_rps": p.rate_rps,
        "deadline_ms": "" if p.deadline_ms is None else p.deadline_ms, "timeout_s": p.timeout_s,
        "capacity_rps": round(p.capacity_rps, 3), "measured": p.measured, "ok": p.ok,
        "goodput_rps": round(p.goodput_rps, 3), "goodput_ratio": round(p.goodput_ratio, 4),
        "ok_p50_ms": p.ok_p50_ms, "ok_p99_ms": p.ok_p99_ms, "rejections": p.rejections,
        "rejection_p50_ms": p.rejection_p50_ms, "rejection_p99_ms": p.rejection_p99_ms,
        "rejection_sent_p50_ms": p.rejection_sent_p50_ms,
        "rejection_sent_p99_ms": p.rejection_sent_p99_ms,
        "server_rejection_p99_ms": _num(srv.server_rejection_p99_ms if srv else None),
        "batch_compute_ms": round(p.batch_compute_ms, 3),
        "batch_size_mean": round(p.mean_batch_size, 3),
        "executed_batch_size_mean": round(p.mean_executed_batch_size, 3),
        "rss_before_mb": _num(rss.before_mb if rss else None),
        "rss_peak_mb": _num(rss.peak_mb if rss else None),
        "rss_after_mb": _num(rss.after_mb if rss else None),
        "decoded_after_deadline": _num(srv.decoded_after_deadline if srv else None),
        "decodes": _num(srv.decodes if srv else None),
        "rejected_total": _num(srv.rejected_total if srv else None),
        "expired_before_decode": _num(srv.expired_before_decode if srv else None),
        "client_cpu_cores": round(p.client_cpu_cores, 3), "send_lag_p99_ms": p.send_lag_p99_ms,
        "client_saturated": p.client_saturated, "saturation_reason": p.saturation_reason,
    }
    for code, share in p.shares.items():
        row[f"share_{code}"] = round(share, 4)
    reasons = srv.rejected_by_reason if srv else None
    for reason, count in (reasons or {}).items():
        row[f"rejected_{reason}"] = count
    for col in columns:
        if col.startswith(("share_", "rejected_")) and col not in row:
            row[col] = "" if col.startswith("rejected_") and reasons is None else 0
    return row


def _num(v: float | None) -> Any:
    return "" if v is None else round(v, 3)


def write_phase_csv(phases: Sequence[PhaseStats], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        columns = phase_columns(phases)
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(phase_row(p, columns) for p in phases)


def _f(v: float | None, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}"


def _pct(p: PhaseStats, code: str) -> str:
    return f"{100 * p.shares.get(code, 0.0):.1f}"


def _reasons(p: PhaseStats) -> str:
    by = p.server.rejected_by_reason if p.server else None
    if by is None:
        return "n/a"
    return ", ".join(f"{k} {v:g}" for k, v in by.items() if v) or "none"


PHASE_HEADER = ("phase", "offered req/s", "goodput req/s", "goodput ÷ capacity", "OK %",
                "RESOURCE_EXHAUSTED %", "DEADLINE_EXCEEDED %", "CANCELLED %", "UNAVAILABLE %",
                "other %", "OK p50 / p99 ms", "rejection p50 / p99 ms",
                "rejection from send p50 / p99 ms", "server time to refuse p99 ms",
                "batch formed / executed", "batch compute ms", "RSS before / peak / after MB",
                "decoded after deadline", "rejected by reason", "client CPU",
                "client saturated")


def phase_table(phases: Sequence[PhaseStats]) -> str:
    lines = ["| " + " | ".join(PHASE_HEADER) + " |", "|" + "---|" * len(PHASE_HEADER)]
    for p in phases:
        other = 100 * sum(v for k, v in p.shares.items() if k not in STATUS_COLUMNS)
        rss = p.server.rss if p.server else None
        late = p.server.decoded_after_deadline if p.server else None
        cells = [
            p.name, _f(p.rate_rps), _f(p.goodput_rps), _f(p.goodput_ratio, 3),
            *(_pct(p, c) for c in STATUS_COLUMNS), f"{other:.1f}",
            f"{_f(p.ok_p50_ms)} / {_f(p.ok_p99_ms)}",
            f"{_f(p.rejection_p50_ms)} / {_f(p.rejection_p99_ms)}",
            f"{_f(p.rejection_sent_p50_ms)} / {_f(p.rejection_sent_p99_ms)}",
            f"≤ {_f(p.server.server_rejection_p99_ms, 2)}" if p.server
            and p.server.server_rejection_p99_ms is not None else "n/a",
            f"{_f(p.mean_batch_size, 2)} / {_f(p.mean_executed_batch_size, 2)}",
            _f(p.batch_compute_ms, 2),
            " / ".join(_f(v) for v in ((rss.before_mb, rss.peak_mb, rss.after_mb) if rss
                                       else (None, None, None))),
            _f(late, 0), _reasons(p), _f(p.client_cpu_cores, 2),
            p.saturation_reason if p.client_saturated else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overload_report(doc: dict[str, Any], phases: Sequence[PhaseStats],
                    targets: Sequence[TargetCheck], notes: Sequence[str],
                    plots: Sequence[str] = ()) -> str:
    """The report's markdown; `plots`: PNG file names to show (written beside it)."""
    cap = doc.get("capacity", {})
    parts = [
        *header(doc, "Overload"),
        f"Served: `{doc['config'].get('served', {}).get('model')}`, batching "
        f"`{doc['config'].get('setting')}`", "",
        f"The server's account (GetModelInfo): {_target(doc)}", "",
        *target_note(doc),
        f"Capacity (closed loop, concurrency {cap.get('concurrency')}): "
        f"{_f(cap.get('throughput_rps'))} req/s.", "",
        "## Phases (open-loop Poisson; latency from the scheduled send)", "",
        phase_table(phases), "",
        "## Targets", "", *(f"- {t.line()}" for t in targets), "",
    ]
    if notes:
        parts += ["## Notes", "", *(f"- {n}" for n in notes), ""]
    parts += ["## Load levels", "", markdown_table(csv_rows(doc)), ""]
    if plots:
        parts += plots_section(list(plots))
    return "\n".join(parts)


def _target(doc: dict[str, Any]) -> str:
    from detserve.client.bench import targetinfo

    infos = {targetinfo.describe(s.get("target_info")) for s in doc["settings"]}
    return "; ".join(sorted(infos))


def phases_from_doc(doc: dict[str, Any]) -> list[PhaseStats]:
    """The phases as overload.py computed them, read back from its results.json."""
    out = []
    for raw in doc.get("phases", []):
        fields = dict(raw)
        server = fields.pop("server", None)
        if server is not None:
            server = dict(server)
            server = ServerObservations(rss=RssStats(**server.pop("rss")), **server)
        out.append(PhaseStats(**fields, server=server))
    return out


def write_overload_report(doc: dict[str, Any], out_dir: Path, slo_ms: float,
                          results_name: str = "results") -> Path:
    """report.md (or NAME-report.md) and the per-level plots of an overload results document:
    everything from the document, so an old run's report can be written again."""
    from detserve.client.bench.plots import write_plots

    phases = phases_from_doc(doc)
    targets = [TargetCheck(**t) for t in doc.get("targets", [])]
    plots = write_plots(doc, out_dir, slo_ms, results_name, None)
    path = out_dir / report_name(results_name)
    path.write_text(overload_report(doc, phases, targets, doc.get("notes", []), plots))
    return path
