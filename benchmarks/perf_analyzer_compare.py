"""Helpers of benchmarks/perf_analyzer.sh: the shared inputs, a readiness wait, the comparison.

    python benchmarks/perf_analyzer_compare.py inputs OUT     # OUT/images/*.jpg, input_data.json
    python benchmarks/perf_analyzer_compare.py wait HOST:PORT  # until the OIP says ready
    python benchmarks/perf_analyzer_compare.py stats HOST:PORT FILE  # the server's counts now
    python benchmarks/perf_analyzer_compare.py compare OUT     # markdown table on stdout

The comparison: at each concurrency perf_analyzer ran before and after detserve-bench; the
gap is perf_analyzer's mean against detserve-bench. Each run's engine time per batch and mean
batch come from the server's ModelStatistics around it; img/s over the engine's rate (mean
batch / time per batch) says how much of the engine a generator kept busy, which the machine's
other load cannot move the way it moves raw img/s.

The inputs are the images detserve-bench makes by default (synthetic scenes, 640x480 JPEG):
written once as files, detserve-bench reads them with --inputs, perf_analyzer as base64 in its
input-data JSON (one entry per image, taken in turn). perf_analyzer sends a "b64" entry's bytes
as the tensor's raw contents unchanged, so for a BYTES input they are the serialized tensor:
the file's 4-byte little-endian length, then the file (as Triton itself expects).
"""

from __future__ import annotations

import base64
import csv
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from detserve.client.images import encode_rgb, synthetic_images
from detserve.server.oip.tensors import join_bytes

COUNT, WIDTH, HEIGHT = 4, 640, 480
TOLERANCE = 0.10  # the issue's bound on the throughput gap


def write_inputs(out: Path) -> None:
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    data = []
    for i, frame in enumerate(synthetic_images(COUNT, WIDTH, HEIGHT)):
        jpeg = encode_rgb(frame, "jpeg")
        (images / f"scene_{i}.jpg").write_bytes(jpeg)
        data.append({"IMAGE": {"b64": base64.b64encode(join_bytes([jpeg])).decode()}})
    (out / "input_data.json").write_text(json.dumps({"data": data}))


def wait_ready(target: str, timeout_s: float = 180.0) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient(target)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.is_server_ready() and client.is_model_ready("shapes"):
                return
        except Exception:  # not listening yet
            pass
        time.sleep(0.5)
    raise SystemExit(f"server at {target} not ready after {timeout_s:.0f} s")


def write_stats(target: str, path: Path) -> None:
    """The server's ModelStatistics of `shapes`, as JSON numbers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tritonclient.grpc as grpcclient
    doc = grpcclient.InferenceServerClient(target).get_inference_statistics("shapes",
                                                                            as_json=True)
    (entry,) = doc["model_stats"]
    stats = entry.get("inference_stats", {})
    path.write_text(json.dumps({
        "images": int(entry.get("inference_count", 0)),
        "batches": int(entry.get("execution_count", 0)),
        "infer_ns": int(stats.get("compute_infer", {}).get("ns", 0)),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }))


@dataclass(frozen=True)
class Run:
    """One generator at one concurrency: what it measured and what the server counted."""

    images_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    engine_ms_per_batch: float
    mean_batch: float
    loadavg: str

    @property
    def engine_share(self) -> float | None:
        """Throughput over the engine's own rate in the same run (mean batch / batch time)."""
        if self.images_per_s is None or not self.engine_ms_per_batch:
            return None
        return self.images_per_s / (self.mean_batch / (self.engine_ms_per_batch / 1e3))


def _server(runs: Path, name: str) -> tuple[float, float, str]:
    before = json.loads((runs / f"{name}_before.json").read_text())
    after = json.loads((runs / f"{name}_after.json").read_text())
    images = after["images"] - before["images"]
    batches = after["batches"] - before["batches"]
    # Each image reports its whole batch's engine time: the mean over images is per batch.
    per_batch = (after["infer_ns"] - before["infer_ns"]) / images / 1e6 if images else 0.0
    return per_batch, images / batches if batches else 0.0, " ".join(after["loadavg"])


