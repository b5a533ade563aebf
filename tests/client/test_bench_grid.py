"""Sweep grids with engine-option axes: the cross product, the names, the baseline rule, and
batching fields passed through (max_queue_wait_ms only when set, unknown keys unchanged)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from detserve.client.bench.grid import (
    format_value,
    grid_settings,
    option_abbreviations,
)
from detserve.client.bench.server_proc import BatchSetting, server_config
from detserve.client.bench.sweep import load_sweep

BASE_OPTIONS = {"num_threads": 2, "num_streams": 1, "static_batch_sizes": [1, 8]}
BASE_BATCHING = {"max_batch_size": 8, "max_queue_delay_ms": 2, "max_queue_size": 256,
                 "instances": 1, "preferred_batch_sizes": []}
AXES = {"static_batch_sizes": [[1, 8], [1, 2, 4, 8], []], "num_streams": [1, 2]}


def test_engine_option_axes_give_the_cross_product_with_named_settings() -> None:
    points = grid_settings({"max_batch_size": [1, 8], "engine_options": AXES}, True,
                           BASE_BATCHING, BASE_OPTIONS)
    assert [p.name for p in points] == [
        "b1_d2ms_i1_sbs1-8_ns1",  # one baseline, with the model's own options
        "b8_d2ms_i1_sbs1-8_ns1", "b8_d2ms_i1_sbs1-8_ns2",
        "b8_d2ms_i1_sbs1-2-4-8_ns1", "b8_d2ms_i1_sbs1-2-4-8_ns2",
        "b8_d2ms_i1_sbsnone_ns1", "b8_d2ms_i1_sbsnone_ns2",
    ]
    assert [p.role for p in points] == ["no_batching", "served_default"] + ["sweep"] * 5
    assert points[0].engine_options == BASE_OPTIONS
    assert points[4].engine_options == {"num_threads": 2, "num_streams": 2,
                                        "static_batch_sizes": [1, 2, 4, 8]}
    assert points[5].engine_options["static_batch_sizes"] == []


def test_the_baseline_takes_listed_engine_options() -> None:
    points = grid_settings({"max_batch_size": [8], "engine_options": {"num_streams": [1, 2]}},
                           {"engine_options": {"num_streams": 2}}, BASE_BATCHING, BASE_OPTIONS)
    baseline = points[0]
    assert (baseline.role, baseline.name) == ("no_batching", "b1_d0ms_i1_ns2")
    assert baseline.engine_options == {**BASE_OPTIONS, "num_streams": 2}
    assert [p.name for p in points[1:]] == ["b8_d2ms_i1_ns1", "b8_d2ms_i1_ns2"]


def test_options_that_differ_from_the_base_are_named_even_off_the_grid() -> None:
    points = grid_settings({"max_batch_size": [4]}, {"engine_options": {"num_threads": 1}},
                           None, BASE_OPTIONS)
    assert [p.name for p in points] == ["b1_d0ms_i1_nt1", "b4_d2ms_i1"]
    assert points[1].role == "sweep"  # no model.batching: nothing is the served default


def test_queue_wait_is_named_and_emitted_only_when_set() -> None:
    with_wait = grid_settings({"max_queue_wait_ms": [20, 7.5]}, False,
                              {**BASE_BATCHING, "max_queue_wait_ms": 20})
    assert [p.name for p in with_wait] == ["b8_d2ms_i1_w20ms", "b8_d2ms_i1_w7p5ms"]
    assert with_wait[0].role == "served_default"
    assert with_wait[1].batching.to_yaml()["max_queue_wait_ms"] == 7.5
    (plain,) = grid_settings({}, False, BASE_BATCHING)
    assert "max_queue_wait_ms" not in plain.batching.to_yaml()


def test_unknown_batching_keys_pass_through_to_the_server_config() -> None:
    setting = BatchSetting.from_yaml({"max_batch_size": 4, "preferred_batch_sizes": [2, 8],
                                      "future_bound": 3})
    doc = server_config({"package": "/p", "engine": "onnxruntime"}, setting, 1234,
                        {"stream_policy": "latest", "max_concurrent_rpcs": 64})
    batching = doc["models"][0]["batching"]
    assert batching["future_bound"] == 3
    assert batching["preferred_batch_sizes"] == [2]  # the server refuses sizes above the max
    assert (batching["max_batch_size"], batching["max_queue_delay_ms"]) == (4, 2.0)
    assert (doc["stream_policy"], doc["max_concurrent_rpcs"], doc["port"]) == ("latest", 64, 1234)
    assert doc["metrics_port"] is None and doc["log_requests"] is False


def test_value_tokens_and_abbreviations() -> None:
    assert [format_value(v) for v in ([1, 2, 8], [], True, 0.5, "LATENCY", None)] == \
        ["1-2-8", "none", "1", "0p5", "latency", "none"]
    assert option_abbreviations(["static_batch_sizes", "num_streams"]) == \
        {"static_batch_sizes": "sbs", "num_streams": "ns"}
    # num_streams and num_sockets would both be "ns": full names instead.
    assert option_abbreviations(["num_streams", "num_sockets"]) == \
        {"num_streams": "numstreams", "num_sockets": "numsockets"}


def test_bad_grids_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"grid.engine_options.num_streams' must be a non-empty"):
        grid_settings({"engine_options": {"num_streams": 2}})
    with pytest.raises(ValueError, match=r"unknown sweep field\(s\) grid.\['batch'\]"):
        grid_settings({"batch": [1]})
    with pytest.raises(ValueError, match="bad grid point max_batch_size=0"):
        grid_settings({"max_batch_size": [0]})
    with pytest.raises(ValueError, match=r"baselines.no_batching.\['options'\]"):
        grid_settings({}, {"options": {"num_streams": 2}})


def test_sweep_file_with_model_batching_and_option_axes(tmp_path: Path) -> None:
    sweep = {"model": {"package": "/pkg", "engine": "openvino", "engine_options": BASE_OPTIONS,
                       "batching": BASE_BATCHING},
             "grid": {"max_batch_size": [1, 8], "engine_options": {"num_streams": [1, 2]}},
             "load": {"levels": [1]}, "baselines": {"raw_engine": False}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(sweep))
    cfg = load_sweep(path)
    assert [(p.role, p.name) for p in cfg.settings] == [
        ("no_batching", "b1_d2ms_i1_ns1"), ("served_default", "b8_d2ms_i1_ns1"),
        ("sweep", "b8_d2ms_i1_ns2")]
    assert "batching" not in cfg.model and cfg.base_batching == BASE_BATCHING
    assert cfg.raw_batch_sizes == ()
