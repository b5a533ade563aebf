"""The report's figures on a results document with known numbers: the plotted series, the
per-level panels, marks for failed calls and the recommendation, file names, host load."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from detserve.client.bench import hostload, plotdata, plots_levels, plots_load
from detserve.client.bench.overload_report import phases_from_doc
from detserve.client.bench.plots_overload import goodput
from detserve.client.bench.recorder import (
    OK,
    ClientLoad,
    LevelSpec,
    RequestRecord,
    summarize,
)
from detserve.client.bench.report import recommend, write_report
from detserve.client.bench.resultsdoc import csv_rows, new_document, setting_entry, write_json
from detserve.client.bench.runner import LevelResult

REFUSED = "RESOURCE_EXHAUSTED"
REPO = Path(__file__).resolve().parents[2]


def _level(callers: int, latencies_ms: list[float], batch: int, refused: int = 0) -> LevelResult:
    """A closed-loop level: one OK call per latency (10 ms apart), then `refused` refusals."""
    spec = LevelSpec(mode="closed", transport="unary", level=float(callers), concurrency=callers)
    recs = [RequestRecord(scheduled_s=0.01 * i, sent_s=0.01 * i, done_s=0.01 * i + ms / 1e3,
                          code=OK, measured=True, batch_size=batch, queue_ms=1.0,
                          inference_ms=2.0) for i, ms in enumerate(latencies_ms)]
    recs += [RequestRecord(0.5, 0.5, 0.501, REFUSED, True) for _ in range(refused)]
    return LevelResult(summarize(spec, recs, ClientLoad(1.0, 0.1), 1.0), recs)


B1_AT = {1: [10.0, 11.0, 12.0, 13.0], 4: [40.0, 44.0, 48.0, 52.0, 56.0, 60.0]}
B8_AT = {1: [9.0, 10.0, 11.0], 4: [20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 90.0],
         16: [150.0] * 12}


@pytest.fixture
def doc() -> dict[str, Any]:
    """b1 ran 4 callers before 1 (out of load order); b8 ran 1, 4 (3 refused) and 16."""
    d = new_document({"served": {"model": {"engine": "openvino",
                                           "engine_options": {"precision": "int8"}}}}, {})
    d["settings"] = [
        setting_entry("b1_d0ms_i1", "no_batching", {"max_batch_size": 1}, "t1",
                      [_level(4, B1_AT[4], 1), _level(1, B1_AT[1], 1)]),
        setting_entry("b8_d2ms_i1", "served_default", {"max_batch_size": 8}, "t2",
                      [_level(1, B8_AT[1], 1), _level(4, B8_AT[4], 4, refused=3),
                       _level(16, B8_AT[16], 8)]),
    ]
    return d


def _lines(fig: Figure, ax_index: int, label: str) -> list[tuple[list[float], list[float]]]:
    return [(list(map(float, ln.get_xdata())), list(map(float, ln.get_ydata())))
            for ln in fig.axes[ax_index].get_lines() if ln.get_label() == label]


def _rate(n_ok: int, latencies_ms: list[float]) -> float:
    """summarize's throughput for _level: OK calls over max(span, the 1 s planned window)."""
    span = max(0.01 * i + ms / 1e3 for i, ms in enumerate(latencies_ms))
    return n_ok / max(span, 1.0)


def test_load_curves_run_in_load_order_with_failed_calls_marked(doc: dict[str, Any]) -> None:
    rec = recommend(csv_rows(doc), 100.0)
    # b8's 4 callers (8 req/s) refused calls and its 16 (12 req/s) missed the SLO.
    assert rec is not None and (rec.setting, rec.level) == ("b1_d0ms_i1", 4.0)
    fig = plots_load.load_curves(doc, "closed", 100.0, rec)
    (b1_top,) = _lines(fig, 0, "b1_d0ms_i1")
    assert b1_top == ([1.0, 4.0], [_rate(4, B1_AT[1]), _rate(6, B1_AT[4])])
    (b8_p99,) = _lines(fig, 1, "b8_d2ms_i1")
    assert b8_p99[0] == [1.0, 4.0, 16.0]
    assert b8_p99[1][1] == pytest.approx(90.0, rel=1e-3)  # p99 of the 8 OK calls at 4
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "3 refused" in texts
    stars = _lines(fig, 0, "recommended (best throughput with p99 ≤ SLO)")
    assert stars == [([4.0], [_rate(6, B1_AT[4])])]
    plt.close(fig)