def _pa_run(runs: Path, c: int, which: str) -> Run:
    per_batch, batch, load = _server(runs, f"c{c}_{which}")
    path = runs / f"c{c}_pa_{which}.csv"
    if not path.is_file():  # no stable measurement at this level
        return Run(None, None, None, per_batch, batch, load)
    with path.open() as f:
        row = next(csv.DictReader(f))
    return Run(float(row["Inferences/Second"]), float(row["p50 latency"]) / 1e3,
               float(row["p99 latency"]) / 1e3, per_batch, batch, load)


def _bench_run(runs: Path, c: int) -> Run:
    per_batch, batch, load = _server(runs, f"c{c}_bench")
    doc = json.loads((runs / f"c{c}_bench.json").read_text())
    levels = doc["levels"] if "levels" in doc else doc["settings"][0]["levels"]
    level = levels[0]
    return Run(float(level["throughput_rps"]), level["latency"]["p50_ms"],
               level["latency"]["p99_ms"], per_batch, batch, load)


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def compare(out: Path, levels: tuple[int, ...] = (1, 4, 16)) -> str:
    runs = out / "runs"
    lines = [
        "| concurrency | perf_analyzer img/s (before, after) | detserve-bench img/s | gap "
        "| within 10 % | engine ms per batch (PA, bench, PA) | mean batch (PA, bench, PA) "
        "| img/s ÷ engine rate (PA, bench, PA) | its gap | p50 / p99 ms PA, bench "
        "| load avg (PA, bench, PA) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in levels:
        a, bench, b = _pa_run(runs, c, "a"), _bench_run(runs, c), _pa_run(runs, c, "b")
        pa = [r.images_per_s for r in (a, b) if r.images_per_s is not None]
        pa_mean = sum(pa) / len(pa) if pa else None
        gap = None if pa_mean is None or not bench.images_per_s else (
            pa_mean - bench.images_per_s) / bench.images_per_s
        ok = "-" if gap is None else "yes" if abs(gap) <= TOLERANCE else "no"
        trio = (a, bench, b)
        shares = [r.engine_share for r in (a, b) if r.engine_share is not None]
        share_gap = None if not shares or not bench.engine_share else (
            sum(shares) / len(shares) - bench.engine_share) / bench.engine_share
        lines.append(
            f"| {c} | {_f(a.images_per_s, '.1f')}, {_f(b.images_per_s, '.1f')} "
            f"| {_f(bench.images_per_s, '.1f')} | {_f(gap, '+.1%')} | {ok} "
            f"| {', '.join(_f(r.engine_ms_per_batch, '.1f') for r in trio)} "
            f"| {', '.join(_f(r.mean_batch, '.2f') for r in trio)} "
            f"| {', '.join(_f(r.engine_share, '.2f') for r in trio)} | {_f(share_gap, '+.1%')} "
            f"| {_f(a.p50_ms, '.1f')} / {_f(a.p99_ms, '.1f')}, "
            f"{_f(bench.p50_ms, '.1f')} / {_f(bench.p99_ms, '.1f')} "
            f"| {a.loadavg.split()[0]}, {bench.loadavg.split()[0]}, {b.loadavg.split()[0]} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    commands = {"inputs": 1, "wait": 1, "compare": 1, "stats": 2}
    if not argv or commands.get(argv[0]) != len(argv) - 1:
        print(__doc__, file=sys.stderr)
        return 2
    command, arg = argv[0], argv[1]
    if command == "inputs":
        write_inputs(Path(arg))
    elif command == "wait":
        wait_ready(arg)
    elif command == "stats":
        write_stats(arg, Path(argv[2]))
    else:
        print(compare(Path(arg)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
