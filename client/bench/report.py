"""`detserve-bench report`: a markdown table, PNG plots and a recommendation from results.json.

The recommendation is the load level with the highest throughput whose p99 meets the SLO (and
that had no errors and an unsaturated client), so it can always be checked against the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detserve.client.bench import hostload, rounds, targetinfo
from detserve.client.bench.recorder import OK, records_from_columns
from detserve.client.bench.resultsdoc import csv_rows, options_text


@dataclass(frozen=True)
class Recommendation:
    setting: str
    level: float
    throughput_rps: float
    p99_ms: float
    slo_ms: float


def clean_under_slo(row: dict[str, Any], slo_ms: float) -> bool:
    """A level the recommendation may pick: answered, no errors, client not saturated, p99 <=
    SLO."""
    return (row["errors"] == 0 and not row["client_saturated"] and row["ok"] > 0
            and row["latency_p99_ms"] <= slo_ms)


def recommend(rows: list[dict[str, Any]], slo_ms: float) -> Recommendation | None:
    """Highest throughput among clean rows (no errors, client not saturated) with p99 <= SLO."""
    ok = [r for r in rows if clean_under_slo(r, slo_ms)]
    if not ok:
        return None
    best = max(ok, key=lambda r: r["throughput_rps"])
    return Recommendation(best["setting"], float(best["level"]), float(best["throughput_rps"]),
                          float(best["latency_p99_ms"]), slo_ms)


def _fmt(v: Any) -> str:
    if v is None or v == "":
        return "n/a"  # not measured (e.g. a results file older than the field)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}"
    return str(v)


TABLE = (("setting", "setting"), ("level", "level"), ("throughput_rps", "req/s"),
         ("latency_p50_ms", "p50 ms"), ("latency_p99_ms", "p99 ms"),
         ("latency_p999_ms", "p99.9 ms"), ("batch_size_mean", "mean batch"),
         ("executed_batch_size_mean", "executed batch"),
         ("server_queue_mean_ms", "queue ms"), ("server_inference_mean_ms", "infer ms"),
         ("errors", "errors"), ("dropped_frames", "dropped"), ("stale_frames", "stale"),
         ("server_rss_peak_mb", "server peak RSS MB"), ("client_cpu_cores", "client CPU"),
         ("client_saturated", "client saturated"))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """One row per level run; a round column (counting from 1) when the sweep had rounds."""
    cols: tuple[tuple[str, str], ...] = TABLE
    if any(r.get("round") for r in rows):
        cols = (TABLE[0], ("round", "round"), *TABLE[1:])
    head = "| " + " | ".join(h for _, h in cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(str(r[k] + 1) if k == "round" else _fmt(r[k]) for k, _ in cols)
            + " |" for r in rows]
    return "\n".join([head, sep, *body])


def raw_table(raw: list[dict[str, Any]]) -> str:
    lines = ["| batch size | pipeline img/s | infer-only img/s | pipeline ms/batch |",
             "|---|---|---|---|"]
    lines += [f"| {r['batch_size']} | {r['pipeline_images_per_s']:.1f} | "
              f"{r['infer_images_per_s']:.1f} | {r['pipeline_ms_per_batch']:.2f} |" for r in raw]
    return "\n".join(lines)


def server_vs_raw(doc: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    """Per setting: best error-free throughput / raw pipeline rate at its max_batch_size."""
    raw = {r["batch_size"]: r for r in doc.get("raw_engine", [])}
    lines = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == name and r["errors"] == 0]
        if not mine or not mine[0]["max_batch_size"]:
            continue
        b = int(mine[0]["max_batch_size"])
        if b not in raw:
            continue
        best = max(r["throughput_rps"] for r in mine)
        ratio = best / raw[b]["pipeline_images_per_s"]
        raw_rate = raw[b]["pipeline_images_per_s"]
        lines.append(f"- {name}: {best:.1f} req/s ÷ raw engine {raw_rate:.1f} img/s at batch {b}"
                     f" = **{ratio:.3f}**")
    return lines


def batching_gain(rows: list[dict[str, Any]]) -> str | None:
    """Throughput with dynamic batching ÷ without, at the no-batching run's best p99."""
    base = [r for r in rows if r["role"] == "no_batching" and r["errors"] == 0 and r["ok"]]
    others = [r for r in rows if r["role"] != "no_batching" and r["errors"] == 0 and r["ok"]]
    if not base or not others:
        return None
    b = max(base, key=lambda r: r["throughput_rps"])
    fits = [r for r in others if r["latency_p99_ms"] <= b["latency_p99_ms"]]
    if not fits:
        return (f"no setting with batching reached p99 <= {b['latency_p99_ms']:.1f} ms "
                f"(the no-batching run's p99 at its best throughput)")
    best = max(fits, key=lambda r: r["throughput_rps"])
    gain = best["throughput_rps"] / b["throughput_rps"]
    return (f"{best['setting']} at level {_fmt(best['level'])}: {best['throughput_rps']:.1f} "
            f"req/s (p99 {best['latency_p99_ms']:.1f} ms) ÷ no batching "
            f"{b['throughput_rps']:.1f} req/s (p99 {b['latency_p99_ms']:.1f} ms) = **{gain:.2f}**")