def test_per_level_panels_put_every_setting_at_the_same_load(doc: dict[str, Any]) -> None:
    fig = plots_levels.latency_percentiles(doc, 100.0)
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        "1 caller (closed loop)", "4 callers (closed loop)", "16 callers (closed loop)"]
    # At 4 callers each setting's own 4-caller calls, not its best-throughput level's.
    (b1,) = _lines(fig, 1, "b1_d0ms_i1")
    (b8,) = _lines(fig, 1, "b8_d2ms_i1")
    assert b1[1] == pytest.approx(sorted(B1_AT[4]), abs=1e-6)
    assert b8[1] == pytest.approx(sorted(B8_AT[4]), abs=1e-6)
    assert b8[0] == pytest.approx([1 / (1 - i / 8) for i in range(8)])
    assert _lines(fig, 2, "b1_d0ms_i1") == []  # b1 never ran 16 callers
    assert any("3 refused of 11 sent" in t.get_text() for t in fig.axes[1].texts)
    assert fig.axes[1].get_xscale() == "log" and fig.axes[1].get_yscale() == "log"
    plt.close(fig)


def test_batch_panels_have_integer_ticks_to_the_largest_batch(doc: dict[str, Any]) -> None:
    fig = plots_levels.batch_sizes(doc)
    assert list(fig.axes[0].get_xticks()) == [1, 2, 3, 4, 5, 6, 7, 8]
    heights = {(round(p.get_x() + p.get_width() / 2, 3), p.get_height())
               for p in fig.axes[1].patches if isinstance(p, Rectangle) and p.get_height() > 0}
    assert heights == {(0.8, 1.0), (4.2, 1.0)}  # b1 all in batches of 1, b8 of 4, side by side
    assert fig.legends and not any(ax.get_legend() for ax in fig.axes)  # legend off the data
    plt.close(fig)


def test_slo_bars_and_the_recommended_one(doc: dict[str, Any]) -> None:
    bars = {b.setting: b for b in plotdata.slo_bars(doc, 100.0)}
    b1, b8 = bars["b1_d0ms_i1"], bars["b8_d2ms_i1"]
    assert b1.under is not None and b1.under.key.level == 4.0
    assert b1.under.throughput_rps == _rate(6, B1_AT[4])
    assert b8.under is not None and b8.under.key.level == 1.0  # 4 refused, 16 over the SLO
    assert b8.best is not None and b8.best.key.level == 16.0
    fig = plots_load.slo_throughput(doc, 100.0, recommend(csv_rows(doc), 100.0))
    solid = [p for p in fig.axes[0].patches if isinstance(p, Rectangle) and p.get_fill()]
    edged = [p for p in solid if p.get_linewidth() == 2]
    assert len(edged) == 1 and edged[0].get_width() == pytest.approx(b1.under.throughput_rps)
    assert any("★ recommended" in t.get_text() for t in fig.axes[0].texts)
    plt.close(fig)


def test_outcomes_count_the_refusals(doc: dict[str, Any]) -> None:
    key = plotdata.LevelKey.of({"mode": "closed", "level": 4})
    assert [p.setting for p in plotdata.at_level(doc, key)] == ["b1_d0ms_i1", "b8_d2ms_i1"]
    b8_4 = plotdata.at_level(doc, key)[1]
    assert plotdata.outcomes(b8_4) == {"OK": 8, "stale": 0, "dropped": 0, REFUSED: 3}
    fig = plots_levels.outcomes(doc)
    assert "3 refused\nof 11" in [t.get_text() for t in fig.axes[1].texts]
    plt.close(fig)


def test_short_names_drop_the_shared_tokens() -> None:
    names = ["b1_d0ms_i1_w400ms_sbs1-2-4-8", "b8_d2ms_i1_w400ms_sbs1-8",
             "b8_d2ms_i1_w400ms_sbsnone"]
    short, common = plotdata.short_names(names)
    assert [short[n] for n in names] == ["b1_d0ms_sbs1-2-4-8", "b8_d2ms_sbs1-8",
                                         "b8_d2ms_sbsnone"]
    assert common == "i1 w400ms"


