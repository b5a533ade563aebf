"""The raw-engine baseline takes its engine from the package: the committed OpenVINO IR packages
run on OpenVINO without --raw-engine, `detserve-bench run --raw-package` included."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from detserve.client.bench.baseline import engine_choice
from detserve.client.bench.cli import main as bench_main
from detserve.client.bench.resultsdoc import load_document
from detserve.client.bench.served import load_served_default
from detserve.client.bench.sweep import resolve_package

from .conftest import ThreadedServer

pytest.importorskip("openvino")


def _builtin(name: str) -> Path:
    return resolve_package(f"builtin:{name}", Path())


def test_engine_from_the_package_unless_it_is_the_served_default() -> None:
    served = load_served_default()
    assert engine_choice(None, None, _builtin("shapes_320_int8")) == (
        served.engine, served.engine_options)  # the served default's own settings
    assert engine_choice(None, None, _builtin("shapes_640_int8")) == ("openvino", {})
    assert engine_choice(None, None, _builtin("shapes_320")) == ("onnxruntime", {})
    assert engine_choice(None, {"num_threads": 1}, _builtin("shapes_640_int8")) == (
        "openvino", {"num_threads": 1})
    assert engine_choice("onnxruntime", None, _builtin("shapes_640_int8")) == ("onnxruntime", {})


def test_baseline_command_on_an_ir_package(capsys: pytest.CaptureFixture[str]) -> None:
    code = bench_main(["baseline", "--package", "builtin:shapes_640_int8", "--batch-sizes", "1",
                       "--duration-s", "0.05", "--input-count", "1", "--width", "160",
                       "--height", "120"])
    assert code == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["batch_size"] == 1 and result["infer_images_per_s"] > 0
    # The process CPU of inference alone: some CPU per image, and at most every core's worth.
    per_image_s = 1.0 / result["infer_images_per_s"]
    assert 0 < result["infer_cpu_us_per_image"] / 1e6 <= per_image_s * (os.cpu_count() or 1)


def test_run_raw_package_on_an_ir_package(server: ThreadedServer, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    code = bench_main(["run", "--target", server.target, "--mode", "closed", "--concurrency",
                       "1", "--warmup-s", "0", "--duration-s", "0.2", "--input-count", "1",
                       "--width", "64", "--height", "64", "--raw-package",
                       "builtin:shapes_640_int8", "--raw-batch-sizes", "1", "--raw-duration-s",
                       "0.05", "--out", str(out), "--no-progress"])
    assert code == 0
    (raw,) = load_document(out)["raw_engine"]
    assert raw["batch_size"] == 1 and raw["pipeline_images_per_s"] > 0