def settings_table(doc: dict[str, Any]) -> str:
    """What each setting served: its batching fields and engine options, as given to the
    server (the names in the tables abbreviate them)."""
    lines = ["| setting | role | batching | engine options | the server's account "
             "(GetModelInfo) |", "|---|---|---|---|---|"]
    for s in doc["settings"]:
        opts = options_text(s.get("engine_options")) or "(the model's)"
        lines.append(f"| {s['name']} | {s['role']} | `{options_text(s.get('batching'))}` | "
                     f"`{opts}` | {targetinfo.describe(s.get('target_info'))} |")
    return "\n".join(lines)


def header(doc: dict[str, Any], title: str) -> list[str]:
    """Title, inputs, versions, host and the host's load (markdown lines)."""
    return [f"# {title} ({doc.get('created_utc', '')})", "", f"Inputs: {doc.get('inputs')}", "",
            f"Versions: {doc.get('versions')}", "", f"Host: {doc.get('host')}", "",
            f"Host load: {hostload.describe(doc.get('host_load'))}", ""]


def target_note(doc: dict[str, Any]) -> list[str]:
    """A line saying so when no setting recorded the server's own account."""
    if any(s.get("target_info") for s in doc["settings"]):
        return []
    return ["The server's own account (GetModelInfo: engine, precision, model) is not recorded in "
            "this run (it predates that field); the engine options above are what the benchmark "
            "configured.", ""]


def plots_section(names: list[str]) -> list[str]:
    return ["## Plots", "", *(f"![{n}]({n})" for n in names), ""]


