"""The device benchmark: raw engine sweeps, GPU vs host NMS, the server with batching off/on,
JPEG decode on the host or the device, and front-end worker processes, in one run bounded by a
global wall-clock budget. Results are rewritten after every phase, so a
run cut short still leaves what it measured.

    python3 benchmarks/gpu/bench_device.py --out OUT [--device cuda] [--quick] [--budget-s 420]

Usually started by run_device.sh (installs the carried wheels first).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_decode_bench  # noqa: E402
import gpu_engine  # noqa: E402
import gpu_report  # noqa: E402
import gpu_server  # noqa: E402

from detserve.client.bench.server_proc import BatchSetting  # noqa: E402


@dataclass(frozen=True)
class Plan:
    """Sizes and time budgets (seconds) of one run; `quick` is the CPU dry run."""

    default_size: int
    large_size: int
    batch_sizes: tuple[int, ...]
    precisions: tuple[str, ...]
    per_size_s: float
    engine_budget_s: float
    nms_sizes: tuple[int, ...]
    nms_budget_s: float
    ladder: gpu_server.LoadLadder
    client_processes: int
    input_format: str
    server_start_s: float
    server_min_s: float  # kept free for the server phase whatever the earlier phases do
    worker_counts: tuple[int, ...]  # front-end processes (issue 16's --workers)
    workers_concurrency: int
    workers_budget_s: float
    decode_sizes: tuple[tuple[int, int], ...]  # JPEGs decoded in process, host vs device
    decode_batches: tuple[int, ...]
    decode_workers: tuple[int, ...]  # front-end processes of the served decode host/device rows
    decode_budget_s: float
    reserve_s: float = 20.0

    @classmethod
    def make(cls, quick: bool, clients: int, input_format: str) -> Plan:
        if quick:
            return cls(320, 320, (1, 2, 4), ("fp32", "bf16"), 0.15, 60.0, (1, 2), 25.0,
                       gpu_server.LoadLadder((1, 4), (0.5,), 0.3, 1.0), min(clients, 2),
                       input_format, 180.0, 60.0, (1, 2), 8, 60.0, ((640, 480),), (1, 4),
                       (1,), 80.0, 10.0)
        return cls(320, 640, (1, 2, 4, 8, 16, 32, 64), ("fp32", "fp16"), 0.4, 60.0,
                   (1, 8, 32), 25.0, gpu_server.LoadLadder((1, 16, 64, 128), (0.5, 0.9), 0.5, 2.5),
                   clients, input_format, 150.0, 130.0, (1, 4, 8, 16), 256, 90.0,
                   ((640, 480), (1920, 1080)), (1, 8, 32), (1, 4), 90.0)


class Run:
    def __init__(self, out: Path, work: Path, device: str, plan: Plan, budget_s: float) -> None:
        self.out, self.work, self.device, self.plan = out, work, device, plan
        self.t0 = time.monotonic()
        self.deadline = self.t0 + budget_s
        self.results: dict[str, Any] = {
            "meta": _meta(device, plan, budget_s), "models": [], "engine": [], "nms": [],
            "server": [], "decode": [], "decode_server": [], "workers": [], "derived": {},
            "errors": [], "phases": {},
        }

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def phase(self, name: str, budget_s: float, fn: Callable[[float], None],
              keep_s: float = 0.0) -> None:
        """Run one phase with its own deadline, leaving `keep_s` for the phases after it; a
        failure is recorded and the run goes on."""
        start = time.monotonic()
        deadline = min(start + budget_s, self.deadline - self.plan.reserve_s - keep_s)
        self.log(f"== phase {name}: {deadline - start:.0f} s budget")
        try:
            fn(deadline)
            status = "ok"
        except Exception as exc:
            status = f"failed: {type(exc).__name__}: {exc}"
            self.results["errors"].append({"phase": name, "error": repr(exc),
                                           "traceback": traceback.format_exc()})
            self.log(f"phase {name} FAILED: {exc!r}\n{traceback.format_exc()}")
        self.results["phases"][name] = {"status": status, "seconds": time.monotonic() - start}
        self.save()

    def save(self) -> None:
        self.results["derived"] = gpu_report.derive(self.results)
        gpu_report.write_tables(self.results, self.out)


def _meta(device: str, plan: Plan, budget_s: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "device": device, "python": sys.version.split()[0], "torch": torch.__version__,
        "cuda": torch.version.cuda, "host": platform.node(), "cpu_count": os.cpu_count(),
        "budget_s": budget_s, "command": sys.argv, "plan": repr(plan),
        # torch's defaults let "fp32" convolutions run as TF32 on Ampere and newer: say so.
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        meta.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
    else:
        meta["gpu"] = "none (CPU dry run)"
    try:
        import torchvision

        meta["torchvision"] = torchvision.__version__
    except Exception as exc:
        meta["torchvision"] = f"not importable: {exc}"
    from detserve.engines.torch_nms import nms_backend

    meta["gpu_nms_backend"] = nms_backend()
    return meta


def phase_engine(run: Run, models: list[gpu_engine.BenchModel]) -> Callable[[float], None]:
    def go(deadline: float) -> None:
        p = run.plan
        combos = [(m, prec, True) for m in models for prec in p.precisions]
        combos.append((models[0], p.precisions[-1], False))  # CUDA graphs off, for contrast
        for i, (model, prec, graphs) in enumerate(combos):
            share = (deadline - time.monotonic()) / (len(combos) - i)
            per_size = min(p.per_size_s, max(0.05, share / (2 * len(p.batch_sizes))))
            try:
                run.results["engine"] += gpu_engine.engine_sweep(
                    model, run.device, prec, graphs, p.batch_sizes, per_size,
                    min(deadline, time.monotonic() + share), run.log)
            except Exception as exc:  # one failed combination must not cost the others
                run.results["errors"].append({"phase": f"engine {model.label} {prec} "
                                              f"graphs={graphs}", "error": repr(exc),
                                              "traceback": traceback.format_exc()})
                run.log(f"engine {model.label} {prec} graphs={graphs} FAILED: {exc!r}")
            run.save()
    return go


def phase_nms(run: Run, models: list[gpu_engine.BenchModel]) -> Callable[[float], None]:
    def go(deadline: float) -> None:
        # NMS load depends on the candidate count, not the network: the large model's manifest
        # (640 px input -> 8400 anchors on the device) with synthetic predictions.
        manifest = models[-1].package.manifest
        run.results["nms"] = gpu_engine.nms_compare(
            manifest, run.device, run.plan.nms_sizes, 0.001,
            run.plan.nms_budget_s / (len(run.plan.nms_sizes) + 1), deadline, run.log)
    return go


def served_settings(models: list[gpu_engine.BenchModel], precision: str) -> list[gpu_server.Served]:
    off = BatchSetting(1, 0.0, 1)
    on = [BatchSetting(32, 1.0, 1), BatchSetting(32, 4.0, 1)]
    default, large = models[0], models[-1]
    served = [gpu_server.Served(f"{default.label}-{s.name}", default.label, default.package.root,
                                s, precision) for s in (off, *on)]
    served += [gpu_server.Served(f"{large.label}-{s.name}", large.label, large.package.root, s,
                                 precision) for s in (off, on[1])]
    return served


def phase_server(run: Run, models: list[gpu_engine.BenchModel]) -> Callable[[float], None]:
    def go(deadline: float) -> None:
        p = run.plan
        served = served_settings(models, p.precisions[-1])
        spec = {"source": "synthetic", "count": 16, "width": 640, "height": 480,
                "format": p.input_format}
        run.results["server_inputs"] = spec
        t = time.monotonic()
        server = asyncio.run(gpu_server.start_server(served, run.device, run.work / "server",
                                                     min(p.server_start_s, run.left())))
        run.log(f"server up in {time.monotonic() - t:.1f} s at {server.target} "
                f"serving {[s.key for s in served]}")
        fleet = gpu_server.LoadFleet(p.client_processes, spec)
        try:
            for i, s in enumerate(served):
                share = (deadline - time.monotonic()) / (len(served) - i)
                run.results["server"] += gpu_server.measure_setting(
                    fleet, server, s, p.ladder, min(deadline, time.monotonic() + share), run.log)
                run.save()
        finally:
            fleet.close()
            code = server.stop(grace_s=10.0)
            tail = server.log_path.read_text(errors="replace")[-4000:]
            run.log(f"server stopped, exit code {code}; its log ends:\n{tail}")
    return go


def phase_workers(run: Run, models: list[gpu_engine.BenchModel]) -> Callable[[float], None]:
    """The default model with batching on, behind 1, 4, 8 and 16 front-end processes: one
    server start and one closed level each (issue 16: does the front end still cap the GPU?)."""
    def go(deadline: float) -> None:
        p = run.plan
        default = models[0]
        setting = BatchSetting(32, 4.0, 1)
        served = gpu_server.Served(f"{default.label}-{setting.name}", default.label,
                                   default.package.root, setting, p.precisions[-1])
        ladder = gpu_server.LoadLadder((), (), p.ladder.warmup_s, p.ladder.duration_s)
        fleet = gpu_server.LoadFleet(p.client_processes, run.results.get("server_inputs") or {
            "source": "synthetic", "count": 16, "width": 640, "height": 480,
            "format": p.input_format})
        try:
            for i, workers in enumerate(p.worker_counts):
                share = (deadline - time.monotonic()) / (len(p.worker_counts) - i)
                if share < ladder.warmup_s + ladder.duration_s + 10.0:
                    run.log(f"workers {workers}: budget spent, skipped")
                    continue
                run.results["workers"].append(gpu_server.measure_workers(
                    fleet, served, workers, run.device, run.work / f"workers{workers}", ladder,
                    p.workers_concurrency, min(p.server_start_s, share - 5.0), run.log))
                run.save()
        finally:
            fleet.close()
    return go


_ROW_S = 20.0  # a served row beyond its load: server start and stop, the fleet's connections


def phase_decode(run: Run, models: list[gpu_engine.BenchModel]) -> Callable[[float], None]:
    """JPEG decode on the host against the device: in process, then served (issue 16)."""
    def go(deadline: float) -> None:
        p = run.plan
        missing = gpu_decode_bench.device_decode_missing(run.device)
        if missing:  # no torchvision here (a CPU dry run may lack it): skip, saying why
            run.results["decode_skipped"] = missing
            run.log(f"decode axis skipped: {missing}")
            return
        workers = list(p.decode_workers)  # front ends hand JPEGs over encoded (issue 16)
        # The served rows need a server start each (~10 s on the GPU, ~20 s on a CPU) plus the
        # client fleet's: the in-process sweep gets at most a quarter of the phase.
        serve_s = 15.0 + 2 * len(workers) * (_ROW_S + p.ladder.warmup_s + p.ladder.duration_s)
        now = time.monotonic()
        sweep_end = max(now + 4.0, min(deadline - serve_s, now + (deadline - now) / 4))
        run.results["decode"] = gpu_decode_bench.decode_sweep(
            models[0].package.manifest, run.device, p.decode_sizes, p.decode_batches,
            sweep_end, run.log)
        run.save()
        if workers != list(p.decode_workers):
            run.log("decode axis: front-end workers decode on the host (their tickets take no "
                    f"encoded JPEGs yet): served at {workers} front end(s) only")
        _serve_decode(run, models[0], workers, deadline)
    return go


def _serve_decode(run: Run, default: gpu_engine.BenchModel, worker_counts: list[int],
                  deadline: float) -> None:
    p = run.plan
    setting = BatchSetting(32, 4.0, 1)
    ladder = gpu_server.LoadLadder((), (), p.ladder.warmup_s, p.ladder.duration_s)
    combos = [(w, d) for w in worker_counts for d in ("host", "device")]
    fleet = gpu_server.LoadFleet(p.client_processes, run.results.get("server_inputs") or {
        "source": "synthetic", "count": 16, "width": 640, "height": 480, "format": "jpeg"})
    try:
        for i, (workers, decode) in enumerate(combos):
            share = (deadline - time.monotonic()) / (len(combos) - i)
            if share < ladder.warmup_s + ladder.duration_s + _ROW_S:
                run.log(f"decode {decode} at {workers} front end(s): budget spent, skipped")
                continue
            served = gpu_server.Served(f"{default.label}-{setting.name}-{decode}", default.label,
                                       default.package.root, setting, p.precisions[-1], decode)
            run.results["decode_server"].append(gpu_server.measure_workers(
                fleet, served, workers, run.device, run.work / f"decode-{decode}-w{workers}",
                ladder, p.workers_concurrency, min(p.server_start_s, share - 5.0), run.log))
            run.save()
    finally:
        fleet.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (CPU dry run)")
    ap.add_argument("--budget-s", type=float, default=420.0)
    ap.add_argument("--clients", type=int, default=4, help="client processes")
    ap.add_argument("--input-format", default="jpeg", choices=("jpeg", "png", "raw"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = Plan.make(args.quick, args.clients, args.input_format)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"detserve-gpu-{os.getpid()}"
    run = Run(args.out, work, args.device, plan, args.budget_s)
    run.log(f"meta: {run.results['meta']}")
    models: list[gpu_engine.BenchModel] = []

    def setup(_: float) -> None:
        models.extend(gpu_engine.find_models(REPO, work, plan.default_size, plan.large_size,
                                             run.log))
        run.results["models"] = [m.to_json() for m in models]

    tail = plan.decode_budget_s + plan.workers_budget_s  # kept for the last two phases
    later = plan.nms_budget_s + plan.server_min_s + tail
    run.phase("setup", 60.0, setup, later + plan.engine_budget_s / 2)
    if models:
        run.phase("engine", plan.engine_budget_s, phase_engine(run, models), later)
        run.phase("nms", plan.nms_budget_s, phase_nms(run, models), plan.server_min_s + tail)
        run.phase("server", plan.server_min_s, phase_server(run, models), tail)
        run.phase("decode", plan.decode_budget_s, phase_decode(run, models),
                  plan.workers_budget_s)
        run.phase("workers", run.left(), phase_workers(run, models))
    try:
        gpu_report.write_all(run.results, args.out)
    except Exception as exc:
        run.log(f"report failed: {exc!r}\n{traceback.format_exc()}")
        run.results["errors"].append({"phase": "report", "error": repr(exc)})
        run.save()
    print(gpu_report.summary_text(run.results), flush=True)
    run.log(f"done; errors: {len(run.results['errors'])}")
    return 1 if run.results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
