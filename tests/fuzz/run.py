"""Fuzz the decode path and the manifest and config loaders with atheris, and record the results.

    .venv/bin/python tests/fuzz/run.py --seconds 300 --out benchmarks/results/fuzz

Each target of targets.py runs in its own process (atheris_main.py) for `--seconds`, from seeds
made here (real JPEGs with and without EXIF orientation, PNGs, cut files, raw frames, the
packaged manifests and server config). Written to `--out`: summary.json and report.md
(executions, libFuzzer's coverage `cov`/`ft`, corpus size, crashes) and, per crash, the input
that caused it. The test suite runs the same for a few seconds (test_fuzz_targets.py).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
TARGET_NAMES = ("decode", "raw", "manifest", "config")
# "#123 DONE   cov: 456 ft: 789 corp: 12/3Kb ..." (libFuzzer's last status line)
_STATUS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_EXECS = re.compile(r"stat::number_of_executed_units:\s+(\d+)")
_RSS = re.compile(r"stat::peak_rss_mb:\s+(\d+)")


@dataclass
class FuzzResult:
    target: str
    seconds: float
    executions: int
    cov: int  # libFuzzer's coverage counter: instrumented Python branches (and edges) reached
    features: int  # libFuzzer's `ft`
    corpus: int  # inputs kept as interesting
    peak_rss_mb: int
    crashes: int
    crash_files: list[str]


def _jpeg(image: np.ndarray, orientation: int | None = None) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    data = bytes(buf.tobytes())
    if orientation is None:
        return data
    tiff = b"II\x2a\x00" + struct.pack("<I", 8) + struct.pack("<H", 1)
    tiff += struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    body = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body + data[2:]


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return bytes(buf.tobytes())


def seeds(target: str) -> list[bytes]:
    rng = np.random.default_rng(14)
    small = rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)
    big = rng.integers(0, 255, (160, 256, 3), dtype=np.uint8)  # >= 2x input: DCT scaling
    if target == "decode":
        whole = _jpeg(small)
        return [whole, _jpeg(small, 6), _jpeg(big, 3), _jpeg(big), _png(small),
                _png(small[:, :, 0]), whole[: len(whole) // 2] + b"\xff\xd9", b"\x89PNG\r\n\x1a\n"]
    if target == "raw":
        frame = rng.integers(0, 255, (16, 12, 3), dtype=np.uint8).tobytes()
        return [bytes([16, 0, 0, 0, 0, 12, 0, 0, 0, 0, i]) + frame[: 16 * 12 * (1 if i == 2 else 3)]
                for i in range(3)]
    if target == "manifest":
        return [p.read_bytes() for p in sorted((REPO / "models" / "packages").glob(
            "*/manifest.yaml"))][:4]
    if target == "config":
        return [(REPO / "server" / "default.yaml").read_bytes(),
                b"host: 127.0.0.1\nmodels:\n  - package: builtin:shapes_320\n    batching:\n"
                b"      max_batch_size: 4\nalerts:\n  dead_camera:\n    frames: 30\n"]
    raise ValueError(f"unknown target {target!r}; known: {', '.join(TARGET_NAMES)}")


def fuzz(target: str, seconds: float, crash_dir: Path) -> FuzzResult:
    """One target for `seconds`; its crashing inputs land in `crash_dir`."""
    crash_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as corpus:
        for i, seed in enumerate(seeds(target)):
            (Path(corpus) / f"seed-{i}").write_bytes(seed)
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(HERE / "atheris_main.py"), target, corpus,
             f"-max_total_time={int(seconds)}", "-print_final_stats=1", "-timeout=20",
             "-rss_limit_mb=3072", "-max_len=65536", f"-artifact_prefix={crash_dir}/{target}-"],
            capture_output=True, text=True, timeout=seconds + 120)
        took = time.monotonic() - started
    log = done.stdout + done.stderr
    status = _STATUS.findall(log)
    last = status[-1] if status else ("0", "0", "0", "0")
    crashes = sorted(str(p) for p in crash_dir.glob(f"{target}-*"))
    if done.returncode != 0 and not crashes:  # died without leaving its input
        (crash_dir / f"{target}-log.txt").write_text(log[-20_000:])
        crashes = [str(crash_dir / f"{target}-log.txt")]
    execs = _EXECS.search(log)
    rss = _RSS.search(log)
    return FuzzResult(target, round(took, 1), int(execs[1]) if execs else int(last[0]),
                      int(last[1]), int(last[2]), int(last[3]), int(rss[1]) if rss else 0,
                      len(crashes), crashes)


def report(results: Sequence[FuzzResult], seconds: float) -> str:
    rows = ["| target | seconds | executions | exec/s | cov | ft | corpus | peak RSS MB "
            "| crashes |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rate = r.executions / r.seconds if r.seconds else 0.0
        rows.append(f"| {r.target} | {r.seconds:g} | {r.executions} | {rate:.0f} | {r.cov} | "
                    f"{r.features} | {r.corpus} | {r.peak_rss_mb} | {r.crashes} |")
    total = sum(r.executions for r in results)
    return "\n".join([
        "# Fuzzing: decode path, manifest and config loading (atheris / libFuzzer)", "",
        f"Command: `.venv/bin/python tests/fuzz/run.py --seconds {seconds:g}` "
        f"({len(results)} targets, one process each, one after another).", "",
        *rows, "",
        f"Executions in all: {total}; crashes: {sum(r.crashes for r in results)}. `cov` and "
        "`ft` are libFuzzer's coverage and feature counters over the instrumented detserve "
        "modules (atheris.instrument_imports). Targets: tests/fuzz/targets.py.", ""])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0, help="per target (default 60)")
    p.add_argument("--targets", default=",".join(TARGET_NAMES), help="comma-separated")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "fuzz")
    args = p.parse_args(argv)
    names = [n for n in args.targets.split(",") if n]
    unknown = sorted(set(names) - set(TARGET_NAMES))
    if unknown:
        p.error(f"unknown targets {unknown}; known: {', '.join(TARGET_NAMES)}")
    args.out.mkdir(parents=True, exist_ok=True)
    crash_dir = args.out / "crashes"
    shutil.rmtree(crash_dir, ignore_errors=True)
    results = []
    for name in names:
        result = fuzz(name, args.seconds, crash_dir)
        print(json.dumps(asdict(result)), flush=True)
        results.append(result)
    summary = {"seconds_per_target": args.seconds, "python": sys.version.split()[0],
               "results": [asdict(r) for r in results],
               "executions": sum(r.executions for r in results),
               "crashes": sum(r.crashes for r in results)}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "report.md").write_text(report(results, args.seconds))
    if not any(crash_dir.iterdir()):
        crash_dir.rmdir()
    return 1 if summary["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
