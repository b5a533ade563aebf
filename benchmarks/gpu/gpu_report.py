"""Device benchmark results: derived ratios, results.json, results.csv, summary.md and plots.

Every number written here comes from the rows measured in the same run; nothing is typed in.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SLOS_MS = (10.0, 25.0, 50.0, 100.0, 200.0)
Row = dict[str, Any]


def _ok(rows: Iterable[Row]) -> list[Row]:
    return [r for r in rows if r.get("errors", 0) == 0 and r.get("ok", 0) > 0
            and math.isfinite(r.get("p99_ms", math.nan))]


def _best(rows: Iterable[Row], p99_max: float = math.inf) -> Row | None:
    fit = [r for r in _ok(rows) if r["p99_ms"] <= p99_max]
    return max(fit, key=lambda r: r["throughput_rps"], default=None)


def _ratio(a: Any, b: Any) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return float(a) / float(b)


def batching_gain(server: list[Row]) -> dict[str, Any]:
    """Per model: throughput with batching / without, at each p99 SLO and at the p99 that the
    unbatched setting has at its own best throughput ("equal p99")."""
    out: dict[str, Any] = {}
    for model in sorted({r["model"] for r in server}):
        rows = [r for r in server if r["model"] == model]
        off = [r for r in rows if r["max_batch_size"] == 1]
        on = [r for r in rows if r["max_batch_size"] > 1]
        per_slo = {}
        for slo in SLOS_MS:
            b_off, b_on = _best(off, slo), _best(on, slo)
            per_slo[f"{slo:g}ms"] = {
                "off_rps": b_off and b_off["throughput_rps"],
                "on_rps": b_on and b_on["throughput_rps"],
                "on_setting": b_on and b_on["key"],
                "ratio": _ratio(b_on and b_on["throughput_rps"],
                                b_off and b_off["throughput_rps"]),
            }
        peak_off = _best(off)
        equal = None
        if peak_off is not None:
            b_on = _best(on, peak_off["p99_ms"])
            equal = {"p99_ms": peak_off["p99_ms"], "off_rps": peak_off["throughput_rps"],
                     "on_rps": b_on and b_on["throughput_rps"], "on_setting": b_on and b_on["key"],
                     "ratio": _ratio(b_on and b_on["throughput_rps"], peak_off["throughput_rps"])}
        out[model] = {"at_slo": per_slo, "at_equal_p99": equal}
    return out


def _engine_best(engine: list[Row], model: str, precision: str) -> Row | None:
    rows = [r for r in engine if r["model"] == model and r["precision"] == precision
            and r["cuda_graphs"]]
    return max(rows, key=lambda r: r["img_per_s"], default=None)


def server_vs_engine(server: list[Row], engine: list[Row]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in sorted({r["model"] for r in server}):
        rows = [r for r in server if r["model"] == model]
        best = _best(rows)
        if best is None:
            continue
        raw = _engine_best(engine, model, best["precision"])
        out[model] = {"server_rps": best["throughput_rps"], "server_setting": best["key"],
                      "server_p99_ms": best["p99_ms"],
                      "engine_img_per_s": raw and raw["img_per_s"],
                      "engine_best_batch": raw and raw["batch"],
                      "ratio": _ratio(best["throughput_rps"], raw and raw["img_per_s"])}
    return out


def _pairs(engine: list[Row], key: str, a: Any, b: Any, fixed: dict[str, Any]) -> list[Row]:
    out = []
    for ra in engine:
        if ra[key] != a or any(ra[k] != v for k, v in fixed.items()):
            continue
        for rb in engine:
            same = all(rb[k] == ra[k] for k in ("model", "batch", "precision", "cuda_graphs")
                       if k != key)
            if rb[key] == b and same:
                out.append({"model": ra["model"], "batch": ra["batch"],
                            "ratio_img_per_s": ra["img_per_s"] / rb["img_per_s"]})
    return out


def workers_over_one(rows: list[Row]) -> list[dict[str, Any]]:
    """Throughput with N front-end processes over the single-process server's, same level."""
    one = next((r for r in _ok(rows) if r["workers"] == 1), None)
    return [{"workers": r["workers"], "ratio": _ratio(r["throughput_rps"],
                                                      None if one is None else
                                                      one["throughput_rps"])}
            for r in _ok(rows) if r["workers"] != 1]


