"""Sweep grids: the cross product of batching fields and engine options, as named points.

A point's name is its batching (`b8_d2ms_i1`, `_w20ms` with max_queue_wait_ms) plus, where
engine options are swept or differ from the model's own, a short tag of them
(`_sbs1-2-4-8_ns1`: the initials of each option name, then its value). Names are used for the
generated server config and log files, so they stay filesystem-safe.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from detserve.client.bench.server_proc import BatchSetting

BATCH_AXES = ("max_batch_size", "max_queue_delay_ms", "instances", "max_queue_size",
              "max_queue_wait_ms")
GRID_KEYS = (*BATCH_AXES, "engine_options")
NO_BATCHING = "no_batching"
SERVED_DEFAULT = "served_default"  # the model's own batching and engine options
SWEEP = "sweep"


@dataclass(frozen=True)
class SweepPoint:
    role: str  # no_batching, served_default or sweep
    batching: BatchSetting
    engine_options: dict[str, Any] = field(default_factory=dict)  # effective, base merged in
    tag: str = ""  # engine-option part of the name

    @property
    def name(self) -> str:
        return f"{self.batching.name}_{self.tag}" if self.tag else self.batching.name


def _axis(grid: Mapping[str, Any], key: str, default: Any) -> list[Any]:
    value = grid.get(key, default)
    values = value if isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"sweep field 'grid.{key}' must not be empty")
    return values


def _option_axes(grid: Mapping[str, Any]) -> dict[str, list[Any]]:
    raw = grid.get("engine_options") or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"sweep field 'grid.engine_options' must map option names to lists of "
                         f"values, got {raw!r}")
    axes: dict[str, list[Any]] = {}
    for key, values in raw.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"sweep field 'grid.engine_options.{key}' must be a non-empty list "
                             f"of candidate values (a list-valued option needs a list of lists),"
                             f" got {values!r}")
        axes[str(key)] = values
    return axes


def _batch_points(grid: Mapping[str, Any], base: BatchSetting) -> list[BatchSetting]:
    axes = [_axis(grid, key, getattr(base, key)) for key in BATCH_AXES]
    out = []
    for b, d, i, q, w in itertools.product(*axes):
        point = replace(base, max_batch_size=int(b), max_queue_delay_ms=float(d),
                        instances=int(i), max_queue_size=int(q),
                        max_queue_wait_ms=None if w is None else float(w))
        if (point.max_batch_size < 1 or point.instances < 1 or point.max_queue_delay_ms < 0
                or point.max_queue_size < 1 or (w is not None and float(w) < 0)):
            raise ValueError(f"bad grid point max_batch_size={b!r} max_queue_delay_ms={d!r} "
                             f"instances={i!r} max_queue_size={q!r} max_queue_wait_ms={w!r}")
        out.append(point)
    return out


def _baseline_options(no_batching: bool | Mapping[str, Any],
                      base_options: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(no_batching, Mapping):
        return dict(base_options)
    unknown = sorted(set(no_batching) - {"engine_options"})
    if unknown:
        raise ValueError(f"unknown sweep field(s) baselines.no_batching.{unknown}; allowed: "
                         "['engine_options']")
    return {**base_options, **(no_batching.get("engine_options") or {})}


def grid_settings(grid: Mapping[str, Any], no_batching: bool | Mapping[str, Any] = True,
                  base_batching: Mapping[str, Any] | None = None,
                  base_options: Mapping[str, Any] | None = None) -> list[SweepPoint]:
    """Every combination of the grid, named; plus max_batch_size 1 as the no-batching baseline.

    `base_batching` fills the batching fields the grid leaves out (and marks the point equal to
    it, with `base_options`, as served_default). Points with max_batch_size 1 are the baseline:
    one per instances/queue setting, with the first delay (a batch of one never waits for
    company) and the base engine options, or those `no_batching.engine_options` lists."""
    unknown = set(grid) - set(GRID_KEYS)
    if unknown:
        raise ValueError(f"unknown sweep field(s) grid.{sorted(unknown)}; allowed: "
                         f"{list(GRID_KEYS)}")
    base = BatchSetting.from_yaml(base_batching or {})
    options0 = dict(base_options or {})
    baseline_opts = _baseline_options(no_batching, options0)
    axes = _option_axes(grid)
    combos = [dict(zip(axes, vals, strict=True)) for vals in itertools.product(*axes.values())]
    first_delay = float(_axis(grid, "max_queue_delay_ms", base.max_queue_delay_ms)[0])
    points: list[tuple[str, BatchSetting, dict[str, Any]]] = []
    for batching, combo in itertools.product(_batch_points(grid, base), combos):
        if batching.max_batch_size == 1:
            batching = replace(batching, max_queue_delay_ms=first_delay, preferred_batch_sizes=())
            points.append((NO_BATCHING, batching, baseline_opts))
            continue
        opts = {**options0, **combo}
        is_base = base_batching is not None and batching == base and opts == options0
        points.append((SERVED_DEFAULT if is_base else SWEEP, batching, opts))
    wanted = isinstance(no_batching, Mapping) or bool(no_batching)
    if wanted and not any(role == NO_BATCHING for role, _, _ in points):
        first = _batch_points(grid, base)[0]
        baseline = replace(first, max_batch_size=1, max_queue_delay_ms=0.0,
                           preferred_batch_sizes=())
        points.insert(0, (NO_BATCHING, baseline, baseline_opts))
    return _named(_dedupe(points), list(axes), options0)


def _dedupe(points: Sequence[tuple[str, BatchSetting, dict[str, Any]]]
            ) -> list[tuple[str, BatchSetting, dict[str, Any]]]:
    seen: set[str] = set()
    out = []
    for role, batching, opts in points:
        key = json.dumps([batching.to_yaml(), opts], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out.append((role, batching, opts))
    return out


def _named(points: Sequence[tuple[str, BatchSetting, dict[str, Any]]], axis_keys: list[str],
           base_options: Mapping[str, Any]) -> list[SweepPoint]:
    def tag_keys(opts: Mapping[str, Any]) -> list[str]:
        differ = sorted(k for k in set(opts) | set(base_options)
                        if k not in axis_keys and opts.get(k) != base_options.get(k))
        return [*axis_keys, *differ]

    keys = sorted({k for _, _, opts in points for k in tag_keys(opts)})
    short = option_abbreviations(keys)
    out = [SweepPoint(role, b, dict(opts), option_tag(opts, tag_keys(opts), short))
           for role, b, opts in points]
    names = [p.name for p in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"sweep grid gives several settings the same name: {dupes}")
    return out


def option_abbreviations(keys: Sequence[str]) -> dict[str, str]:
    """Initials of each option name (static_batch_sizes -> sbs); full names if two collide."""
    short = {k: "".join(part[0] for part in k.split("_") if part) or k for k in keys}
    if len(set(short.values())) < len(short):
        return {k: k.replace("_", "") for k in keys}
    return short


def format_value(value: Any) -> str:
    """An option value as a short, filesystem-safe token: [1, 2, 8] -> 1-2-8, [] -> none."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:g}".replace(".", "p")
    if isinstance(value, list | tuple):
        return "-".join(format_value(v) for v in value) if value else "none"
    if value is None:
        return "none"
    text = json.dumps(value, sort_keys=True) if isinstance(value, Mapping) else str(value)
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-") or "x"


def option_tag(opts: Mapping[str, Any], keys: Sequence[str], short: Mapping[str, str]) -> str:
    return "_".join(f"{short[k]}{format_value(opts.get(k))}" for k in keys)
