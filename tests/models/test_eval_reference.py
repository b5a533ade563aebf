"""`detserve-model eval --store-reference` and `--choose-threshold` write the server's
distribution-shift reference into the package; the test split is refused."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from detserve.engines.drift_reference import Reference
from detserve.engines.manifest import load_package

from .blocks_coco import write_blocks_set


def _eval(*argv: str) -> int:
    from detserve.models import cli_eval

    parser = argparse.ArgumentParser()
    cli_eval.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *argv])
    result: int = args.func(args)
    return result


@pytest.fixture
def package(tiny_package: Path, tmp_path: Path) -> Path:
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    return pkg


def _reference(pkg: Path) -> Any:
    return load_package(pkg).manifest.metadata.get("drift_reference")


def test_store_reference_writes_the_val_histograms_at_the_serving_threshold(
        package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_blocks_set(tmp_path / "val")
    assert _eval(str(package), "--data", str(data), "--store-reference") == 0
    assert "drift reference" in capsys.readouterr().err
    raw = _reference(package)
    # The blocks set: three images with 1, 2 and 1 saturated blocks, each scoring 1.0.
    assert raw["images"] == 3 and raw["split"] == "val" and raw["score_threshold"] == 0.6
    ref = Reference.from_metadata(raw)
    detections, top = ref.signals["detections"], ref.signals["max_score"]
    # Bins: none, one, more than one; every image's max score is 1.0: one bin.
    assert detections.bins.edges == (0.0, 1.0) and detections.counts == (0, 2, 1)
    assert top.bins.edges == () and top.counts == (3,)
    # The rest of the manifest is untouched.
    assert load_package(package).manifest.postprocess.score_threshold == 0.6


def test_choose_threshold_stores_the_reference_at_the_new_threshold(
        package: Path, tmp_path: Path) -> None:
    data = write_blocks_set(tmp_path / "val")
    assert _eval(str(package), "--data", str(data), "--choose-threshold") == 0
    man = load_package(package).manifest
    assert man.metadata["drift_reference"]["score_threshold"] == \
        man.postprocess.score_threshold


def test_the_test_split_is_refused_in_one_line(
        package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_blocks_set(tmp_path / "test")
    doc = json.loads(data.read_text())
    doc["info"]["split"] = "test"
    data.write_text(json.dumps(doc))
    assert _eval(str(package), "--data", str(data), "--store-reference") == 2
    err = capsys.readouterr().err
    assert "test split" in err and len(err.strip().splitlines()) == 1
    assert _reference(package) is None
