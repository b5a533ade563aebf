"""A short real sweep: a server subprocess per batching setting, the raw-engine baseline, then
the report. Checks the files and that the report's recommendation matches its own table."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from detserve.client.bench.cli import main as bench_main
from detserve.client.bench.grid import grid_settings
from detserve.client.bench.report import recommend
from detserve.client.bench.resultsdoc import CSV_COLUMNS, csv_rows
from detserve.client.bench.rounds import ratios_by_level, representative_rows
from detserve.client.bench.sweep import load_sweep


def test_grid_adds_the_no_batching_baseline() -> None:
    settings = grid_settings({"max_batch_size": [4, 8], "max_queue_delay_ms": [1, 5],
                              "instances": [1, 2]}, no_batching=True)
    assert len(settings) == 9 and settings[0].role == "no_batching"
    assert settings[0].batching.max_batch_size == 1 and settings[0].name == "b1_d0ms_i1"
    assert {s.name for s in settings[1:]} >= {"b4_d1ms_i1", "b8_d5ms_i2"}
    in_grid = grid_settings({"max_batch_size": [1, 4], "max_queue_delay_ms": [1, 5]},
                            no_batching=True)
    assert [p.role for p in in_grid] == ["no_batching", "sweep", "sweep"]
    assert [p.name for p in in_grid] == ["b1_d1ms_i1", "b4_d1ms_i1", "b4_d5ms_i1"]


def test_short_sweep_writes_json_csv_plots_and_report(tiny_package: Path, blocks_folder: Path,
                                                       tmp_path: Path) -> None:
    sweep = {
        "model": {"package": str(tiny_package), "engine_options": {"intra_op_threads": 1},
                  "batching": {"max_batch_size": 4, "max_queue_delay_ms": 2, "instances": 1,
                               "max_queue_size": 64}},
        # A one-value engine-options axis: names carry it, the values stay the model's own.
        "grid": {"max_batch_size": [1, 4], "engine_options": {"intra_op_threads": [1]}},
        "load": {"mode": "closed", "levels": [1, 4], "warmup_s": 0.1, "duration_s": 0.4},
        "inputs": {"source": str(blocks_folder), "count": 4},
        "baselines": {"raw_engine": {"batch_sizes": [1, 4], "duration_s": 0.2}},
        "startup_timeout_s": 60,
    }
    cfg_path = tmp_path / "sweep.yaml"
    cfg_path.write_text(yaml.safe_dump(sweep))
    assert [p.name for p in load_sweep(cfg_path).settings] == ["b1_d2ms_i1_iot1", "b4_d2ms_i1_iot1"]
    out = tmp_path / "out"
    code = bench_main(["sweep", "--config", str(cfg_path), "--out", str(out), "--slo-ms",
                       "5000", "--no-progress"])
    assert code == 0
    doc = json.loads((out / "results.json").read_text())
    assert [s["name"] for s in doc["settings"]] == ["b1_d2ms_i1_iot1", "b4_d2ms_i1_iot1"]
    assert [s["role"] for s in doc["settings"]] == ["no_batching", "served_default"]
    assert [s["engine_options"] for s in doc["settings"]] == [{"intra_op_threads": 1}] * 2
    assert [s["batching"]["max_queue_size"] for s in doc["settings"]] == [64, 64]
    assert [r["batch_size"] for r in doc["raw_engine"]] == [1, 4]
    assert all(r["pipeline_images_per_s"] > 0 for r in doc["raw_engine"])
    nobatch = doc["settings"][0]["levels"]
    assert all(set(lv["batch_sizes"]) == {"1"} for lv in nobatch)  # max_batch_size 1 honoured
    served = yaml.safe_load((out / "server-b4_d2ms_i1_iot1.yaml").read_text())
    assert served["models"][0]["engine_options"] == {"intra_op_threads": 1}
    assert "max_queue_wait_ms" not in served["models"][0]["batching"]  # emitted only when set
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and tuple(rows[0]) == CSV_COLUMNS
    assert {r["setting"] for r in rows} == {"b1_d2ms_i1_iot1", "b4_d2ms_i1_iot1"}
    report = (out / "report.md").read_text()
    rec = recommend(csv_rows(doc), 5000.0)
    assert rec is not None
    assert max(r["throughput_rps"] for r in csv_rows(doc)
               if r["latency_p99_ms"] <= 5000.0 and r["errors"] == 0
               and not r["client_saturated"]) == rec.throughput_rps
    assert f"**{rec.setting}** at level {rec.level:g}" in report
    assert "Server ÷ raw engine" in report
    by = {(r["setting"], r["level"]): r["throughput_rps"] for r in csv_rows(doc)}
    ratio = by[("b4_d2ms_i1_iot1", 4.0)] / by[("b1_d2ms_i1_iot1", 4.0)]
    assert "Served default ÷ no batching, per load level" in report
    assert f"**{ratio:.2f}**" in report
    for png in ("load_curves", "slo_throughput", "latency_percentiles", "outcomes"):
        assert (out / f"{png}.png").stat().st_size > 1000 and f"]({png}.png)" in report
    # Each setting's server said what it serves (GetModelInfo), asked when it came up.
    assert [s["target_info"]["engine"] for s in doc["settings"]] == ["onnxruntime"] * 2
    # Interleaved (the default): both servers were up at once, each ran the ladder in order.
    assert len({s["target"] for s in doc["settings"]}) == 2
    assert [[lv["spec"]["level"] for lv in s["levels"]] for s in doc["settings"]] == [[1, 4]] * 2
    assert all(s["target_info"]["name"] == "blocks@64" for s in doc["settings"])
    # Every level records its server's peak RSS (procstat, VmRSS every 50 ms): the memory column.
    peaks = [lv["server_rss_peak_mb"] for s in doc["settings"] for lv in s["levels"]]
    assert len(peaks) == 4 and all(p > 10 for p in peaks)
    assert [float(r["server_rss_peak_mb"]) for r in rows] == [round(p, 1) for p in peaks]
    assert "server peak RSS MB" in report


def test_interleaved_order_rotates_per_level() -> None:
    from detserve.client.bench.sweep import _rotated

    assert [_rotated(3, k) for k in range(4)] == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def _rounds_sweep(package: Path, images: Path, levels: list[int], **fields: Any
                  ) -> dict[str, Any]:
    """A short interleaved sweep of the tiny package with rounds (and `fields`)."""
    return {
        "model": {"package": str(package), "engine_options": {"intra_op_threads": 1},
                  "batching": {"max_batch_size": 4, "max_queue_delay_ms": 2, "instances": 1,
                               "max_queue_size": 64}},
        "load": {"mode": "closed", "levels": levels, "warmup_s": 0.1, "duration_s": 0.3},
        "inputs": {"source": str(images), "count": 4},
        "baselines": {"raw_engine": False},
        "startup_timeout_s": 60,
        **fields,
    }


def test_sweep_with_rounds_alternates_and_reports_the_median_ratio(
        tiny_package: Path, blocks_folder: Path, tmp_path: Path) -> None:
    sweep = _rounds_sweep(tiny_package, blocks_folder, [1, 2],
                          grid={"max_batch_size": [1, 4]}, rounds=3)
    cfg_path = tmp_path / "sweep.yaml"
    cfg_path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert bench_main(["sweep", "--config", str(cfg_path), "--out", str(out), "--slo-ms",
                       "5000", "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    for setting in doc["settings"]:
        assert [(lv["round"], lv["spec"]["level"]) for lv in setting["levels"]] == [
            (r, level) for r in range(3) for level in (1.0, 2.0)]
    rows = csv_rows(doc)
    assert len(rows) == 12
    ratios = ratios_by_level([r for r in rows if r["role"] == "served_default"],
                             [r for r in rows if r["role"] == "no_batching"])
    assert sorted(ratios) == [1.0, 2.0] and all(len(v) == 3 for v in ratios.values())
    report = (out / "report.md").read_text()
    assert "ratio per round" in report and "3 rounds" in report
    for level, values in ratios.items():
        each = " / ".join(f"{v:.2f}" for v in values)
        assert f"**{statistics.median(values):.2f}** | {each} |" in report, level
    # The recommendation reads each level's median round, a row of the table.
    rec = recommend(representative_rows(rows), 5000.0)
    assert rec is not None and f"**{rec.setting}** at level {rec.level:g}" in report


def test_rounds_need_interleave(tmp_path: Path, tiny_package: Path) -> None:
    for bad, message in (({"rounds": 0}, "'rounds' must be an integer >= 1, got 0"),
                         ({"rounds": 2, "interleave": False}, "needs interleave: true")):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump({"model": {"package": str(tiny_package)}, **bad}))
        with pytest.raises(ValueError, match=message):
            load_sweep(cfg)


def test_fresh_servers_run_each_round_on_new_processes(
        tiny_package: Path, blocks_folder: Path, tmp_path: Path) -> None:
    sweep = _rounds_sweep(tiny_package, blocks_folder, [1], grid={"max_batch_size": [4]},
                          rounds=2, fresh_servers=True)
    cfg_path = tmp_path / "sweep.yaml"
    cfg_path.write_text(yaml.safe_dump(sweep))
    out = tmp_path / "out"
    assert bench_main(["sweep", "--config", str(cfg_path), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "results.json").read_text())
    names = [s["name"] for s in doc["settings"]]
    assert len(names) == 2  # the setting and its no-batching baseline
    for setting in doc["settings"]:
        assert [lv["round"] for lv in setting["levels"]] == [0, 1]
        assert all(lv["ok"] > 0 for lv in setting["levels"])
    for name in names:
        listening = []
        for log in (out / f"server-{name}.log", out / f"server-{name}_r2.log"):
            lines = [json.loads(line) for line in log.read_text().splitlines()
                     if line.startswith("{")]
            listening += [line["address"] for line in lines if line.get("event") == "listening"]
        assert len(listening) == 2 and listening[0] != listening[1], listening


def test_fresh_servers_need_a_plain_client_priority(tmp_path: Path, tiny_package: Path) -> None:
    for bad, message in (({"fresh_servers": "yes"}, "must be true or false, got 'yes'"),
                         ({"fresh_servers": True, "client_nice": 10}, "needs client_nice 0")):
        cfg = tmp_path / "bad.yaml"
        cfg.write_text(yaml.safe_dump({"model": {"package": str(tiny_package)}, **bad}))
        with pytest.raises(ValueError, match=message):
            load_sweep(cfg)