def decode_device_over_host(results: dict[str, Any]) -> dict[str, Any]:
    """JPEG decode on the device against the host: in process (device img/s at each batch over
    one host decode thread's) and served (req/s with decode: device over decode: host)."""
    sweep = results.get("decode", [])
    in_process = []
    for r in sweep:
        host = next((h for h in sweep if h["decode"] == "host" and h["input"] == r["input"]),
                    None)
        if r["decode"] == "device" and host is not None:
            in_process.append({"input": r["input"], "batch": r["batch"],
                               "ratio": _ratio(r["img_per_s"], host["img_per_s"])})
    rows = _ok(results.get("decode_server", []))
    served = []
    for workers in sorted({r["workers"] for r in rows}):
        pair = {r["decode"]: r for r in rows if r["workers"] == workers}
        if "host" in pair and "device" in pair:
            served.append({"workers": workers, "host_rps": pair["host"]["throughput_rps"],
                           "device_rps": pair["device"]["throughput_rps"],
                           "ratio": _ratio(pair["device"]["throughput_rps"],
                                           pair["host"]["throughput_rps"])})
    return {"in_process": in_process, "served": served}


def derive(results: dict[str, Any]) -> dict[str, Any]:
    engine, server, nms = results["engine"], results["server"], results["nms"]
    precisions = sorted({r["precision"] for r in engine})
    low = [p for p in precisions if p != "fp32"]
    derived: dict[str, Any] = {
        "batching_gain": batching_gain(server),
        "server_over_engine": server_vs_engine(server, engine),
        "workers_over_one": workers_over_one(results.get("workers", [])),
        "decode_device_over_host": decode_device_over_host(results),
        "nms_gpu_over_host_time": [
            {"batch": r["batch"], "candidates_per_image": r["candidates_per_image"],
             "ratio": _ratio(r["gpu_ms"], r["host_ms"])} for r in nms],
    }
    if low and "fp32" in precisions:
        derived[f"{low[0]}_over_fp32_img_per_s"] = _pairs(engine, "precision", low[0], "fp32",
                                                          {"cuda_graphs": True})
    derived["graphs_on_over_off_img_per_s"] = _pairs(engine, "cuda_graphs", True, False, {})
    return derived


# ---- files --------------------------------------------------------------------------------------
def write_tables(results: dict[str, Any], out: Path) -> None:
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results, indent=1, default=str))
    tmp.replace(out / "results.json")
    rows = [{"table": t, **r} for t in ("engine", "nms", "server", "decode", "decode_server",
                                        "workers")
            for r in results.get(t, [])]
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with (out / "results.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    (out / "summary.md").write_text(summary_text(results))


def _fmt(v: Any, digits: int = 1) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if math.isfinite(v) else "nan"
    return str(v)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c, 2) if isinstance(c, float) else _fmt(c) for c in row)
              + " |" for row in rows]
    return [*lines, ""]


