"""Device benchmark, server side: one detserve-server subprocess serving every (model, batching)
setting under its own model name, loaded by several client processes at once.

The load itself is detserve-bench's (`detserve.client.bench.loads.run_closed/run_open`); this
module only spreads one level over P spawned processes (a single asyncio client tops out near one
core) that start together, then merges their raw records into one level summary. Client CPU is
the sum over the processes; server CPU comes from /proc.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from detserve.client.bench.recorder import (
    ClientLoad,
    LevelSpec,
    SaturationLimits,
    records_from_columns,
    summarize,
)
from detserve.client.bench.server_proc import BatchSetting, ServerProcess, free_port

Log = Callable[[str], None]


@dataclass(frozen=True)
class Served:
    """One model entry of the benchmark server: `key` is the model name clients ask for."""

    key: str
    model_label: str
    package: Path
    setting: BatchSetting
    precision: str
    decode: str = "host"  # torch-cuda engine option: "device" decodes JPEG batches on the GPU


def engine_batch_sizes(max_batch: int) -> list[int]:
    sizes = [s for s in (1, 2, 4, 8, 16, 32, 64, 128) if s < max_batch]
    return [*sizes, max_batch]


def server_document(served: Sequence[Served], port: int, device: str,
                    workers: int = 1) -> dict[str, Any]:
    models = []
    for i, s in enumerate(served):
        models.append({
            "name": s.key, "package": str(s.package), "engine": "torch-cuda",
            "engine_options": {"device": device, "precision": s.precision, "nms": "gpu",
                               "batch_sizes": engine_batch_sizes(s.setting.max_batch_size),
                               "decode": s.decode},
            "batching": s.setting.to_yaml(), "default": i == 0,
        })
    return {"host": "127.0.0.1", "port": port, "metrics_port": None, "log_requests": False,
            "log_level": "WARNING", "drain_grace_s": 2.0, "workers": workers, "models": models}


def _cpu_ticks(pid: int) -> float:
    """utime + stime of `pid` and its reaped children, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


# ---- runs inside each spawned client process ----------------------------------------------------
_IMAGES: dict[str, list[Any]] = {}
_REQUESTS: dict[tuple[str, str], list[Any]] = {}


def _requests(spec: dict[str, Any], model: str) -> list[Any]:
    """The level's request payloads, built once per process (images) and per model."""
    from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs

    images_key = repr(sorted(spec.items()))
    if images_key not in _IMAGES:
        _IMAGES[images_key] = load_inputs(InputSpec(**spec)).images
    key = (images_key, model)
    if key not in _REQUESTS:
        _REQUESTS[key] = build_requests(_IMAGES[images_key], model)
    return _REQUESTS[key]


def client_level(target: str, model: str, mode: str, level: float, settings: dict[str, Any],
                 spec: dict[str, Any], start_wall: float) -> dict[str, Any]:
    """One process's share of one level; returns raw records as columns and its CPU use."""
    import grpc.aio

    from detserve.client.bench.loads import LoadSettings, run_closed, run_open
    from detserve.client.bench.recorder import records_to_columns
    from detserve.client.client import channel_options
    from detserve.protos import detection_pb2_grpc as pb_grpc

    requests = _requests(spec, model)
    load = LoadSettings(**settings)

    # One connection per channel (a local subchannel pool each): SO_REUSEPORT spreads
    # connections, not calls, over a server's front-end workers.
    options = [*channel_options(64 * 1024 * 1024), ("grpc.use_local_subchannel_pool", 1)]

    async def go() -> Any:
        channels = [grpc.aio.insecure_channel(target, options=options)
                    for _ in range(load.channels)]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
            stubs = [pb_grpc.DetectorStub(c) for c in channels]
            await asyncio.sleep(max(0.0, start_wall - time.time()))
            starts.append(time.perf_counter())  # CLOCK_MONOTONIC: comparable across processes
            if mode == "closed":
                return await run_closed(stubs, requests, int(level), load)
            return await run_open(stubs, requests, level, "poisson", load)
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    starts: list[float] = []
    run = asyncio.run(go())
    return {"records": records_to_columns(run.records), "cpu_s": run.client.cpu_s,
            "wall_s": run.client.wall_s, "start": starts[0]}


