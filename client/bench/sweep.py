"""Sweeps over max_batch_size x max_queue_delay x instances: one server subprocess per setting,
a ladder of load levels against each, and the baselines (raw engine; no batching) in the same
run. Results are rewritten after every setting, so an interrupted sweep keeps what it measured.

Sweep file (YAML):

    model:                        # a detserve-server models[] entry; batching is filled in
      package: builtin:shapes_320
      name: shapes
      variant: "320"
      engine: onnxruntime
      engine_options: {}
    server: {stream_policy: block}   # other top-level detserve-server fields
    grid: {max_batch_size: [1, 4, 8], max_queue_delay_ms: [2], instances: [1], max_queue_size: 256}
    load: {mode: closed, transport: unary, levels: [1, 2, 4, 8], arrivals: poisson, fps: 15,
           warmup_s: 1, duration_s: 5, max_requests: 100000, timeout_s: 10, streams: 1}
    inputs: {source: synthetic, count: 16, width: 640, height: 480, format: jpeg}
    baselines: {raw_engine: {batch_sizes: [1, 4, 8], duration_s: 3}, no_batching: true}
    startup_timeout_s: 120
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from detserve.client.bench.baseline import raw_engine_baseline
from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.resultsdoc import new_document, setting_entry, write_csv, write_json
from detserve.client.bench.runner import LevelResult, LoadPlan, describe, run_plan
from detserve.client.bench.server_proc import BatchSetting, ServerProcess, free_port, server_config

BUILTIN = "builtin:"
_TOP_KEYS = ("model", "server", "grid", "load", "inputs", "baselines", "startup_timeout_s")
_LOAD_SETTINGS = ("transport", "warmup_s", "duration_s", "max_requests", "timeout_s",
                  "max_outstanding", "streams", "seed")


@dataclass(frozen=True)
class SweepConfig:
    model: dict[str, Any]
    server: dict[str, Any]
    settings: tuple[tuple[str, BatchSetting], ...]  # (role, setting)
    plan: LoadPlan
    inputs: InputSpec
    raw_batch_sizes: tuple[int, ...]
    raw_duration_s: float
    startup_timeout_s: float
    raw: dict[str, Any]


def resolve_package(value: str, base_dir: Path) -> Path:
    """`builtin:<dir>` (shipped in detserve.models), absolute, or relative to the sweep file."""
    if value.startswith(BUILTIN):
        import detserve.models

        return Path(detserve.models.__file__).parent / "packages" / value[len(BUILTIN):]
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def _list(raw: Mapping[str, Any], key: str, default: list[Any]) -> list[Any]:
    value = raw.get(key, default)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"sweep field 'grid.{key}' must not be empty")
    return values


def grid_settings(grid: Mapping[str, Any], no_batching: bool) -> list[tuple[str, BatchSetting]]:
    """Every combination of the grid; plus max_batch_size 1 as the no-batching baseline."""
    unknown = set(grid) - {"max_batch_size", "max_queue_delay_ms", "instances", "max_queue_size"}
    if unknown:
        raise ValueError(f"unknown sweep field(s) grid.{sorted(unknown)}")
    queue = int(grid.get("max_queue_size", 256))
    out: list[tuple[str, BatchSetting]] = []
    delays = _list(grid, "max_queue_delay_ms", [2.0])
    for b, d, i in itertools.product(_list(grid, "max_batch_size", [8]), delays,
                                     _list(grid, "instances", [1])):
        if int(b) < 1 or int(i) < 1 or float(d) < 0:
            raise ValueError(f"bad grid point max_batch_size={b!r} max_queue_delay_ms={d!r} "
                             f"instances={i!r}")
        if int(b) == 1 and d != delays[0]:
            continue  # a batch of one never waits for company: the delay changes nothing
        role = "no_batching" if int(b) == 1 else "sweep"
        out.append((role, BatchSetting(int(b), float(d), int(i), queue)))
    if no_batching and not any(role == "no_batching" for role, _ in out):
        out.insert(0, ("no_batching", BatchSetting(1, 0.0, 1, queue)))
    return out


def parse_sweep(raw: Any, base_dir: Path) -> SweepConfig:
    if not isinstance(raw, Mapping):
        raise ValueError(f"sweep file must be a mapping, got {type(raw).__name__}")
    unknown = set(raw) - set(_TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown sweep field(s) {sorted(unknown)}; allowed: {list(_TOP_KEYS)}")
    model = dict(raw.get("model") or {})
    if "package" not in model:
        raise ValueError("sweep field 'model.package' is required but missing")
    model["package"] = str(resolve_package(str(model["package"]), base_dir))
    load = dict(raw.get("load") or {})
    settings = LoadSettings(**{k: load[k] for k in _LOAD_SETTINGS if k in load})
    plan = LoadPlan(
        mode=str(load.get("mode", "closed")),
        levels=tuple(float(v) for v in load.get("levels", [1, 2, 4, 8])),
        settings=settings,
        arrivals=str(load.get("arrivals", "poisson")),
        fps=float(load.get("fps", 15.0)),
        stale_after_ms=load.get("stale_after_ms"),
    )
    base = dict(raw.get("baselines") or {})
    raw_cfg = base.get("raw_engine", {"batch_sizes": None})
    grid = dict(raw.get("grid") or {})
    settings_list = grid_settings(grid, bool(base.get("no_batching", True)))
    sizes = ([] if raw_cfg is False else
             (raw_cfg or {}).get("batch_sizes") or sorted({s.max_batch_size
                                                           for _, s in settings_list}))
    return SweepConfig(
        model=model,
        server=dict(raw.get("server") or {}),
        settings=tuple(settings_list),
        plan=plan,
        inputs=InputSpec(**dict(raw.get("inputs") or {})),
        raw_batch_sizes=tuple(int(b) for b in sizes),
        raw_duration_s=float((raw_cfg or {}).get("duration_s", 3.0)) if raw_cfg else 0.0,
        startup_timeout_s=float(raw.get("startup_timeout_s", 120.0)),
        raw=dict(raw),
    )


def load_sweep(path: Path) -> SweepConfig:
    if not path.is_file():
        raise FileNotFoundError(f"sweep file not found: {str(path)!r}")
    return parse_sweep(yaml.safe_load(path.read_text()), path.parent.resolve())


async def run_sweep(cfg: SweepConfig, out_dir: Path, show_progress: bool = True) -> Path:
    """Run the whole sweep; returns the path of results.json (results.csv next to it)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = load_inputs(cfg.inputs)
    requests = build_requests(inputs.images)
    doc = new_document(
        {"sweep": cfg.raw, "resolved_model": cfg.model, "plan": cfg.plan.to_json()},
        {**cfg.inputs.to_json(), "mean_bytes": inputs.mean_bytes},
    )
    json_path, csv_path = out_dir / "results.json", out_dir / "results.csv"
    if cfg.raw_batch_sizes:
        raws = raw_engine_baseline(cfg.model["package"], inputs.images, cfg.raw_batch_sizes,
                                   cfg.raw_duration_s, str(cfg.model.get("engine", "onnxruntime")),
                                   cfg.model.get("engine_options") or {})
        doc["raw_engine"] = [r.to_json() for r in raws]
        for r in raws:
            print(f"raw engine batch {r.batch_size}: {r.pipeline_images_per_s:.1f} img/s "
                  f"(infer only {r.infer_images_per_s:.1f} img/s)", flush=True)
        write_json(doc, json_path)
    bar = tqdm(cfg.settings, desc="settings", unit="setting", disable=not show_progress)
    for role, setting in bar:
        bar.set_postfix_str(setting.name)
        port = free_port()
        proc = ServerProcess(server_config(cfg.model, setting, port, cfg.server), out_dir,
                             setting.name)
        await proc.start(cfg.startup_timeout_s)
        def announce(level: LevelResult, name: str = setting.name) -> None:
            tqdm.write(f"{name} {describe(level.summary)}")

        try:
            levels = await run_plan(proc.target, requests, cfg.plan, label=setting.name,
                                    show_progress=show_progress, on_level=announce)
        finally:
            proc.stop()
        doc["settings"].append(setting_entry(setting.name, role, setting.to_yaml(), proc.target,
                                             levels))
        write_json(doc, json_path)
        write_csv(doc, csv_path)
    bar.close()
    return json_path