def headline(results: dict[str, Any]) -> list[str]:
    """The issue's target ratios, one line each, from `derived`."""
    d = results["derived"]
    lines = []
    for model, gain in d.get("batching_gain", {}).items():
        eq = gain.get("at_equal_p99") or {}
        lines.append(f"- batching gain, {model}: server req/s with batching / without at equal "
                     f"p99 ({_fmt(eq.get('p99_ms'))} ms): {_fmt(eq.get('ratio'), 2)} "
                     f"({_fmt(eq.get('on_rps'))} vs {_fmt(eq.get('off_rps'))} req/s, "
                     f"{eq.get('on_setting')})")
        at = {k: _fmt(v["ratio"], 2) for k, v in gain.get("at_slo", {}).items()}
        lines.append(f"  - at p99 SLOs: {at}")
    for model, r in d.get("server_over_engine", {}).items():
        lines.append(f"- server / raw engine, {model}: {_fmt(r['ratio'], 2)} "
                     f"({_fmt(r['server_rps'])} req/s via {r['server_setting']} vs "
                     f"{_fmt(r['engine_img_per_s'])} img/s raw at batch "
                     f"{r['engine_best_batch']})")
    for r in d.get("nms_gpu_over_host_time", []):
        lines.append(f"- GPU NMS / host NMS time, batch {r['batch']}, "
                     f"{_fmt(r['candidates_per_image'], 0)} candidates/img: {_fmt(r['ratio'], 4)}")
    in_process = d.get("decode_device_over_host", {}).get("in_process", [])
    if in_process:
        ratios = {f"{r['input']} b{r['batch']}": _fmt(r["ratio"], 2) for r in in_process}
        lines.append(f"- JPEG decode + letterbox img/s, device batch / one host thread: {ratios}")
    for r in d.get("decode_device_over_host", {}).get("served", []):
        lines.append(f"- served req/s, JPEG decode on the device / on the host, {r['workers']} "
                     f"front end(s): {_fmt(r['ratio'], 2)} ({_fmt(r['device_rps'])} vs "
                     f"{_fmt(r['host_rps'])} req/s)")
    for key, rows in d.items():
        if key.endswith("_over_fp32_img_per_s") and rows:
            ratios = {f"{r['model']} b{r['batch']}": round(r["ratio_img_per_s"], 2) for r in rows}
            lines.append(f"- {key}: {ratios}")
    return [*lines, ""]


def summary_text(results: dict[str, Any]) -> str:
    m = results["meta"]
    lines = [f"# detserve device benchmark: {m.get('gpu')}, {m['date_utc']}", "",
             f"torch {m['torch']} (CUDA {m['cuda']}), torchvision {m.get('torchvision')}, "
             f"GPU NMS backend {m.get('gpu_nms_backend')}, Python {m['python']}, "
             f"{m['cpu_count']} CPUs, device `{m['device']}`.", "", "## Headline", ""]
    lines += headline(results)
    lines += ["## Models", ""]
    lines += _table(["label", "weights", "input", "detector config"],
                    [[x["label"], x["weights"], x["input"], x["detector_config"]]
                     for x in results["models"]])
    lines += ["Random weights are used for speed only (the network's cost does not depend on "
              "its weights).", "", "## Raw engine (TorchEngine.infer: H2D, network, GPU NMS, "
              "D2H)", ""]
    lines += _table(["model", "input", "precision", "graphs", "batch", "ms/batch", "img/s",
                     "device-only ms", "device-only img/s"],
                    [[r["model"], r["input"], r["precision"], r["cuda_graphs"], r["batch"],
                      r["ms_per_batch"], r["img_per_s"], r.get("device_ms_per_batch"),
                      r.get("device_img_per_s")] for r in results["engine"]])
    lines += ["Device-only: the same network + GPU NMS on the device-resident input, without "
              f"the host copies. cuDNN TF32 allowed: {m.get('cudnn_allow_tf32')}.", ""]
    lines += ["## GPU NMS vs host NMS (same predictions, every anchor a candidate)", ""]
    lines += _table(["batch", "candidates/img", "kept/img", "GPU ms", "host ms", "backend"],
                    [[r["batch"], r["candidates_per_image"], r["kept_per_image"], r["gpu_ms"],
                      r["host_ms"], r["gpu_backend"]] for r in results["nms"]])
    lines += ["## Server (detserve-server, torch-cuda engine, GPU NMS)", "",
              f"Inputs: {results.get('server_inputs')}", ""]
    lines += _table(["setting", "mode", "level", "req/s", "p50 ms", "p99 ms", "batch",
                     "errors", "client CPU", "procs", "server CPU"],
                    [[r["key"], r["mode"], r["level"], r["throughput_rps"], r["p50_ms"],
                      r["p99_ms"], r["mean_batch"], r["errors"], r["client_cpu_cores"],
                      r["client_processes"], r["server_cpu_cores"]] for r in results["server"]])
    lines += decode_tables(results)
    lines += ["## Front-end worker processes (default model, batching on, closed loop)", ""]
    lines += _table(["workers", "level", "req/s", "p50 ms", "p99 ms", "batch", "errors",
                     "server CPU", "engine CPU", "front end us/req", "exit"],
                    [[r["workers"], r["level"], r["throughput_rps"], r["p50_ms"], r["p99_ms"],
                      r["mean_batch"], r["errors"], r["server_cpu_cores"],
                      r["engine_cpu_cores"], r["frontend_cpu_us_per_request"], r["exit_code"]]
                     for r in results.get("workers", [])])
    lines += ["## Derived ratios", "", "```", json.dumps(results["derived"], indent=1,
                                                          default=str), "```", ""]
    if results["errors"]:
        lines += ["## Errors", ""] + [f"- {e['phase']}: {e['error']}" for e in results["errors"]]
    lines += ["", f"Phases: {results['phases']}", ""]
    return "\n".join(lines)


