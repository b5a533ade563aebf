"""What the drift alerts cost the event loop: CPU microseconds per finished request in
`DriftMonitor.observe` (server/drift.py), the only part that runs per request.

    .venv/bin/python benchmarks/drift_overhead.py

Three cases, each on a fresh monitor with the served default's manifest and its stored
reference (so the shift windows are live from the first frame): frames from one camera,
frames spread over 2,000 cameras (past the 1,000 tracked and 100 labelled: LRU eviction and
the "other" bucket at work), and unary calls with no camera (shift only). Frames carry 0-15
detections with scores drawn from the val-like range. Prints the median of 5 runs.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import grpc
import numpy as np
from prometheus_client import CollectorRegistry

import detserve.models
from detserve.engines.base import DecodeParams
from detserve.engines.manifest import load_package
from detserve.server.alerts_config import AlertsConfig
from detserve.server.catalog import ModelEntry
from detserve.server.config import ModelConfig
from detserve.server.detect import RequestRecord
from detserve.server.drift import DriftMonitor

PACKAGE = Path(detserve.models.__file__).parent / "packages" / "shapes_320_int8"
FRAMES = 20_000


class _Quiet:
    """A logger that drops the alert events (their cost is one line per alert, not per frame)."""

    def warning(self, *args: object, **kwargs: object) -> None: ...

    def info(self, *args: object, **kwargs: object) -> None: ...


def _records(cameras: int) -> list[RequestRecord]:
    manifest = load_package(PACKAGE).manifest
    params = DecodeParams.from_manifest(manifest)
    rng = np.random.default_rng(0)
    out = []
    for k in range(FRAMES):
        n = int(rng.integers(0, 16))
        scores = tuple(float(s) for s in np.sort(rng.uniform(0.4, 1.0, n))[::-1])
        out.append(RequestRecord("r", k, "shapes@320", grpc.StatusCode.OK, scores=scores,
                                 detections=n, max_score=max(scores, default=0.0),
                                 camera=f"cam-{k % cameras}" if cameras else "",
                                 params=params))
    return out


def _run(records: list[RequestRecord]) -> float:
    manifest = load_package(PACKAGE).manifest
    monitor = DriftMonitor(AlertsConfig(), CollectorRegistry(), _Quiet())
    monitor.watch([ModelEntry("shapes@320", "shapes", "320", ModelConfig(package=PACKAGE),
                              manifest, "openvino", True)])
    started = time.process_time()  # CPU time: what the event loop spends, whatever the load
    for rec in records:
        monitor.observe(rec)
    return (time.process_time() - started) / len(records) * 1e6


def main() -> None:
    for label, cameras in (("one camera", 1), ("2000 cameras", 2000), ("no camera", 0)):
        records = _records(cameras)
        runs = [_run(records) for _ in range(5)]
        print(f"{label:>13}: {statistics.median(runs):.1f} CPU us per request "
              f"(median of 5 runs of {FRAMES} requests)")


if __name__ == "__main__":
    main()
