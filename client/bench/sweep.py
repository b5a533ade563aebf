"""Sweeps over batching settings and engine options: one server subprocess per setting, a
ladder of load levels against each, and the baselines (raw engine; no batching) in the same run.
Results are rewritten after every setting, so an interrupted sweep keeps what it measured.

Sweep file (YAML):

    model:                        # a detserve-server models[] entry
      package: builtin:shapes_320_int8
      name: shapes
      variant: "320"
      engine: openvino
      engine_options: {num_threads: 2, num_streams: 1, static_batch_sizes: [1, 8]}
      batching: {max_batch_size: 8, max_queue_delay_ms: 2, max_queue_size: 256, instances: 1}
    server: {stream_policy: block}   # other top-level detserve-server fields
    grid:
      max_batch_size: [1, 8]
      max_queue_delay_ms: [2]
      instances: [1]
      max_queue_size: 256
      max_queue_wait_ms: [20]     # optional; emitted only when given (here or in model.batching)
      engine_options:             # option -> candidate values (a list option: a list of lists)
        static_batch_sizes: [[1, 8], [1, 2, 4, 8], []]
        num_streams: [1, 2]
    load: {mode: closed, transport: unary, levels: [1, 2, 4, 8], arrivals: poisson, fps: 15,
           warmup_s: 1, duration_s: 5, max_requests: 100000, timeout_s: 10, streams: 1}
    inputs: {source: synthetic, count: 16, width: 640, height: 480, format: jpeg}
    baselines: {raw_engine: {batch_sizes: [1, 4, 8], duration_s: 3}, no_batching: true}
    startup_timeout_s: 120
    interleave: true              # all servers up at once, levels taken in turns (below)
    client_nice: 0                # interleave only: the load generator's nice once servers run
    rounds: 1                     # interleave only: passes over the ladder (client/bench/rounds.py)
    fresh_servers: false          # rounds only: every setting's server restarted before each round

With `interleave` (the default), every setting's server starts first, then the sweep runs level
by level, each setting in turn at that level (the order rotating from level to level), so a
burst of load elsewhere on the host, or a slow drift, hits all settings alike: the ratios
between settings at a level come from minutes apart at most, not from the length of the whole
sweep. Only the setting under load is busy; the others sit idle. `interleave: false` runs one
server after another, each through the whole ladder (less memory). `client_nice: N` lowers the
load generator's CPU priority once every server runs (they keep theirs), so on cores it shares
with them it takes what they leave, as clients on other machines would. `rounds: R` runs the
interleaved ladder R times, the setting that goes first alternating between rounds; the report
takes each ratio within a round and gives the median of the rounds' ratios. Two identical
servers, one process each for the whole sweep, measured a median 0.94x of each other at one
and two callers over 5 rounds (benchmarks/results/twin_servers/summary.md): each process seems
to keep a speed of its own (where its threads and buffers landed), which rounds on the same
processes cannot average out.
`fresh_servers: true` restarts every setting's server before each round (each restarted
server's log gets a `_rN` suffix), so the rounds' median is taken over independent processes.
It needs client_nice 0: a server started after the load generator lowered its priority would
inherit that priority.

The settings are the cross product of every grid list; a field the grid leaves out takes its
value from `model.batching` (batching fields beyond the grid's, e.g. preferred_batch_sizes or
fields the server gains later, pass through from there unchanged). Engine options on the grid
are merged over `model.engine_options`. Each setting is named by its batching and, where engine
options are swept or differ from the model's, a short tag of them: `b8_d2ms_i1_sbs1-2-4-8_ns1`.
The setting equal to `model.batching` with `model.engine_options` gets the role
`served_default`; the report compares it with no batching at every load level.

The no-batching baseline (max_batch_size 1) runs once, not once per engine-option combination:
with the model's own engine options, and the first delay on the grid (a batch of one never
waits for company). It runs even when the grid has no max_batch_size 1 (then with delay 0),
unless `baselines.no_batching` is false. To measure it with other engine options, list them:
`baselines: {no_batching: {engine_options: {num_streams: 2}}}` (merged over the model's).
Several instances, queue sizes or queue waits on the grid give one baseline each.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

from detserve.client.bench import targetinfo
from detserve.client.bench.baseline import raw_engine_baseline
from detserve.client.bench.grid import SweepPoint, grid_settings
from detserve.client.bench.inputs import InputSpec, build_requests, load_inputs
from detserve.client.bench.loads import LoadSettings
from detserve.client.bench.procstat import RssSampler
from detserve.client.bench.resultsdoc import new_document, setting_entry, write_csv, write_json
from detserve.client.bench.runner import LevelResult, LoadPlan, describe, run_plan
from detserve.client.bench.server_proc import ServerProcess, free_port, server_config
from detserve.protos import detection_pb2 as pb

BUILTIN = "builtin:"
_TOP_KEYS = ("model", "server", "grid", "load", "inputs", "baselines", "startup_timeout_s",
             "interleave", "client_nice", "rounds", "fresh_servers")
_LOAD_SETTINGS = ("transport", "warmup_s", "duration_s", "max_requests", "timeout_s",
                  "max_outstanding", "streams", "seed")


@dataclass(frozen=True)
class SweepConfig:
    model: dict[str, Any]
    server: dict[str, Any]
    settings: tuple[SweepPoint, ...]
    plan: LoadPlan
    inputs: InputSpec
    raw_batch_sizes: tuple[int, ...]
    raw_duration_s: float
    startup_timeout_s: float
    raw: dict[str, Any]
    base_batching: dict[str, Any] | None = None  # model.batching, as given
    interleave: bool = True
    client_nice: int = 0
    rounds: int = 1
    fresh_servers: bool = False

def resolve_package(value: str, base_dir: Path) -> Path:
    """`builtin:<dir>` (shipped in detserve.models), absolute, or relative to the sweep file."""
    if value.startswith(BUILTIN):
        import detserve.models

        return Path(detserve.models.__file__).parent / "packages" / value[len(BUILTIN):]
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base_dir / path).resolve()


def parse_sweep(raw: Any, base_dir: Path) -> SweepConfig:
    if not isinstance(raw, Mapping):
        raise ValueError(f"sweep file must be a mapping, got {type(raw).__name__}")
    if raw.get("client_nice") and not raw.get("interleave", True):
        raise ValueError("sweep field 'client_nice' needs interleave: true (a server started "
                         "after the load generator lowered its priority would inherit it)")
    rounds = raw.get("rounds", 1)
    if not isinstance(rounds, int) or isinstance(rounds, bool) or rounds < 1:
        raise ValueError(f"sweep field 'rounds' must be an integer >= 1, got {rounds!r}")
    if rounds > 1 and not raw.get("interleave", True):
        raise ValueError(f"sweep field 'rounds' ({rounds}) needs interleave: true (rounds "
                         "alternate the settings level by level)")
    fresh = raw.get("fresh_servers", False)
    if not isinstance(fresh, bool):
        raise ValueError(f"sweep field 'fresh_servers' must be true or false, got {fresh!r}")
    if fresh and raw.get("client_nice"):
        raise ValueError("sweep field 'fresh_servers' needs client_nice 0 (a server restarted "
                         "after the load generator lowered its priority would inherit it)")
    unknown = set(raw) - set(_TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown sweep field(s) {sorted(unknown)}; allowed: {list(_TOP_KEYS)}")
    model = dict(raw.get("model") or {})
    base_batching = model.pop("batching", None)
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
    settings_list = grid_settings(grid, base.get("no_batching", True), base_batching,
                                  model.get("engine_options") or {})
    sizes = ([] if raw_cfg is False else
             (raw_cfg or {}).get("batch_sizes") or sorted({p.batching.max_batch_size
                                                           for p in settings_list}))
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
        base_batching=None if base_batching is None else dict(base_batching),
        interleave=bool(raw.get("interleave", True)),
        client_nice=int(raw.get("client_nice", 0)),
        rounds=rounds,
        fresh_servers=fresh,
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
        {"sweep": cfg.raw, "resolved_model": cfg.model, "plan": cfg.plan.to_json(),
         "base_batching": cfg.base_batching, "server": cfg.server},
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
    if cfg.interleave:
        await _run_interleaved(cfg, requests, out_dir, doc, show_progress)
        return json_path
    bar = tqdm(cfg.settings, desc="settings", unit="setting", disable=not show_progress)
    for point in bar:
        bar.set_postfix_str(point.name)
        levels, target = await _run_point(cfg, point, requests, out_dir, show_progress)
        doc["settings"].append(setting_entry(point.name, point.role, point.batching.to_yaml(),
                                             target, levels,
                                             engine_options=point.engine_options))
        write_json(doc, json_path)
        write_csv(doc, csv_path)
    bar.close()
    return json_path


async def _start_servers(cfg: SweepConfig, out_dir: Path, suffix: str = ""
                         ) -> list[ServerProcess]:
    """One server per setting, each up before the next starts; `suffix` names their logs."""
    procs: list[ServerProcess] = []
    try:
        for point in cfg.settings:
            proc = _server_for(cfg, point, out_dir, point.name + suffix)
            procs.append(proc)
            await proc.start(cfg.startup_timeout_s)
            await targetinfo.fetch_and_remember(proc.target)
    except BaseException:
        _stop_all(procs)
        raise
    return procs


def _server_for(cfg: SweepConfig, point: SweepPoint, out_dir: Path, name: str) -> ServerProcess:
    """The (not yet started) server of one setting; `name` names its config and log."""
    model = {**cfg.model, "engine_options": point.engine_options}
    return ServerProcess(server_config(model, point.batching, free_port(), cfg.server), out_dir,
                         name)


def _stop_all(procs: list[ServerProcess]) -> None:
    for proc in procs:
        proc.stop()


async def _run_interleaved(cfg: SweepConfig, requests: list[pb.DetectRequest], out_dir: Path,
                           doc: dict[str, Any], show_progress: bool) -> None:
    """Every setting's server up at once; level by level, each setting in turn, the whole
    ladder `cfg.rounds` times (with `fresh_servers`, on new server processes each round)."""
    procs: list[ServerProcess] = []
    try:
        procs = await _start_servers(cfg, out_dir)
        if cfg.client_nice:
            os.nice(cfg.client_nice)  # after the servers started: they keep their priority
        levels: list[list[LevelResult]] = [[] for _ in cfg.settings]
        first = len(doc["settings"])
        doc["settings"].extend(setting_entry(p.name, p.role, p.batching.to_yaml(), proc.target,
                                             [], engine_options=p.engine_options)
                               for p, proc in zip(cfg.settings, procs, strict=True))
        passes = [(r, k, level) for r in range(cfg.rounds)
                  for k, level in enumerate(cfg.plan.levels)]
        for r, k, level in passes:
            if cfg.fresh_servers and r > 0 and k == 0:
                _stop_all(procs)
                procs = []  # should the restart fail, `finally` has nothing left to stop
                procs = await _start_servers(cfg, out_dir, f"_r{r + 1}")
            one = replace(cfg.plan, levels=(level,))
            for i in _rotated(len(cfg.settings), k + r):
                point, proc = cfg.settings[i], procs[i]
                result = await _level_with_rss(proc, requests, one, point.name, show_progress)
                result.round_index = r
                tqdm.write(f"{point.name} round {r + 1}/{cfg.rounds} "
                           f"{describe(result.summary)}")
                levels[i].append(result)
                doc["settings"][first + i] = setting_entry(
                    point.name, point.role, point.batching.to_yaml(), proc.target, levels[i],
                    engine_options=point.engine_options)
            write_json(doc, out_dir / "results.json")
            write_csv(doc, out_dir / "results.csv")
    finally:
        _stop_all(procs)


def _rotated(n: int, k: int) -> list[int]:
    """0..n-1 starting at k mod n: no setting always runs first (or right after a heavy one)."""
    return [(k + i) % n for i in range(n)]


async def _run_point(cfg: SweepConfig, point: SweepPoint, requests: list[pb.DetectRequest],
                     out_dir: Path, show_progress: bool) -> tuple[list[LevelResult], str]:
    """One server subprocess for `point`, the load plan against it; stopped on the way out."""
    proc = _server_for(cfg, point, out_dir, point.name)
    await proc.start(cfg.startup_timeout_s)

    def announce(level: LevelResult) -> None:
        tqdm.write(f"{point.name} {describe(level.summary)}")

    try:
        await targetinfo.fetch_and_remember(proc.target)  # recorded with the setting's entry
        levels = []
        for level in cfg.plan.levels:
            levels.append(await _level_with_rss(proc, requests, replace(cfg.plan, levels=(level,)),
                                                point.name, show_progress))
            announce(levels[-1])
    finally:
        proc.stop()
    return levels, proc.target


async def _level_with_rss(proc: ServerProcess, requests: list[pb.DetectRequest], one: LoadPlan,
                          label: str, show_progress: bool) -> LevelResult:
    """The one level of `one` against `proc`, its server's VmRSS sampled meanwhile (every
    50 ms, procstat), so each level records the server's peak RSS beside its latencies."""
    if proc.proc is None:
        raise RuntimeError(f"server for {label} is not running")
    with RssSampler(proc.proc.pid) as rss:
        (result,) = await run_plan(proc.target, requests, one, label=label,
                                   show_progress=show_progress)
    result.server_rss_peak_mb = rss.stats().peak_mb
    return result
