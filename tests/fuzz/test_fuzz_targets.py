"""The fuzz targets in the test suite: every input the fuzzers found a bug with replays cleanly,
each bug has its own check, and a bounded atheris run of each target (about 3 s each) ends with
no crash. The longer run is `tests/fuzz/run.py` (results in benchmarks/results/fuzz/)."""

from __future__ import annotations

import struct
import time
import zlib
from pathlib import Path

import pytest

from detserve.engines.manifest import ManifestError, load_package
from detserve.engines.preprocess import ImageError, decode_encoded_native, read_header
from detserve.server.config import ConfigError, load_file

from .run import TARGET_NAMES, fuzz, seeds
from .targets import TARGETS

REGRESSIONS = Path(__file__).parent / "regressions"
BOUNDED_S = 3


@pytest.mark.parametrize("path", sorted(REGRESSIONS.glob("*.bin")), ids=lambda p: p.stem)
def test_inputs_the_fuzzers_found_replay_cleanly(path: Path) -> None:
    TARGETS[path.stem.partition("-")[0]](path.read_bytes())


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_seeds_replay_cleanly(target: str) -> None:
    for seed in seeds(target):
        TARGETS[target](seed)


def _chunk(kind: bytes, body: bytes, length: int | None = None) -> bytes:
    size = len(body) if length is None else length
    return struct.pack(">I", size) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_a_png_chunk_claiming_more_than_the_file_is_refused_from_the_header() -> None:
    """Found by fuzzing: OpenCV allocated the 4 GB such an IDAT claimed (12 s, 4 GB RSS)."""
    ihdr = struct.pack(">IIBBBBB", 40, 24, 8, 2, 0, 0, 0)
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 100), length=0xFFFF0B63) + _chunk(b"IEND", b""))
    started = time.monotonic()
    with pytest.raises(ImageError, match="its 'IDAT' chunk at byte 33 claims 4294904675 bytes"):
        decode_encoded_native(data, 4_000_000)
    assert time.monotonic() - started < 0.1
    body = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0"))
    with pytest.raises(ImageError, match="no IEND chunk"):
        read_header(body)
    assert read_header(body + _chunk(b"IEND", b"")).width == 40  # every chunk in place


def test_manifest_and_config_files_that_are_not_utf8_are_clear_errors(tmp_path: Path) -> None:
    """Found by fuzzing: UnicodeDecodeError escaped load_package and load_file."""
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "manifest.yaml").write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ManifestError, match="is not valid YAML: 'utf-8' codec can't decode"):
        load_package(tmp_path)
    (tmp_path / "config.yaml").write_bytes(b"host: \xf7\n")
    with pytest.raises(ConfigError, match="is not valid YAML: 'utf-8' codec can't decode"):
        load_file(tmp_path / "config.yaml")


def test_yaml_nested_too_deeply_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "manifest.yaml").write_text("[" * 1500)
    with pytest.raises(ManifestError, match="nested too deeply"):
        load_package(tmp_path)
    (tmp_path / "config.yaml").write_text("{a: " * 1500)
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_file(tmp_path / "config.yaml")


@pytest.mark.parametrize("target", TARGET_NAMES)
def test_a_bounded_atheris_run_finds_no_crash(target: str, tmp_path: Path) -> None:
    result = fuzz(target, BOUNDED_S, tmp_path / "crashes")
    assert result.crashes == 0, [Path(p).read_bytes()[:200] for p in result.crash_files]
    assert result.executions > 10 and result.cov > 0