def test_file_names_follow_the_results_name(doc: dict[str, Any], tmp_path: Path) -> None:
    closed = write_report(doc, tmp_path, 100.0, "closed")
    before = closed.read_text()
    other = json.loads(json.dumps(doc))
    other["settings"] = other["settings"][:1]
    opened = write_report(other, tmp_path, 100.0, "open")
    assert (closed.name, opened.name) == ("closed-report.md", "open-report.md")
    assert closed.read_text() == before  # the second report left the first alone
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert "closed-load_curves.png" in pngs and "open-load_curves.png" in pngs
    linked = [ln[ln.index("(") + 1:-1] for ln in before.splitlines() if ln.startswith("![")]
    assert linked == ["closed-load_curves.png", "closed-slo_throughput.png",
                      "closed-outcomes.png", "closed-latency_percentiles.png",
                      "closed-batch_sizes.png", "closed-queue_vs_compute.png",
                      "closed-throughput_vs_p99.png"]
    assert all((tmp_path / n).stat().st_size > 5000 for n in linked)
    assert write_report(doc, tmp_path / "r", 100.0).name == "report.md"
    assert (tmp_path / "r" / "load_curves.png").is_file()


def _stat_file(path: Path, user: int, idle: int, steal: int) -> Path:
    path.write_text(f"cpu  {user} 0 0 {idle} 0 0 0 {steal} 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    return path


def test_host_load_steal_and_busy_shares(tmp_path: Path) -> None:
    a = hostload.snapshot(_stat_file(tmp_path / "a", user=1000, idle=5000, steal=100))
    b = hostload.snapshot(_stat_file(tmp_path / "b", user=1600, idle=5300, steal=200))
    out = hostload.between(a, b)
    # deltas: user 600, idle 300, steal 100 -> total 1000
    assert (out["steal_pct"], out["busy_pct"]) == (10.0, 70.0)
    assert out["before"]["cpu_jiffies"]["steal"] == 100
    assert "CPU steal 10.0 %" in hostload.describe(out)
    assert "not recorded" in hostload.describe(None)


def test_results_record_host_load_and_the_report_shows_it(doc: dict[str, Any],
                                                         tmp_path: Path) -> None:
    start = doc["host_load"]
    assert len(start["before"]["loadavg"]) == 3 and start["before"]["cpu_jiffies"]["steal"] >= 0
    write_json(doc, tmp_path / "results.json")
    saved = json.loads((tmp_path / "results.json").read_text())["host_load"]
    assert saved["after"]["monotonic_s"] >= saved["before"]["monotonic_s"]
    assert saved["steal_pct"] is None or 0.0 <= saved["steal_pct"] <= 100.0
    report = write_report(doc, tmp_path, 100.0).read_text()
    assert "Host load: load average (1 / 5 / 15 min)" in report and "CPU steal" in report
    row = "| b1_d0ms_i1 | no_batching | `{\"max_batch_size\":1}` | `(the model's)` | not recorded |"
    assert row in report  # nobody asked t1 what it serves
    del doc["host_load"]
    assert "Host load: not recorded" in write_report(doc, tmp_path, 100.0).read_text()


def test_an_overload_report_is_written_again_from_its_results(tmp_path: Path) -> None:
    doc = json.loads((REPO / "benchmarks/results/overload_4k/results.json").read_text())
    phases = phases_from_doc(doc)
    for phase, raw in zip(phases, doc["phases"], strict=True):  # a lossless round trip
        written = phase.to_json()
        assert {k: written[k] for k in raw} == raw
        # A field newer than the file reads as not measured.
        assert math.isnan(written["rejection_sent_p99_ms"])
    current = json.loads((REPO / "benchmarks/results/overload/results.json").read_text())
    assert [p.to_json() for p in phases_from_doc(current)] == current["phases"]
    report = write_report(doc, tmp_path, 100.0).read_text()
    for t in doc["targets"]:
        assert f"{t['verdict']} {t['phase']}: {t['target']}" in report
    assert "![goodput.png](goodput.png)" in report and (tmp_path / "goodput.png").is_file()
    fig = goodput(doc)
    solid = [p.get_height() for p in fig.axes[0].patches if isinstance(p, Rectangle)
             and p.get_fill()]
    assert solid == pytest.approx([p["goodput_rps"] for p in doc["phases"]])
    plt.close(fig)
