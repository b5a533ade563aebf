"""The YOLOv8 rows of benchmarks/model_families.py (--ultralytics, benchmarks/yolo_rows.py).

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

from yolo_rows import YoloRowError, YoloSpec, parse_spec, yolo_row  # noqa: E402

YOLO_PY = REPO / ".venv-yolo" / "bin" / "python"
# The environment is whole once Ultralytics is in (models/ultralytics_env.sh installs it last);
# a half-made one skips too.
HAS_YOLO_ENV = any((REPO / ".venv-yolo").glob("lib/python3*/site-packages/ultralytics/__init__.py"))


def test_spec_without_batches_times_one_and_eight() -> None:
    assert parse_spec("runs/yolo/yolov8n") == YoloSpec(Path("runs/yolo/yolov8n"), (1, 8))


def test_spec_batches_after_colon() -> None:
    assert parse_spec("runs/yolo/yolov8x:1") == YoloSpec(Path("runs/yolo/yolov8x"), (1,))
    assert parse_spec("d:1,4,8").batches == (1, 4, 8)


def test_colon_inside_the_path_is_part_of_the_path() -> None:
    assert parse_spec("a:b/yolov8n").root == Path("a:b/yolov8n")


@pytest.mark.parametrize("text", ["d:x", "d:1,", "d:0", "d:-1"])
def test_bad_batches_are_refused(text: str) -> None:
    with pytest.raises(YoloRowError, match="batch"):
        parse_spec(text)


def test_folder_without_package_names_what_makes_it(tmp_path: Path) -> None:
    with pytest.raises(YoloRowError, match=r"yolo_families\.sh"):
        yolo_row(YoloSpec(tmp_path, (1,)))


def test_cli_refuses_missing_package_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks/model_families.py"), "--no-default",
         "--ultralytics", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, check=False, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "Traceback" not in done.stderr
    assert "nowhere: needs manifest.yaml" in done.stderr
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
    subprocess.run([str(Path(sys.executable).parent / "detserve-model"), "import",
                    str(tmp_path / "yolov8n.onnx"), "--names", "coco", "--out",
                    str(tmp_path / "pkg")], check=True, capture_output=True)  # fmt: skip
    shutil.copy(tmp_path / "yolov8n.export.json", tmp_path / "pkg" / "export.json")
    row = yolo_row(parse_spec(f"{tmp_path / 'pkg'}:1"))
    assert abs(row["parameters"] - 3_151_904) / 3_151_904 < 0.01
    assert 8.0 < row["gflops"] < 9.5
    assert row["parity_max_abs_diff"] < 1e-2
    assert row["batches_timed"] == [1]