def warm_client(spec: dict[str, Any], hold_s: float) -> int:
    """Import everything and build the requests once, then hold the process for a moment so
    that the P warm-up tasks land on P different processes."""
    _requests(spec, "")
    time.sleep(hold_s)
    return os.getpid()


# ---- the parent ---------------------------------------------------------------------------------
class LoadFleet:
    """P persistent spawned client processes (spawn: gRPC must never be forked)."""

    def __init__(self, processes: int, spec: dict[str, Any]) -> None:
        self.processes = processes
        self.spec = spec
        self.pool = ProcessPoolExecutor(processes, mp_context=get_context("spawn"))
        # Spawn and warm every process now, so no level starts while some are still importing.
        warm = [self.pool.submit(warm_client, spec, 2.0) for _ in range(processes)]
        self.pids = sorted({f.result(timeout=120) for f in warm})

    def run_level(self, target: str, model: str, mode: str, level: float,
                  settings: dict[str, Any]) -> dict[str, Any]:
        shares = self._shares(mode, level)
        start = time.time() + 1.5  # every process connected and waiting by then
        futures = [
            self.pool.submit(client_level, target, model, mode, share,
                             {**settings, "seed": settings.get("seed", 0) + i}, self.spec, start)
            for i, share in enumerate(shares)
        ]
        parts = [f.result(timeout=settings["warmup_s"] + settings["duration_s"] + 90) for f in
                 futures]
        # Put every process's records on one time axis (they started within milliseconds).
        origin = min(p["start"] for p in parts)
        records = []
        for p in parts:
            shift = p["start"] - origin
            for r in records_from_columns(p["records"]):
                r.scheduled_s += shift
                r.sent_s += shift
                r.done_s += shift
                records.append(r)
        client = ClientLoad(wall_s=max(p["wall_s"] for p in parts),
                            cpu_s=sum(p["cpu_s"] for p in parts))
        spec = LevelSpec(mode, "unary", level,
                         concurrency=int(level) if mode == "closed" else 0,
                         rate_rps=level if mode == "open" else 0.0,
                         arrivals="poisson" if mode == "open" else "")
        summary = summarize(spec, records, client, settings["duration_s"],
                            limits=SaturationLimits(max_cpu_cores=0.9 * len(shares)))
        out: dict[str, Any] = summary.to_json()
        out["client_processes"] = len(shares)
        return out

    def _shares(self, mode: str, level: float) -> list[float]:
        if mode == "closed":
            n = int(level)
            p = min(self.processes, n)
            return [float(n // p + (1 if i < n % p else 0)) for i in range(p)]
        return [level / self.processes] * self.processes

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _flat(model: Served, mode: str, level: float, summary: dict[str, Any],
          server_cores: float) -> dict[str, Any]:
    lat = summary["latency"]
    return {
        "key": model.key, "model": model.model_label, "precision": model.precision,
        "max_batch_size": model.setting.max_batch_size,
        "max_queue_delay_ms": model.setting.max_queue_delay_ms,
        "instances": model.setting.instances, "decode": model.decode, "mode": mode,
        "level": level,
        "throughput_rps": summary["throughput_rps"], "ok": summary["ok"],
        "errors": sum(summary["errors"].values()),
        "p50_ms": lat["p50_ms"], "p90_ms": lat["p90_ms"], "p99_ms": lat["p99_ms"],
        "p999_ms": lat["p999_ms"], "mean_batch": summary["mean_batch_size"],
        "server_queue_ms": summary["server_ms"]["queue_ms"],
        "server_inference_ms": summary["server_ms"]["inference_ms"],
        "server_preprocess_ms": summary["server_ms"]["preprocess_ms"],
        "server_postprocess_ms": summary["server_ms"]["postprocess_ms"],
        "client_cpu_cores": summary["client_cpu_cores"],
        "client_processes": summary["client_processes"], "server_cpu_cores": server_cores,
        "client_saturated": summary["client_saturated"],
        "saturation_reason": summary["saturation_reason"],
    }


@dataclass(frozen=True)
class LoadLadder:
    closed: tuple[int, ...]
    open_fractions: tuple[float, ...]  # of this setting's best closed-loop throughput
    warmup_s: float
    duration_s: float
    timeout_s: float = 5.0


def measure_setting(fleet: LoadFleet, server: ServerProcess, model: Served, ladder: LoadLadder,
                    deadline: float, log: Log) -> list[dict[str, Any]]:
    """Closed-loop ladder, then open-loop Poisson at fractions of the closed-loop peak."""
    settings = asdict(_load_settings(ladder))
    rows: list[dict[str, Any]] = []
    level_s = ladder.warmup_s + ladder.duration_s + 2.0
    pid = server.proc.pid if server.proc is not None else -1
    plan: list[tuple[str, float]] = [("closed", float(c)) for c in ladder.closed]
    for mode, level in plan + [("open", f) for f in ladder.open_fractions]:
        if time.monotonic() + level_s > deadline:
            log(f"server {model.key}: budget spent, skipping {mode} {level:g}")
            continue
        if mode == "open":
            peak = max((r["throughput_rps"] for r in rows if r["mode"] == "closed"), default=0.0)
            if peak <= 0:
                continue
            level = round(peak * level, 1)
        cpu0, t0 = _cpu_ticks(pid), time.monotonic()
        summary = fleet.run_level(server.target, model.key, mode, level, settings)
        cores = (_cpu_ticks(pid) - cpu0) / (time.monotonic() - t0)
        rows.append(_flat(model, mode, level, summary, cores))
        r = rows[-1]
        log(f"server {model.key} {mode} {level:g}: {r['throughput_rps']:.0f} req/s, p50 "
            f"{r['p50_ms']:.1f} p99 {r['p99_ms']:.1f} ms, batch {r['mean_batch']:.1f}, "
            f"errors {r['errors']}, client CPU {r['client_cpu_cores']:.2f} "
            f"({r['client_processes']} procs), server CPU {cores:.2f}")
    return rows


def _load_settings(ladder: LoadLadder) -> Any:
    from detserve.client.bench.loads import LoadSettings

    return LoadSettings(warmup_s=ladder.warmup_s, duration_s=ladder.duration_s,
                        timeout_s=ladder.timeout_s)


async def start_server(served: Sequence[Served], device: str, workdir: Path,
                       timeout_s: float, workers: int = 1) -> ServerProcess:
    doc = server_document(served, free_port(), device, workers)
    server = ServerProcess(doc, workdir, f"gpu-w{workers}")
    await server.start(timeout_s)
    return server


def measure_workers(fleet: LoadFleet, served: Served, workers: int, device: str, workdir: Path,
                    ladder: LoadLadder, concurrency: int, start_s: float, log: Log,
                    ) -> dict[str, Any]:
    """One closed level at `concurrency` against a server with `workers` front-end processes
    (1: the single-process server), spread over at least two connections per worker."""
    from detserve.client.bench import proccpu

    server = asyncio.run(start_server([served], device, workdir, start_s, workers))
    try:
        pid = server.proc.pid if server.proc is not None else -1
        channels = max(1, -(-2 * workers // fleet.processes))
        settings = {**asdict(_load_settings(ladder)), "channels": channels}
        before, t0 = proccpu.server_cpu(pid), time.monotonic()
        summary = fleet.run_level(server.target, served.key, "closed", float(concurrency),
                                  settings)
        cpu, wall = proccpu.server_cpu(pid).minus(before), time.monotonic() - t0
    finally:
        code = server.stop(grace_s=10.0)
    row = _flat(served, "closed", float(concurrency), summary,
                (cpu.frontend_s + cpu.engine_s + cpu.supervisor_s) / wall)
    sent = max(1, summary["ok"] + sum(summary["errors"].values()))
    row.update(workers=workers, channels_per_process=channels, exit_code=code,
               frontend_cpu_us_per_request=cpu.frontend_s / sent * 1e6,
               engine_cpu_cores=cpu.engine_s / wall, frontend_processes=cpu.frontends)
    log(f"workers {workers}: {row['throughput_rps']:.0f} req/s, p99 {row['p99_ms']:.1f} ms, "
        f"batch {row['mean_batch']:.1f}, server CPU {row['server_cpu_cores']:.2f} cores, "
        f"front end {row['frontend_cpu_us_per_request']:.0f} us/req, exit {code}")
    return row
