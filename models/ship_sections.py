"""The ship report's sections after the checklist, one function each (HTML strings)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

from detserve.models.ship_evidence import threshold_choice
from detserve.models.ship_failures import SIZES
from detserve.models.ship_report import ShipReport

e = html.escape


def _f(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, float) else e(str(v))


def _bar(v: float | None) -> str:
    """The value with a bar under it (0..1)."""
    if v is None:
        return "n/a"
    return (f"<span class=\"num\">{v:.3f}</span><span class=\"bar\"><span style=\"width:"
            f"{max(0.0, min(1.0, v)) * 100:.1f}%\"></span></span>")


def table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """Cells are HTML already (escape text before)."""
    th = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class=\"{cls}\"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _section(key: str, title: str, inner: str) -> str:
    return f"<section id=\"{key}\"><h2>{e(title)}</h2>{inner}</section>"


def _kpi(label: str, value: str, note: str = "") -> str:
    return (f"<div class=\"kpi\"><div class=\"kpi-value\">{value}</div><div class=\"kpi-label\">"
            f"{e(label)}</div><div class=\"kpi-note\">{e(note)}</div></div>")


def accuracy(r: ShipReport) -> str:
    m, p = r.metrics, r.served_prf
    thr = r.manifest.postprocess.score_threshold
    kpis = "".join([
        _kpi("mAP@0.5", f"{m.map50:.3f}", "AP at IoU 0.5"),
        _kpi("mAP@0.5:0.95", f"{m.map:.3f}", "COCO AP, IoU 0.50:0.05:0.95"),
        _kpi("precision / recall", f"{p[0]:.3f} / {p[1]:.3f}", f"at score ≥ {thr:g}, IoU 0.5"),
        _kpi("F1", f"{p[2]:.3f}", f"at score ≥ {thr:g}"),
        _kpi("val set", f"{m.n_images} / {m.n_objects}", "images / objects")])
    sizes = [[s, _bar(m.ap_size50.get(s)), _bar(m.ap_size.get(s))] for s in SIZES]
    counts = r.failures.counts
    classes = [[e(n), _bar(c.ap50), _bar(c.ap), _f(counts[n].precision), _f(counts[n].recall),
                str(counts[n].tp), str(counts[n].fp), str(counts[n].fn)]
               for n, c in m.per_class.items()]
    inner = (f"<p>{e(r.manifest.name)} on <code>{e(str(r.dataset))}</code> (split "
             f"<b>{e(str(r.split))}</b>), engine {e(r.engine)}, decoded at score ≥ 0.001 with "
             f"NMS IoU {r.manifest.postprocess.iou_threshold:g} as COCO evaluation expects "
             "(faster-coco-eval).</p>"
             f"<div class=\"kpis\">{kpis}</div><div class=\"two\"><div><h3>Per object size "
             "(COCO areas: small &lt; 32², medium &lt; 96²)</h3>"
             + table(["size", "AP@0.5", "AP@0.5:0.95"], sizes, "bars") + "</div><div><h3>"
             f"Per class (TP / FP / FN at score ≥ {thr:g})</h3>"
             + table(["class", "AP@0.5", "AP@0.5:0.95", "precision", "recall", "TP", "FP", "FN"],
                     classes, "bars") + "</div></div>")
    return _section("accuracy", "Accuracy on val", inner)


def threshold(r: ShipReport) -> str:
    man = r.manifest
    choice, whose = threshold_choice(man)
    rows = [["served score_threshold", f"{man.postprocess.score_threshold:g}"]]
    if choice is not None:
        rows += [["chosen by", e(whose)], ["method", e(str(choice.get("method")))],
                 ["on", f"<code>{e(str(choice.get('dataset')))}</code>"],
                 ["F1 / precision / recall there", f"{_f(choice.get('f1'))} / "
                  f"{_f(choice.get('precision'))} / {_f(choice.get('recall'))}"]]
    p = r.served_prf
    rows.append(["on this val set, at the served threshold",
                 f"F1 {p[2]:.3f} (precision {p[0]:.3f}, recall {p[1]:.3f})"])
    if r.best_threshold is not None:
        rows.append(["on this val set, max F1", f"threshold {r.best_threshold[0]:.3f}, F1 "
                     f"{r.best_threshold[1]:.3f} (not applied: the served one stands)"])
    return _section("threshold", "Score threshold", table(["", ""], rows, "kv"))


def preprocessing(r: ShipReport) -> str:
    man, pre = r.manifest, r.manifest.preprocess
    rows = [["input", f"{man.input_width}×{man.input_height}, tensor "
             f"<code>{e(man.input_name)}</code> [B, 3, H, W] float32"],
            ["channel order", e(pre.color_order)],
            ["resize", e(pre.resize) + (f", pad value {pre.pad_value}"
                                        if pre.resize == "letterbox" else "")],
            ["scale", f"{pre.scale:.8g}" + (" (1/255)" if abs(pre.scale * 255 - 1) < 1e-9
                                             else "")],
            ["mean", e(str(list(pre.mean)))], ["std", e(str(list(pre.std)))],
            ["output", f"{e(man.output_format)}, NMS on {e(man.nms)}, IoU "
             f"{man.postprocess.iou_threshold:g}, at most {man.postprocess.max_detections} "
             "detections"]]
    return _section("preprocessing", "Preprocessing (from manifest.yaml)",
                    table(["", ""], rows, "kv"))


def latency(r: ShipReport, plots: str) -> str:
    if r.soak is None:
        return _section("latency", "Latency after 5 minutes (soak)",
                        "<p class=\"muted\">No soak given: run <code>detserve-bench soak "
                        "--serve --minutes 5 --out DIR</code> and pass <code>--soak "
                        "DIR/results.json</code>.</p>")
    soak = r.soak["soak"]
    s, plan = soak["summary"], soak["plan"]
    load = (f"closed loop, {plan['concurrency']} callers" if plan["mode"] == "closed"
            else f"open loop, {plan['rate_rps']:g} req/s")
    rows = [[str(b["index"] + 1), str(b["ok"]), f"{b['throughput_rps']:.1f}",
             _f(b["p50_ms"], 1), _f(b["p95_ms"], 1), _f(b["p99_ms"], 1), _f(b["max_ms"], 1),
             _f(b["rss_max_mb"], 1), _f(b["server_cpu_cores"], 2)] for b in soak["buckets"]]
    inner = (f"<p>{e(load)} for {plan['minutes']:g} min after {plan['warmup_s']:g} s of warm-up "
             f"(<code>{e(str(r.inputs.soak))}</code>, {e(str(r.soak.get('created_utc')))}): "
             f"{s['ok']} replies, {s['throughput_rps']:.1f} req/s, p99 {s['p99_ms']:.1f} ms "
             f"overall; worst minute {s['worst_bucket'] + 1} (p99 {s['worst_p99_ms']:.1f} ms); "
             f"first ÷ last minute throughput {_f(s['first_over_last_throughput'])}.</p>"
             + table(["minute", "replies", "req/s", "p50 ms", "p95 ms", "p99 ms", "max ms",
                      "server RSS MB", "server CPU cores"], rows, "num") + plots)
    return _section("latency", "Latency after 5 minutes (soak)", inner)


def memory(r: ShipReport, plots: str) -> str:
    parts: list[str] = []
    if r.memory is not None:
        srv = [[e(s["model"]), _f(s["serving_mb"], 1), _f(s["peak_mb"], 1),
                f"{s['concurrency']} callers, {s['duration_s']:g} s"]
               for s in r.memory.get("servers", [])]
        if srv:
            parts.append("<h3>Server RSS</h3>" + table(["model", "when SERVING MB",
                                                        "peak under load MB", "load"], srv))
        head, rows = engine_grid(r.memory.get("engines", []))
        verdicts = "".join(f"<li>{e(v['engine'])}: {v['small']}→{v['large']} px: activation "
                           f"×{_f(v['mean'], 2)} on average over the batch sizes (expected ≈ "
                           "×4)</li>" for v in r.memory.get("side_verdicts", []))
        parts.append("<h3>Engine memory per side and batch</h3><p>One process per "
                     "measurement (benchmarks/memory.py): loaded = engine built and its input "
                     "allocated; activation = peak during inference − loaded.</p>"
                     f"<ul>{verdicts}</ul>" + table(head, rows, "num") + plots)
    if r.soak is not None and r.soak["soak"]["summary"].get("rss_peak_mb") is not None:
        s = r.soak["soak"]["summary"]
        parts.append(f"<p>Soak: server RSS {s['rss_first_mb']:.1f} MB in the first minute, "
                     f"{s['rss_last_mb']:.1f} MB in the last, peak {s['rss_peak_mb']:.1f} MB."
                     "</p>")
    if not parts:
        parts.append("<p class=\"muted\">No memory measurement given.</p>")
    return _section("memory", "Memory budget", "".join(parts))


def engine_grid(engines: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """One row per engine and side: activation MB per batch size, then ÷ half the side."""
    batches = sorted({int(x["batch"]) for x in engines})
    act = {(x["engine"], x["side"], x["batch"]): x for x in engines}
    head = ["engine", "side", "loaded MB (batch 1)",
            *(f"activation MB, batch {b}" for b in batches), "÷ half the side (largest batch)"]
    rows = []
    for engine, side in dict.fromkeys((x["engine"], x["side"]) for x in engines):
        cells = [act.get((engine, side, b)) for b in batches]
        first = next((c for c in cells if c is not None), None)
        half, top = act.get((engine, side // 2, batches[-1])), cells[-1]
        times = (f"×{top['activation_mb'] / half['activation_mb']:.2f}"
                 if half and top and half["activation_mb"] > 0 else "")
        rows.append([e(engine), str(side), _f(first["loaded_mb"] if first else None, 1),
                     *(_f(c["activation_mb"] if c else None, 1) for c in cells), times])
    return head, rows


def _recommend(rows: list[dict[str, Any]], slo_ms: float) -> dict[str, Any] | None:
    ok = [x for x in rows if x["errors"] == 0 and x["ok"] > 0 and x["p99"] <= slo_ms]
    return max(ok, key=lambda x: x["rps"]) if ok else None


def capacity(r: ShipReport) -> str:
    if r.sweep is None:
        return ""
    rows = []
    for s in r.sweep["settings"]:
        for lv in s["levels"]:
            rows.append({"setting": s["name"], "role": s["role"], "level": lv["spec"]["level"],
                         "rps": lv["throughput_rps"], "p99": lv["latency"]["p99_ms"],
                         "errors": sum(lv["errors"].values()), "ok": lv["ok"],
                         "rss": lv.get("server_rss_peak_mb")})
    served = [x for x in rows if x["role"] == "served_default"] or rows
    best = _recommend(served, r.inputs.slo_ms)
    line = (f"<p>Served default, highest throughput with p99 ≤ {r.inputs.slo_ms:g} ms and no "
            f"errors: <b>{best['rps']:.1f} req/s</b> at {best['level']:g} callers (p99 "
            f"{best['p99']:.1f} ms).</p>" if best else
            f"<p>No level met p99 ≤ {r.inputs.slo_ms:g} ms without errors.</p>")
    cells = [[e(x["setting"]), f"{x['level']:g}", f"{x['rps']:.1f}", f"{x['p99']:.1f}",
              str(x["errors"]), _f(x["rss"], 1)] for x in served]
    return _section("capacity", "Capacity under the SLO (sweep)", line + table(
        ["setting", "callers", "req/s", "p99 ms", "errors", "server peak RSS MB"], cells, "num"))


def precision(r: ShipReport) -> str:
    if r.precision is None:
        return ""
    p = r.precision
    flagged = set(p.get("flagged", []))
    rows = [[e(x["group"]), e(x["metric"]), _f(x["base"]), _f(x["other"]),
             "n/a" if x["delta_points"] is None else f"{x['delta_points']:+.2f}",
             "⚠ loss" if x["metric"] in flagged else ""] for x in p["rows"]]
    engines = f" (engines {e(', '.join(p['engines']))})" if p.get("engines") else ""
    return _section("precision", f"{p['base'].upper()} vs {p['other'].upper()}",
                    f"<p>From the package's precision.json{engines}: AP per row, delta in AP "
                    f"points; rows losing more than {p['margin_points']:g} point(s) are "
                    "flagged.</p>" + table(["group", "metric", p["base"], p["other"],
                                            "delta (points)", ""], rows, "num"))


def footer(r: ShipReport) -> str:
    i = r.inputs
    given = [f"package <code>{e(str(i.package))}</code>", f"val <code>{e(str(i.data))}</code>"]
    given += [f"{n} <code>{e(str(p))}</code>" for n, p in (("soak", i.soak), ("sweep", i.sweep),
                                                           ("memory", i.memory)) if p]
    return (f"<footer><p>Inputs: {', '.join(given)}.</p><p>Command: <code>{e(r.command)}"
            "</code></p></footer>")
