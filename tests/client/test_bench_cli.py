"""detserve-bench run / report against a real server: JSON, CSV columns, plots, recommendation,
what the server says it serves and the host's load."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from detserve.client.bench import targetinfo
from detserve.client.bench.cli import main as bench_main
from detserve.client.bench.report import default_vs_no_batching, recommend
from detserve.client.bench.resultsdoc import CSV_COLUMNS, csv_rows, load_document
from detserve.client.client import DetectClient

from .conftest import ThreadedServer

UNIT_SUFFIXES = ("_ms", "_rps", "_s", "_cores", "_mb")
COUNT_COLUMNS = {"round", "level", "concurrency", "sent", "ok", "errors", "dropped_frames",
                 "stale_frames", "max_batch_size", "instances", "cameras", "fps", "batch_size_mean",
                 "executed_batch_size_mean"}


def test_csv_columns_name_their_units() -> None:
    for col in CSV_COLUMNS:
        numeric = col not in {"setting", "role", "engine_options", "mode", "transport",
                              "client_saturated"}
        if numeric and col not in COUNT_COLUMNS:
            assert col.endswith(UNIT_SUFFIXES), col


def test_run_then_report(server: ThreadedServer, blocks_folder: Path, tmp_path: Path,
                         capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "closed.json"
    code = bench_main(["run", "--target", server.target, "--mode", "closed", "--concurrency",
                       "1", "3", "--warmup-s", "0.1", "--duration-s", "0.4", "--inputs",
                       str(blocks_folder), "--input-count", "4", "--out", str(out),
                       "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0 and "closed 1:" in printed and "closed 3:" in printed
    doc = load_document(out)
    assert doc["versions"]["grpcio"] and doc["config"]["plan"]["levels"] == [1.0, 3.0]
    (setting,) = doc["settings"]
    assert setting["batching"]["max_batch_size"] == 4 and setting["model"] == "blocks@64"
    for level in setting["levels"]:
        raw = level["records"]
        n = len(raw["scheduled_s"])
        assert n > 0 and all(len(v) == n for v in raw.values())
        assert sum(1 for m, c in zip(raw["measured"], raw["code"], strict=True)
                   if m and c == "OK") == level["ok"]
        assert all(d >= s for s, d in zip(raw["sent_s"], raw["done_s"], strict=True))
    with out.with_suffix(".csv").open() as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        rows = list(reader)
    assert [r["concurrency"] for r in rows] == ["1", "3"]
    assert all(float(r["throughput_rps"]) > 0 and r["errors"] == "0" for r in rows)
    assert all(float(r["latency_p50_ms"]) <= float(r["latency_p99_ms"]) for r in rows)

    # What the server said it serves, and the host's load over the run, are in the results.
    with DetectClient(server.target) as client:
        assert setting["target_info"] == targetinfo.info_fields(client.model_info(""))
    assert setting["target_info"]["engine"] == "onnxruntime"
    load = doc["host_load"]
    assert len(load["before"]["loadavg"]) == 3 and len(load["after"]["loadavg"]) == 3
    assert load["interval_s"] > 0.5 and load["steal_pct"] is not None

    assert bench_main(["report", str(out), "--slo-ms", "10000"]) == 0
    report = (tmp_path / "closed-report.md").read_text()  # named after closed.json
    assert targetinfo.describe(setting["target_info"]) in report
    for png in ("load_curves", "slo_throughput", "outcomes", "latency_percentiles",
                "batch_sizes", "queue_vs_compute", "throughput_vs_p99"):
        assert (tmp_path / f"closed-{png}.png").stat().st_size > 1000
        assert f"](closed-{png}.png)" in report
    # The server shares this process, so a level may read "client saturated" on a busy machine;
    # such levels are never recommended (recommend's rule), whatever their throughput.
    clean = [r for r in csv_rows(doc) if not r["client_saturated"]]
    rec = recommend(csv_rows(doc), 10000.0)
    if not clean:
        assert rec is None and "No error-free level met p99 <= 10000 ms." in report
        return
    best = max(clean, key=lambda r: r["throughput_rps"])
    assert rec is not None and rec.throughput_rps == best["throughput_rps"]
    assert f"{rec.throughput_rps:.1f} req/s" in report


def test_open_and_camera_modes_from_the_cli(server: ThreadedServer, blocks_folder: Path,
                                            tmp_path: Path) -> None:
    common = ["--target", server.target, "--warmup-s", "0", "--duration-s", "0.3", "--inputs",
              str(blocks_folder), "--no-progress"]
    assert bench_main(["run", "--mode", "open", "--rate", "40", "--arrivals", "poisson",
                       "--out", str(tmp_path / "open.json"), *common]) == 0
    assert bench_main(["run", "--mode", "camera", "--cameras", "2", "--fps", "20",
                       "--stream-policy", "latest", "--out", str(tmp_path / "cam.json"),
                       *common]) == 0
    open_doc = json.loads((tmp_path / "open.json").read_text())
    cam_doc = json.loads((tmp_path / "cam.json").read_text())
    o = open_doc["settings"][0]["levels"][0]
    c = cam_doc["settings"][0]["levels"][0]
    assert o["spec"]["arrivals"] == "poisson" and o["ok"] > 0
    assert c["spec"]["transport"] == "stream" and c["spec"]["cameras"] == 2
    assert c["ok"] + c["dropped"] == len(c["records"]["code"])


def test_recommendation_respects_the_slo() -> None:
    rows = [
        {"setting": "a", "level": 1, "throughput_rps": 100.0, "latency_p99_ms": 20.0,
         "errors": 0, "client_saturated": False, "ok": 10},
        {"setting": "b", "level": 4, "throughput_rps": 300.0, "latency_p99_ms": 80.0,
         "errors": 0, "client_saturated": False, "ok": 10},
        {"setting": "c", "level": 8, "throughput_rps": 500.0, "latency_p99_ms": 150.0,
         "errors": 0, "client_saturated": False, "ok": 10},
        {"setting": "d", "level": 8, "throughput_rps": 400.0, "latency_p99_ms": 50.0,
         "errors": 3, "client_saturated": False, "ok": 10},
    ]
    rec = recommend(rows, slo_ms=100.0)
    assert rec is not None and (rec.setting, rec.throughput_rps) == ("b", 300.0)
    assert recommend(rows, slo_ms=10.0) is None


def test_bad_arguments_are_named(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                 blocks_folder: Path) -> None:
    assert bench_main(["report", str(tmp_path / "nope.json")]) == 2
    assert "nope.json" in capsys.readouterr().err
    assert bench_main(["run", "--mode", "closed", "--concurrency", "0", "--out",
                       str(tmp_path / "x.json")]) == 2
    assert "levels must be positive numbers, got [0.0]" in capsys.readouterr().err
    assert bench_main(["run", "--out", str(tmp_path / "x.json"), "--inputs", str(tmp_path)]) == 2
    assert "no .jpg/.jpeg/.png files" in capsys.readouterr().err
    assert bench_main(["run", "--target", "127.0.0.1:1", "--out", str(tmp_path / "x.json"),
                       "--inputs", str(blocks_folder), "--no-progress"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err


def _row(setting: str, role: str, level: float, rps: float, p99: float) -> dict[str, Any]:
    return {"setting": setting, "role": role, "level": level, "throughput_rps": rps,
            "latency_p99_ms": p99, "errors": 0, "client_saturated": False, "ok": 10}


def test_served_default_over_no_batching_per_level_and_at_saturation() -> None:
    rows = [_row("b1", "no_batching", 1, 100.0, 5.0), _row("b1", "no_batching", 4, 150.0, 30.0),
            _row("b8", "served_default", 1, 90.0, 6.0),
            _row("b8", "served_default", 4, 300.0, 20.0),
            _row("b8", "served_default", 8, 330.0, 40.0),  # no b1 run at 8: no per-level ratio
            _row("b4", "sweep", 4, 999.0, 1.0)]
    lines = default_vs_no_batching(rows)
    assert lines[2:4] == ["| 1 | 90.0 | 100.0 | **0.90** | 6.00 | 5.00 |",
                          "| 4 | 300.0 | 150.0 | **2.00** | 20.0 | 30.0 |"]
    assert len(lines) == 6  # header, separator, two levels, blank, saturation
    assert lines[-1] == ("- at saturation (the highest throughput each reached): b8 330.0 req/s "
                         "(level 8) ÷ b1 150.0 req/s (level 4) = **2.20**")
    assert default_vs_no_batching([r for r in rows if r["role"] != "no_batching"]) == []
