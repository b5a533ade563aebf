"""The results file (JSON: config, versions, summaries, raw per-request records) and its CSV
(one row per load level, units in the column names)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from detserve.client.bench import hostload, targetinfo
from detserve.client.bench.runner import LevelResult

FORMAT_VERSION = 1
_PACKAGES = ("detserve", "grpcio", "protobuf", "numpy", "onnxruntime", "opencv-python-headless",
             "hdrhistogram", "asyncio-throttle", "openvino")

CSV_COLUMNS = (
    "setting", "role", "round", "max_batch_size", "max_queue_delay_ms", "max_queue_wait_ms",
    "instances", "engine_options", "mode", "transport", "level", "concurrency", "offered_rps",
    "rate_rps", "cameras", "fps", "window_s", "sent", "ok", "errors", "dropped_frames",
    "stale_frames", "throughput_rps", "latency_p50_ms", "latency_p90_ms", "latency_p95_ms",
    "latency_p99_ms", "latency_p999_ms", "latency_mean_ms", "latency_max_ms",
    "server_queue_mean_ms", "server_preprocess_mean_ms", "server_inference_mean_ms",
    "server_postprocess_mean_ms", "server_total_mean_ms", "batch_size_mean",
    "executed_batch_size_mean", "server_rss_peak_mb", "client_cpu_cores", "send_lag_p99_ms",
    "client_saturated",
)


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def host_info() -> dict[str, Any]:
    return {"platform": platform.platform(), "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count()}


def new_document(config: dict[str, Any], inputs: dict[str, Any]) -> dict[str, Any]:
    """A results document; its host load starts now (write_json records the end)."""
    start = hostload.snapshot()
    return {
        "tool": "detserve-bench",
        "format_version": FORMAT_VERSION,
        "created_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": sys.argv,
        "versions": versions(),
        "host": host_info(),
        "host_load": hostload.between(start, start),
        "config": config,
        "inputs": inputs,
        "raw_engine": [],
        "settings": [],
    }


def setting_entry(name: str, role: str, batching: dict[str, Any] | None, target: str,
                  levels: Sequence[LevelResult], model: str = "",
                  engine_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One setting's results; `target_info` is what that server said it serves (GetModelInfo,
    asked when it came up; None when nobody asked, see targetinfo)."""
    return {"name": name, "role": role, "batching": batching, "target": target, "model": model,
            "engine_options": None if engine_options is None else dict(engine_options),
            "target_info": targetinfo.recorded(target),
            "levels": [lv.to_json() for lv in levels]}


def options_text(options: Mapping[str, Any] | None) -> str:
    """Engine options as one compact JSON cell ("" when the entry does not record them)."""
    return "" if options is None else json.dumps(options, sort_keys=True, separators=(",", ":"))


def write_json(doc: dict[str, Any], path: Path) -> None:
    """Write `doc` atomically; its host load now ends at this write (a document written after
    every setting keeps the span of what it holds)."""
    if doc.get("host_load"):
        doc["host_load"] = hostload.between(doc["host_load"]["before"], hostload.snapshot())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, allow_nan=True))
    tmp.replace(path)


def load_document(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"results file not found: {str(path)!r}")
    doc: dict[str, Any] = json.loads(path.read_text())
    if doc.get("tool") != "detserve-bench":
        raise ValueError(f"{str(path)!r} is not a detserve-bench results file "
                         f"(tool={doc.get('tool')!r})")
    return doc


def csv_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for setting in doc["settings"]:
        b = setting.get("batching") or {}
        for lv in setting["levels"]:
            spec, lat, srv = lv["spec"], lv["latency"], lv["server_ms"]
            rows.append({
                "setting": setting["name"], "role": setting["role"],
                "round": int(lv.get("round", 0)),
                "max_batch_size": b.get("max_batch_size", ""),
                "max_queue_delay_ms": b.get("max_queue_delay_ms", ""),
                "max_queue_wait_ms": b.get("max_queue_wait_ms", ""),
                "instances": b.get("instances", ""),
                "engine_options": options_text(setting.get("engine_options")),
                "mode": spec["mode"], "transport": spec["transport"], "level": spec["level"],
                "concurrency": spec["concurrency"], "offered_rps": round(lv["offered_rps"], 3),
                "rate_rps": spec["rate_rps"], "cameras": spec["cameras"], "fps": spec["fps"],
                "window_s": round(lv["window_s"], 3), "sent": lv["sent"], "ok": lv["ok"],
                "errors": sum(lv["errors"].values()), "dropped_frames": lv["dropped"],
                "stale_frames": lv["stale"], "throughput_rps": round(lv["throughput_rps"], 3),
                "latency_p50_ms": lat["p50_ms"], "latency_p90_ms": lat["p90_ms"],
                "latency_p95_ms": lat["p95_ms"], "latency_p99_ms": lat["p99_ms"],
                "latency_p999_ms": lat["p999_ms"], "latency_mean_ms": round(lat["mean_ms"], 3),
                "latency_max_ms": lat["max_ms"],
                "server_queue_mean_ms": round(srv["queue_ms"], 3),
                "server_preprocess_mean_ms": round(srv["preprocess_ms"], 3),
                "server_inference_mean_ms": round(srv["inference_ms"], 3),
                "server_postprocess_mean_ms": round(srv["postprocess_ms"], 3),
                "server_total_mean_ms": round(srv["server_total_ms"], 3),
                "batch_size_mean": round(lv["mean_batch_size"], 3),
                "executed_batch_size_mean": round(
                    lv.get("mean_executed_batch_size", float("nan")), 3),
                # Sweeps sample the server's VmRSS during each level; "" where not measured.
                "server_rss_peak_mb": _mb(lv.get("server_rss_peak_mb")),
                "client_cpu_cores": round(lv["client_cpu_cores"], 3),
                "send_lag_p99_ms": lv["send_lag_p99_ms"],
                "client_saturated": lv["client_saturated"],
            })
    return rows


def _mb(value: float | None) -> float | str:
    return "" if value is None else round(value, 1)


def write_csv(doc: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(doc))