def _best(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The row with the highest throughput: error-free rows first, any answered row else."""
    for pool in ([r for r in rows if r["ok"] and r["errors"] == 0], [r for r in rows if r["ok"]]):
        if pool:
            return max(pool, key=lambda r: r["throughput_rps"])
    return None


def default_vs_no_batching(rows: list[dict[str, Any]]) -> list[str]:
    """Served default ÷ no batching: throughput ratio per load level and at saturation (the
    highest throughput each reached). Compares the first setting of each role. With rounds
    (client/bench/rounds.py) each ratio is the median of the rounds' own ratios, the req/s and
    p99 columns are each level's median round."""
    served = [r for r in rows if r["role"] == "served_default"]
    base = [r for r in rows if r["role"] == "no_batching"]
    if not served or not base:
        return []
    name, ref_name = served[0]["setting"], base[0]["setting"]
    mine = [r for r in served if r["setting"] == name]
    ref = [r for r in base if r["setting"] == ref_name]
    per_level = rounds.ratios_by_level(mine, ref)
    several = any(len(v) > 1 for v in per_level.values())
    shown = {float(r["level"]): r for r in rounds.representative_rows(ref)}
    extra = " ratio per round |" if several else ""
    lines = [f"| level | {name} req/s | {ref_name} req/s | ratio |{extra} {name} p99 ms | "
             f"{ref_name} p99 ms |", "|---|---|---|---|" + ("---|" if several else "") + "---|---|"]
    for r in rounds.representative_rows(mine):
        b = shown.get(float(r["level"]))
        if b is None:
            continue
        ratios = per_level[float(r["level"])]
        each = f" {' / '.join(f'{v:.2f}' for v in ratios)} |" if several else ""
        lines.append(f"| {r['level']:g} | {_fmt(r['throughput_rps'])} | "
                     f"{_fmt(b['throughput_rps'])} | **{rounds.median(ratios):.2f}** |{each} "
                     f"{_fmt(r['latency_p99_ms'])} | {_fmt(b['latency_p99_ms'])} |")
    lines += ["", _saturation_line(mine, ref, name, ref_name)]
    return lines


def _saturation_line(mine: list[dict[str, Any]], ref: list[dict[str, Any]], name: str,
                     ref_name: str) -> str:
    ratios = rounds.saturation_ratios(mine, ref, _best)
    top = _best(rounds.representative_rows(mine))
    top_ref = _best(rounds.representative_rows(ref))
    if top is None or top_ref is None or not ratios:
        return f"- at saturation: no level of {name} or {ref_name} was answered"
    head = (f"- at saturation (the highest throughput each reached): {name} "
            f"{top['throughput_rps']:.1f} req/s (level {top['level']:g}) ÷ {ref_name} "
            f"{top_ref['throughput_rps']:.1f} req/s (level {top_ref['level']:g})")
    if len(ratios) == 1:
        return f"{head} = **{ratios[0]:.2f}**"
    each = ", ".join(f"{v:.2f}" for v in ratios)
    return (f"{head}; the median of the rounds' ratios (each round's best ÷ its best) = "
            f"**{rounds.median(ratios):.2f}** (rounds: {each})")


def recommendation_line(rec: Recommendation | None, slo_ms: float) -> str:
    if rec is None:
        return f"No error-free level met p99 <= {slo_ms:g} ms."
    return (f"**{rec.setting}** at level {rec.level:g}: {rec.throughput_rps:.1f} req/s with p99 "
            f"{rec.p99_ms:.1f} ms (SLO {slo_ms:g} ms): the highest throughput in the table "
            "above whose p99 meets the SLO.")


def conclusions(rows: list[dict[str, Any]], slo_ms: float) -> list[str]:
    """The report's comparisons and recommendation (markdown), also printed by the scripts.
    With rounds, the recommendation and the gain at equal p99 read each level's median round."""
    parts: list[str] = []
    shown = rounds.representative_rows(rows)
    gain = batching_gain(shown)
    if gain:
        parts += ["## Dynamic batching ÷ no batching at equal p99", "", f"- {gain}", ""]
    ratios = default_vs_no_batching(rows)
    if ratios:
        parts += ["## Served default ÷ no batching, per load level", "", *ratios, ""]
    return [*parts, "## Recommendation", "",
            recommendation_line(recommend(shown, slo_ms), slo_ms)]


def report_name(results_name: str) -> str:
    """`closed` -> `closed-report.md`; the scripts' `results` -> `report.md`."""
    from detserve.client.bench.plots import file_prefix

    return f"{file_prefix(results_name)}report.md"


def write_report(doc: dict[str, Any], out_dir: Path, slo_ms: float,
                 results_name: str = "results") -> Path:
    """Write the report and its PNG plots into `out_dir`, named after `results_name` (the
    results file's stem); returns the report's path. An overload run gets its phase report."""
    from detserve.client.bench.plots import write_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    if "phases" in doc:
        from detserve.client.bench.overload_report import write_overload_report

        return write_overload_report(doc, out_dir, slo_ms, results_name)
    if "soak" in doc:
        from detserve.client.bench.soak_report import write_soak_report

        return write_soak_report(doc, out_dir, slo_ms, results_name)
    rows = csv_rows(doc)
    shown = rounds.representative(doc)
    plots = write_plots(shown, out_dir, slo_ms, results_name,
                        recommend(csv_rows(shown), slo_ms))
    parts = [*header(doc, "detserve-bench report"), "## Settings", "", settings_table(doc), "",
             *target_note(doc), "## Load levels", "", *_rounds_note(doc), markdown_table(rows),
             ""]
    if doc.get("raw_engine"):
        parts += ["## Raw engine (no server, same inputs)", "", raw_table(doc["raw_engine"]), "",
                  "### Server ÷ raw engine at the same batch size", "",
                  *(server_vs_raw(doc, csv_rows(shown))
                    or ["- (no setting with a matching batch size)"]),
                  ""]
    parts += [*conclusions(rows, slo_ms), "", *plots_section(plots)]
    path = out_dir / report_name(results_name)
    path.write_text("\n".join(parts))
    return path


def _rounds_note(doc: dict[str, Any]) -> list[str]:
    n = rounds.rounds_in(doc)
    if n == 1:
        return []
    return [f"{n} rounds: every level ran once per round for each setting, in turn; the rows "
            "below are in the order they ran. Ratios are taken within a round; the plots and "
            "the recommendation use each level's median round.", ""]


def ok_latencies(level: dict[str, Any]) -> list[float]:
    """Latencies (ms) of the measured OK requests of one level, from the raw records."""
    return [r.latency_ms for r in records_from_columns(level["records"])
            if r.measured and r.code == OK]
