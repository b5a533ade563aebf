"""report.md and memory.png of benchmarks/memory.py, from its results.json."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from detserve.client.bench import hostload
from detserve.client.bench import plots_style as st
from detserve.client.bench.memory_budget import (
    EngineMemory,
    batch_slope_mb,
    engine_table,
    side_verdicts,
)


def _f(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{v:.1f}"


def server_table(servers: list[dict[str, Any]]) -> str:
    lines = ["| model | package | RSS when SERVING MB | peak under load MB | after MB | load |",
             "|---|---|---|---|---|---|"]
    for s in servers:
        lines.append(f"| {s['model']} | {s['package']} | {_f(s['serving_mb'])} | "
                     f"{_f(s['peak_mb'])} | {_f(s['after_mb'])} | closed loop, "
                     f"{s['concurrency']} callers, {s['duration_s']:g} s, "
                     f"{s['throughput_rps']:.1f} req/s |")
    return "\n".join(lines)


def served_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| side | base MB | loaded MB | engine MB (loaded − base − input) |",
             "|---|---|---|---|"]
    lines += [f"| {r['side']} | {r['base_mb']:.1f} | {r['loaded_mb']:.1f} | "
              f"{r['model_mb']:.1f} |" for r in rows]
    return "\n".join(lines)


def figure(rows: list[EngineMemory], doc: dict[str, Any]) -> Any:
    engines = list(dict.fromkeys(r.engine for r in rows))
    fig, axes = st.panel_grid(len(engines), width_per=4.8, height_per=3.8, max_cols=2)
    sides = sorted({r.side for r in rows})
    colors = st.colors([str(s) for s in sides])
    for ax, engine in zip(axes, engines, strict=True):
        for side in sides:
            pts = sorted((r.batch, r.activation_mb) for r in rows
                         if r.engine == engine and r.side == side)
            if pts:
                ax.plot([b for b, _ in pts], [max(a, 0.1) for _, a in pts], marker="o",
                        color=colors[str(side)], label=f"input {side}×{side}")
                ax.annotate(f"{pts[-1][1]:.0f} MB", pts[-1], xytext=(4, 0),
                            textcoords="offset points", fontsize=7, va="center",
                            color=colors[str(side)])
        ax.set_xscale("log", base=2)
        batches = [r.batch for r in rows]
        ax.set_xlim(min(batches) / 1.25, max(batches) * 1.6)  # room for the end labels
        st.integer_ticks(ax, batches)
        ax.set_title(engine, fontsize=9)
        ax.set_xlabel("batch size")
        ax.set_ylabel("activation MB (peak − loaded), log scale")
        st.log_axis(ax, "y")
        ax.grid(True, alpha=0.3, which="both")
        verdicts = [v for v in side_verdicts(rows) if v.engine == engine]
        st.note_box(ax, [(f"{v.small}→{v.large}: ×{v.mean:.2f}", "#333333") for v in verdicts])
    st.legend_below(fig, [f"input {s}×{s}" for s in sides])
    fig.suptitle("Engine activation memory per batch and input side (2× side: 4× pixels)",
                 fontsize=9)
    return fig


def slope_ratio_line(rows: list[EngineMemory], engine: str, small: int) -> str:
    """The per-image slopes' ratio: the side doubling without the engine's fixed part (the
    activation of a batch tending to 0 images), which flattens the plain ratio at batch 1."""
    a, b = batch_slope_mb(rows, engine, small), batch_slope_mb(rows, engine, small * 2)
    times = b / a if a > 0 else float("nan")
    return (f"- {engine}, {small} → {small * 2} px, per extra image: {_f(a)} → {_f(b)} MB, "
            f"× {times:.2f}")


def write_memory_report(doc: dict[str, Any], out: Path) -> Path:
    rows = [EngineMemory.from_json(r) for r in doc["engines"]]
    st.save(figure(rows, doc), out / "memory.png")
    slopes = [f"- {e}, input {s}: {batch_slope_mb(rows, e, s):.1f} MB per extra image "
              "(least squares over the batch sizes)"
              for e in dict.fromkeys(r.engine for r in rows)
              for s in sorted({r.side for r in rows if r.engine == e})]
    parts = [f"# Memory budget ({doc.get('created_utc', '')})", "",
             f"Versions: {doc.get('versions')}", "", f"Host: {doc.get('host')}", "",
             f"Host load: {hostload.describe(doc.get('host_load'))}", "",
             f"Packages made for 1280: {doc.get('packages') or 'none'}", "",
             "## Server (each served OpenVINO variant of server/default.yaml)", "",
             server_table(doc.get("servers", [])) if doc.get("servers") else "(not measured)",
             "", "## Engine memory per input side and batch size", "",
             "One process per row. base: runtime imported; loaded: engine built and the "
             "float32 input batch allocated; peak: VmHWM over the inference runs; activation = "
             "peak − loaded. Engine options: "
             f"{doc.get('engine_options')}.", "", engine_table(rows), "",
             "## Does 2× the side cost 4×?", "",
             *(f"- {v.line()}" for v in side_verdicts(rows)), *slopes,
             *(slope_ratio_line(rows, v.engine, v.small) for v in side_verdicts(rows)), "",
             "## As served: OpenVINO INT8, batch sizes 1/2/4/8 compiled, pixel input", "",
             "RSS after the engine is built as the served default builds it: one compiled model "
             "per batch size, each run once at start-up to measure its cost (so each holds its "
             "activation memory from then on).", "",
             served_table(doc.get("as_served", [])), "",
             "## Plot", "", "![memory](memory.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
