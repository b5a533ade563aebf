"""Client-side round robin over detserve replicas on this CPU, in one run: does one client
channel spread its calls over every replica, and what does that give?

    .venv/bin/python benchmarks/round_robin.py --out benchmarks/results/round_robin

Two detserve-server processes on loopback (the config of benchmarks/ray_serve.py: shapes@320
OpenVINO INT8, 1 engine thread each), one detserve-bench client with ONE channel
(`--channels 1`) and the static target `ipv4:127.0.0.1:A,127.0.0.1:B`: `pick_first` (gRPC's
default) against `round_robin` (`--load-balancing round_robin`), then one server alone.
Each replica's share is the difference of its `detserve_requests_total` (from its /metrics)
over the run. Writes each run's detserve-bench JSON and CSV, summary.json and summary.md.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from ray_serve import BIN, bench_lock, config_yaml, free_port, levels, wait_serving


def requests_total(metrics_port: int) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    body = urllib.request.urlopen(url, timeout=5).read().decode()
    return sum(float(v) for v in re.findall(r"^detserve_requests_total\{[^}]*\} (\S+)$", body,
                                            re.MULTILINE))


def bench(target: str, args: argparse.Namespace, out: Path, policy: str) -> dict[str, Any]:
    cmd = [str(BIN / "detserve-bench"), "run", "--target", target, "--no-progress",
           "--channels", "1", "--load-balancing", policy,
           "--concurrency", *map(str, args.concurrency), "--duration-s", str(args.duration_s),
           "--warmup-s", str(args.warmup_s), "--out", str(out)]
    subprocess.run(cmd, check=True)
    doc: dict[str, Any] = json.loads(out.read_text())
    return doc


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/round_robin"))
    p.add_argument("--concurrency", type=int, nargs="+", default=[8])
    p.add_argument("--duration-s", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=2.0)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, Any] = {}
    with bench_lock():
        ports = [(free_port(), free_port()) for _ in range(2)]
        procs = []
        for i, (port, metrics) in enumerate(ports):
            raw = {**config_yaml(port, 1), "metrics_port": metrics}
            path = args.out / f"config-{i}.yaml"
            path.write_text(yaml.safe_dump(raw, sort_keys=False))
            procs.append(subprocess.Popen([str(BIN / "detserve-server"), "--config", str(path)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            for port, _ in ports:
                wait_serving(f"127.0.0.1:{port}")
            both = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port, _ in ports)
            runs = [("pick_first", both, "pick_first"), ("round_robin", both, "round_robin"),
                    ("one_server", f"127.0.0.1:{ports[0][0]}", "pick_first")]
            for name, target, policy in runs:
                before = [requests_total(m) for _, m in ports]
                doc = bench(target, args, args.out / f"{name}.json", policy)
                shares = [requests_total(m) - b for (_, m), b in zip(ports, before, strict=True)]
                rows[name] = {"levels": levels(doc), "requests_per_replica": shares}
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(60)
    (args.out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["# Round robin over 2 detserve-server replicas, one client channel "
             "(benchmarks/round_robin.py)", "",
             "| run | concurrency | req/s | p50 ms | p99 ms | requests on replica A | on B |",
             "|---|---|---|---|---|---|---|"]
    for name, row in rows.items():
        for level in row["levels"]:
            a, b = row["requests_per_replica"]
            lines.append(f"| {name} | {level['concurrency']} | {level['throughput_rps']} | "
                         f"{level['p50_ms']} | {level['p99_ms']} | {a:.0f} | {b:.0f} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
