"""A command whose optional extra is not installed says which one in one line, exit 2.

The test machine has every extra, so each case runs `detserve-model` in a fresh interpreter in
which the module cannot be imported (`sys.modules[name] = None` is how Python itself marks a
module as unimportable: `import name` then raises ModuleNotFoundError).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

RUN = ("import sys; sys.modules[{module!r}] = None; from detserve.models.cli import main; "
       "sys.exit(main(sys.argv[1:]))")


def _run(module: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", RUN.format(module=module), *argv],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("module", "extra", "argv"), [
    ("torch", "train", ["train", "--epochs", "1"]),
    ("torch", "train", ["package", "ck.pt", "--out", "{tmp}/p", "--train-command", "c",
                        "--data", "d"]),
    ("nncf", "openvino", ["quantize", "{pkg}", "--int8", "--engine", "openvino", "--out",
                          "{tmp}/ov"]),
    ("onnxconverter_common", "precision", ["quantize", "{pkg}", "--fp16", "--out", "{tmp}/h"]),
    ("onnx_graphsurgeon", "precision", ["add-nms", "{pkg}", "--target", "tensorrt", "--out",
                                        "{tmp}/t"]),
])  # fmt: skip
def test_missing_extra_is_one_line_naming_it(
    module: str, extra: str, argv: list[str], tiny_package: Path, tmp_path: Path
) -> None:
    done = _run(module, *[a.format(tmp=tmp_path, pkg=tiny_package) for a in argv])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [f"detserve-model {argv[0]}: error: this needs the optional '{extra}' extra "
                     f"(module '{module}' is not installed): pip install -e '.[{extra}]'"]
    assert done.stdout == ""


def test_commands_without_optional_modules_still_run(tiny_package: Path, tmp_path: Path) -> None:
    # card and import need no extra: with torch unimportable they still work.
    done = _run("torch", "import", str(tiny_package / "model.onnx"), "--names", str(_names(
        tmp_path)), "--out", str(tmp_path / "imp"))
    assert done.returncode == 0, done.stderr
    assert "wrote package" in done.stdout


def _names(tmp_path: Path) -> Path:
    path = tmp_path / "names.txt"
    path.write_text("red\ngreen\nblue\n")
    return path
