"""`detserve-client detect` against a real server (blocks model): folders, globs, concurrency,
--save, class names, JSON errors, exit codes and the unavailable-server hint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from detserve.client.annotate import class_color
from detserve.client.cli import main as client_main
from detserve.client.cli_output import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE

from .conftest import ThreadedServer, blocks_image, png_bytes

RED, GREEN, BLUE = 0, 1, 2
LABELS = ("red", "green", "blue")


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.strip().splitlines()]


@pytest.fixture
def mixed_folder(tmp_path: Path) -> Path:
    """Six images in four formats, one colour block each at a known cell, plus a text file."""
    root = tmp_path / "images"
    root.mkdir()
    for i in range(6):
        x, y, channel = (i % 2) * 32, (i // 2 % 2) * 32, i % 3
        bgr = np.ascontiguousarray(blocks_image(64, 64, [(x, y, channel)])[:, :, ::-1])
        ext = (".png", ".bmp", ".webp", ".png", ".jpg", ".png")[i]
        params = [cv2.IMWRITE_WEBP_QUALITY, 101] if ext == ".webp" else []
        assert cv2.imwrite(str(root / f"img{i}{ext}"), bgr, params)
    (root / "notes.txt").write_text("not an image")
    return root


def expected(i: int) -> dict[str, Any]:
    x, y = (i % 2) * 32, (i // 2 % 2) * 32
    return {"label": LABELS[i % 3], "bbox": [float(x), float(y), x + 32.0, y + 32.0]}


def test_folder_at_concurrency_4_answers_each_image_in_order(
        server: ThreadedServer, mixed_folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = client_main(["detect", str(mixed_folder), "--concurrency", "4", "--json",
                        "--target", server.target])
    lines = json_lines(capsys.readouterr().out)
    assert code == EXIT_OK
    assert [Path(x["image"]).stem for x in lines] == [f"img{i}" for i in range(6)]
    for i, line in enumerate(lines):
        dets = line["detections"]
        assert len(dets) == 1
        assert {"label": dets[0]["label"], "bbox": dets[0]["bbox"]} == expected(i), line["image"]


def test_glob_patterns_pick_matching_images(server: ThreadedServer, mixed_folder: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = client_main(["detect", str(mixed_folder / "*.png"), "--json", "--target",
                        server.target])
    lines = json_lines(capsys.readouterr().out)
    assert code == EXIT_OK
    assert [Path(x["image"]).name for x in lines] == ["img0.png", "img3.png", "img5.png"]
    code = client_main(["detect", str(mixed_folder / "*.gif"), "--target", server.target])
    assert code == EXIT_USAGE
    assert "matches" in capsys.readouterr().err


def test_save_draws_each_box_on_a_copy(server: ThreadedServer, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    pixels = np.zeros((128, 128, 3), np.uint8)
    pixels[64:, :64, BLUE] = 255  # at the model's 64x64 input: the bottom-left 32-px cell
    image = tmp_path / "scene.png"
    image.write_bytes(png_bytes(pixels))
    out_dir = tmp_path / "annotated"
    code = client_main(["detect", str(image), "--save", str(out_dir), "--json",
                        "--target", server.target])
    line = json_lines(capsys.readouterr().out)[0]
    assert code == EXIT_OK and line["saved"] == str(out_dir / "scene.png")
    drawn = cv2.imread(str(out_dir / "scene.png"))
    original = cv2.imread(str(image))
    assert drawn.shape == original.shape
    assert line["detections"][0]["bbox"] == [0.0, 64.0, 64.0, 128.0]
    # The box's right edge (x = 64) was black and is now blue's box colour.
    assert tuple(int(v) for v in drawn[96, 64]) == class_color(BLUE)
    assert tuple(int(v) for v in original[96, 64]) == (0, 0, 0)
    # The label tab sits just above the box; the far corner is untouched.
    assert drawn[60, 4].any() and not original[60, 4].any()
    assert not drawn[10, 120].any()


def test_class_names_filter_like_ids(server: ThreadedServer, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "two.png"
    image.write_bytes(png_bytes(blocks_image(64, 64, [(0, 0, RED), (32, 32, BLUE)])))
    target = ["--json", "--target", server.target]
    assert client_main(["detect", str(image), "--classes", "Blue", *target]) == EXIT_OK
    by_name = json_lines(capsys.readouterr().out)[0]["detections"]
    assert client_main(["detect", str(image), "--classes", "2", *target]) == EXIT_OK
    by_id = json_lines(capsys.readouterr().out)[0]["detections"]
    assert [d["label"] for d in by_name] == ["blue"] and by_name == by_id
    code = client_main(["detect", str(image), "--classes", "purple", "--target", server.target])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USAGE and len(err) == 1
    assert "'purple'" in err[0] and "red, green, blue" in err[0]


def test_json_errors_come_one_line_per_input(server: ThreadedServer, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    good.write_bytes(png_bytes(blocks_image(64, 64, [(0, 0, GREEN)])))
    bad.write_bytes(b"not an image")
    code = client_main(["detect", str(bad), str(tmp_path / "missing.png"), str(good),
                        "--json", "--target", server.target])
    captured = capsys.readouterr()
    first, second, third = json_lines(captured.out)
    assert code == EXIT_FAILED and captured.err == ""
    assert first["image"] == str(bad)
    assert first["error"]["code"] == "INVALID_ARGUMENT" and first["error"]["origin"] == "server"
    assert "not a JPEG or PNG" in first["error"]["message"]
    assert second["error"]["code"] == "NOT_FOUND" and second["error"]["origin"] == "client"
    assert second["image"] == str(tmp_path / "missing.png")
    assert second["error"]["message"] == "file not found"
    assert [d["label"] for d in third["detections"]] == ["green"]


def test_no_server_is_exit_3_with_a_hint(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes(blocks_image(64, 64, [])))
    target = "127.0.0.1:1"
    assert client_main(["detect", str(image), str(image), "--target", target]) == EXIT_UNAVAILABLE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: UNAVAILABLE")
    assert f"is the server running at {target}?" in err[0]
    assert client_main(["models", "--json", "--target", target]) == EXIT_UNAVAILABLE
    (line,) = json_lines(capsys.readouterr().out)
    assert line["error"]["code"] == "UNAVAILABLE" and target in line["error"]["hint"]


def test_usage_errors_and_version_from_the_installed_command(tmp_path: Path) -> None:
    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "detserve.client.cli", *argv],
                              capture_output=True, text=True, timeout=60, check=False)

    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith("detserve-client 0.")
    empty = run("detect", str(tmp_path), "--target", "127.0.0.1:1")
    assert empty.returncode == EXIT_USAGE
    assert empty.stderr.strip().startswith("error: no ") and "Traceback" not in empty.stderr
    bad_flag = run("detect", "a.png", "--concurrency", "0")
    assert bad_flag.returncode == EXIT_USAGE and "must be >= 1" in bad_flag.stderr
    helptext = run("detect", "--help").stdout
    assert "exit codes:" in helptext and "3  server unavailable" in helptext
