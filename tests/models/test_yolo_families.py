"""The YOLOv8 rows of benchmarks/model_families.py (benchmarks/model_families_rows.py).

The end-to-end test needs the Ultralytics environment (models/ultralytics_env.sh, .venv-yolo)
and skips without it; the rest runs in the test install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

from model_families_rows import YOLO_PLAN, onnx_parameters, yolo_package  # noqa: E402

from detserve.engines.manifest import load_package  # noqa: E402

YOLO_PY = REPO / ".venv-yolo" / "bin" / "python"
# The environment is whole once Ultralytics is in (models/ultralytics_env.sh installs it last);
# a half-made one skips too.
HAS_YOLO_ENV = any((REPO / ".venv-yolo").glob("lib/python3*/site-packages/ultralytics/__init__.py"))


def test_package_at_another_side_shares_the_onnx_file(tmp_path: Path) -> None:
    base = tmp_path / "yolov8n"
    shutil.copytree(REPO / "models/packages/shapes_320", base,
                    ignore=shutil.ignore_patterns("model.pt", "*.md"))  # fmt: skip
    at_640 = yolo_package(base, 640)
    assert at_640 == tmp_path / "yolov8n_640"
    m = load_package(at_640).manifest
    assert (m.input_width, m.input_height) == (640, 640)
    assert (at_640 / "model.onnx").samefile(base / "model.onnx")
    assert yolo_package(base, 640) == at_640  # again: reused, not refused
    assert yolo_package(base, 320) == base  # the export's own side is the package itself


def test_every_scale_has_a_plan_at_each_side() -> None:
    for scale in "nsmx":
        assert set(YOLO_PLAN[scale]) == {320, 640, 1280}
        assert all(b is None or b[0] == 1 for b in YOLO_PLAN[scale].values())


def test_cli_refuses_missing_package_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/model_families.py"), "--yolo",
         str(tmp_path / "nowhere"), "--torchvision", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "nowhere/yolov8n: needs manifest.yaml and export.json" in done.stderr
    assert "yolo_families.sh" in done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not HAS_YOLO_ENV, reason="no .venv-yolo (models/ultralytics_env.sh)")
def test_yolov8n_from_yaml_exports_imports_and_counts(tmp_path: Path) -> None:
    """Real export in .venv-yolo, real import here. Ultralytics' own summary of yolov8n (fused):
    3,151,904 parameters, 8.7 GFLOPs at 640."""
    subprocess.run([str(YOLO_PY), str(REPO / "benchmarks/yolo_export.py"), "--out",
                    str(tmp_path), "n"], check=True, cwd=tmp_path, capture_output=True)  # fmt: skip
    facts = json.loads((tmp_path / "yolov8n.export.json").read_text())
    assert facts["parity"]["output_shape"] == [1, 84, 8400]
    assert facts["parity"]["batch2_output_shape"] == [2, 84, 8400]
    assert 8.0 < facts["gflops"] < 9.5
    assert max(facts["parity"]["max_abs_diff_boxes"], facts["parity"]["max_abs_diff_scores"]) < 1e-2
    subprocess.run([str(Path(sys.executable).parent / "detserve-model"), "import",
                    str(tmp_path / "yolov8n.onnx"), "--names", "coco", "--out",
                    str(tmp_path / "pkg")], check=True, capture_output=True)  # fmt: skip
    params = onnx_parameters(tmp_path / "pkg" / "model.onnx")
    assert abs(params - 3_151_904) / 3_151_904 < 0.01