def decode_tables(results: dict[str, Any]) -> list[str]:
    lines = ["## JPEG decode: host or device (torch-cuda `decode: device`)", ""]
    if results.get("decode_skipped"):
        return [*lines, f"Skipped: {results['decode_skipped']}", ""]
    lines += ["In process: host = one decode thread (libjpeg-turbo, DCT-reduced where the image "
              "is twice the input, cv2 letterbox); device = one batched decode_jpeg + letterbox "
              "+ normalisation.", ""]
    lines += _table(["input", "decode", "batch", "img/s", "ms/batch"],
                    [[r["input"], r["decode"], r["batch"], r["img_per_s"], r["ms_per_batch"]]
                     for r in results.get("decode", [])])
    lines += ["Served (default model, batching 32 / 4 ms, one closed level):", ""]
    lines += _table(["workers", "decode", "level", "req/s", "p50 ms", "p99 ms", "batch",
                     "preprocess ms", "inference ms", "errors", "server CPU",
                     "front end us/req"],
                    [[r["workers"], r["decode"], r["level"], r["throughput_rps"], r["p50_ms"],
                      r["p99_ms"], r["mean_batch"], r["server_preprocess_ms"],
                      r["server_inference_ms"], r["errors"], r["server_cpu_cores"],
                      r["frontend_cpu_us_per_request"]]
                     for r in results.get("decode_server", [])])
    return lines


def write_all(results: dict[str, Any], out: Path) -> None:
    write_tables(results, out)
    write_plots(results, out)


def write_plots(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = f"{results['meta'].get('gpu')} {results['meta']['date_utc'][:10]}"
    if results["engine"]:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        combos = sorted({(r["model"], r["precision"], r["cuda_graphs"]) for r in results["engine"]})
        for model, prec, graphs in combos:
            rows = [r for r in results["engine"] if (r["model"], r["precision"],
                                                     r["cuda_graphs"]) == (model, prec, graphs)]
            ax.plot([r["batch"] for r in rows], [r["img_per_s"] for r in rows], marker="o",
                    label=f"{model} {prec}{'' if graphs else ' no graphs'}")
        ax.set(xscale="log", xlabel="batch size", ylabel="images/s",
               title=f"raw engine, {title}")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "engine.png", dpi=110)
        plt.close(fig)
    if results["server"]:
        models = sorted({r["model"] for r in results["server"]})
        fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
        for ax, model in zip(axes[0], models, strict=True):
            rows = [r for r in results["server"] if r["model"] == model]
            for key in sorted({r["key"] for r in rows}):
                pts = sorted((r["throughput_rps"], r["p99_ms"]) for r in _ok(rows)
                             if r["key"] == key)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=key)
            ax.set(yscale="log", xlabel="throughput (req/s)", ylabel="p99 latency (ms)",
                   title=f"server, {model}, {title}")
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / "server.png", dpi=110)
        plt.close(fig)
    if results["nms"]:
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = range(len(results["nms"]))
        ax.bar([x - 0.2 for x in xs], [r["gpu_ms"] for r in results["nms"]], 0.4, label="GPU NMS")
        ax.bar([x + 0.2 for x in xs], [r["host_ms"] or 0.0 for r in results["nms"]], 0.4,
               label="host NMS")
        ax.set_xticks(list(xs), [f"b{r['batch']}" for r in results["nms"]])
        ax.set(yscale="log", ylabel="ms per batch", title=f"NMS at "
               f"{results['nms'][0]['candidates_per_image']:.0f} candidates/img, {title}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "nms.png", dpi=110)
        plt.close(fig)
