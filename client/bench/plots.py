"""PNG plots for the report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def _top_level(setting: dict[str, Any]) -> dict[str, Any] | None:
    """The level with the highest throughput (the setting at saturation)."""
    levels = [lv for lv in setting["levels"] if lv["ok"]]
    return max(levels, key=lambda lv: lv["throughput_rps"]) if levels else None


def throughput_vs_p99(rows: list[dict[str, Any]], path: Path, slo_ms: float) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == name and r["ok"]]
        ax.plot([r["throughput_rps"] for r in mine], [r["latency_p99_ms"] for r in mine],
                marker="o", label=name)
    ax.axhline(slo_ms, color="grey", linestyle="--", label=f"SLO {slo_ms:g} ms")
    ax.set_xlabel("throughput (req/s)")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.set_title("Throughput against p99, one line per setting (points = load levels)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_cdf(doc: dict[str, Any], path: Path) -> None:
    from detserve.client.bench.report import ok_latencies

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for setting in doc["settings"]:
        top = _top_level(setting)
        if top is None:
            continue
        lat = np.sort(np.asarray(ok_latencies(top)))
        if lat.size == 0:
            continue
        frac = np.arange(1, lat.size + 1) / lat.size
        ax.plot(lat, frac, label=f"{setting['name']} @ {top['spec']['level']:g}")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Latency CDF at each setting's highest-throughput level")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def batch_sizes(doc: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    tops = [(s, top) for s in doc["settings"] if (top := _top_level(s)) is not None]
    width = 0.8 / max(len(tops), 1)
    for i, (setting, top) in enumerate(tops):
        counts = {int(k): v for k, v in top["batch_sizes"].items()}
        total = sum(counts.values()) or 1
        xs = np.array(sorted(counts)) + (i - len(tops) / 2) * width + width / 2
        ax.bar(xs, [counts[k] / total for k in sorted(counts)], width=width,
               label=setting["name"])
    ax.set_xlabel("batch size the request ran in")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Batch sizes actually formed (highest-throughput level)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def queue_vs_compute(doc: dict[str, Any], path: Path) -> None:
    names: list[str] = []
    stages: dict[str, list[float]] = {"queue_ms": [], "preprocess_ms": [], "inference_ms": [],
                                      "postprocess_ms": []}
    for setting in doc["settings"]:
        top = _top_level(setting)
        if top is None:
            continue
        names.append(setting["name"])
        for key in stages:
            stages[key].append(top["server_ms"][key])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    bottom = np.zeros(len(names))
    for key, values in stages.items():
        arr = np.nan_to_num(np.asarray(values, dtype=float))
        ax.bar(names, arr, bottom=bottom, label=key.replace("_ms", ""))
        bottom += arr
    ax.set_ylabel("mean server time per request (ms)")
    ax.set_title("Queue time against compute, highest-throughput level")
    ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_plots(doc: dict[str, Any], rows: list[dict[str, Any]], out_dir: Path,
                slo_ms: float) -> None:
    throughput_vs_p99(rows, out_dir / "throughput_vs_p99.png", slo_ms)
    latency_cdf(doc, out_dir / "latency_cdf.png")
    batch_sizes(doc, out_dir / "batch_sizes.png")
    queue_vs_compute(doc, out_dir / "queue_vs_compute.png")
