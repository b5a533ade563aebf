"""The report's PNG figures (matplotlib, Agg backend: no display needed).

File names start with the results name (`closed.json` -> `closed-load_curves.png`), except for
the scripts' own `results.json`, whose figures keep the bare names; so two reports in one
folder never overwrite each other.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from detserve.client.bench import plotdata as pd
from detserve.client.bench import plots_levels, plots_load, plots_overload
from detserve.client.bench import plots_style as st
from detserve.client.bench.report import Recommendation

DEFAULT_NAME = "results"


def file_prefix(results_name: str) -> str:
    """`closed` -> `closed-`; the scripts' `results` -> `` (their folders hold one run)."""
    return "" if results_name in ("", DEFAULT_NAME) else f"{results_name}-"


def figures(doc: dict[str, Any], slo_ms: float,
            rec: Recommendation | None) -> list[tuple[str, Callable[[], Figure]]]:
    """(base name, builder) of every figure the document supports, in the report's order."""
    overload = "phases" in doc  # each phase is its own setting; no SLO question
    level_figs: list[tuple[str, Callable[[], Figure]]] = [
        ("outcomes", lambda: plots_levels.outcomes(doc)),
        ("latency_percentiles",
         lambda: plots_levels.latency_percentiles(doc, None if overload else slo_ms)),
        ("batch_sizes", lambda: plots_levels.batch_sizes(doc)),
        ("queue_vs_compute", lambda: plots_levels.queue_vs_compute(doc)),
    ]
    if overload:
        return [("goodput", lambda: plots_overload.goodput(doc)), *level_figs]
    modes = pd.curve_modes(doc)
    curves: list[tuple[str, Callable[[], Figure]]] = [
        ("load_curves" if len(modes) == 1 else f"load_curves_{m}",
         partial(plots_load.load_curves, doc, m, slo_ms, rec)) for m in modes]
    return [*curves, ("slo_throughput", lambda: plots_load.slo_throughput(doc, slo_ms, rec)),
            *level_figs,
            ("throughput_vs_p99", lambda: plots_load.throughput_vs_p99(doc, slo_ms, rec))]


def write_plots(doc: dict[str, Any], out_dir: Path, slo_ms: float, results_name: str,
                rec: Recommendation | None) -> list[str]:
    """Write every figure into `out_dir`; returns their file names, in the report's order."""
    prefix = file_prefix(results_name)
    names = []
    for base, build in figures(doc, slo_ms, rec):
        name = f"{prefix}{base}.png"
        st.save(build(), out_dir / name)
        names.append(name)
    return names
