"""Helpers of benchmarks/perf_analyzer.sh: the shared inputs, a readiness wait, the comparison.

    python benchmarks/perf_analyzer_compare.py inputs OUT     # OUT/images/*.jpg, input_data.json
    python benchmarks/perf_analyzer_compare.py wait HOST:PORT  # until the OIP says ready
    python benchmarks/perf_analyzer_compare.py compare OUT     # markdown table on stdout

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
from pathlib import Path
from typing import Any

from detserve.client.images import encode_rgb, synthetic_images
from detserve.server.oip.tensors import join_bytes

COUNT, WIDTH, HEIGHT = 4, 640, 480
TOLERANCE = 0.10  # the bound on the throughput gap


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


def perf_analyzer_rows(path: Path) -> dict[int, dict[str, float]]:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return {int(r["Concurrency"]): {k: float(v) for k, v in r.items() if v not in ("", None)}
            for r in rows}


def _levels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if "levels" in doc:
        return list(doc["levels"])
    return [lv for setting in doc.get("settings", []) for lv in setting["levels"]]


def bench_rows(path: Path) -> dict[int, dict[str, Any]]:
    return {int(lv["spec"]["concurrency"]): lv for lv in _levels(json.loads(path.read_text()))}


def compare(out: Path) -> str:
    pa = perf_analyzer_rows(out / "perf_analyzer.csv")
    bench = bench_rows(out / "detserve_bench.json")
    lines = [
        "| concurrency | perf_analyzer (OIP gRPC) img/s | detserve-bench (detserve.v1) img/s "
        "| gap | within 10 % | PA p50 / p99 ms | bench p50 / p99 ms | PA server queue / "
        "compute ms | bench mean batch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in sorted(set(pa) & set(bench)):
        p, b = pa[c], bench[c]
        pa_rps, b_rps = p["Inferences/Second"], float(b["throughput_rps"])
        gap = (pa_rps - b_rps) / b_rps
        compute_us = (p.get("Server Compute Input", 0) + p.get("Server Compute Infer", 0)
                      + p.get("Server Compute Output", 0))
        lat = b["latency"]
        lines.append(
            f"| {c} | {pa_rps:.1f} | {b_rps:.1f} | {gap:+.1%} | "
            f"{'yes' if abs(gap) <= TOLERANCE else 'no'} | "
            f"{p['p50 latency'] / 1e3:.1f} / {p['p99 latency'] / 1e3:.1f} | "
            f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} | "
            f"{p.get('Server Queue', 0) / 1e3:.1f} / {compute_us / 1e3:.1f} | "
            f"{float(b['mean_batch_size']):.2f} |")
    others = sorted(set(pa) - set(bench))
    if others:
        lines.append("")
        lines.append("perf_analyzer alone (no detserve-bench level): " + ", ".join(
            f"c={c}: {pa[c]['Inferences/Second']:.1f} img/s" for c in others))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("inputs", "wait", "compare"):
        print(__doc__, file=sys.stderr)
        return 2
    command, arg = argv
    if command == "inputs":
        write_inputs(Path(arg))
    elif command == "wait":
        wait_ready(arg)
    else:
        print(compare(Path(arg)), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
